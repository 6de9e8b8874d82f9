"""MariaDB and MySQL have no partial indexes, so Django creates none of allauth's three conditional unique
constraints there (system check models.W036) and the database would accept two accounts holding one confirmed
address, two primary addresses for one account, or two authenticator apps for one account (each guarded only by a
check in Python, which two concurrent requests can both pass). Here each becomes a unique index on a generated
column that holds the constrained value where the condition holds and NULL elsewhere (a unique index admits any
number of NULLs). SQLite and PostgreSQL enforce the constraints themselves: nothing is done there."""
from django.db import migrations

#: (table, generated column, its type and expression, the unique index's columns); names prefixed "leuk_".
GENERATED = [
    ("account_emailaddress", "leuk_verified_email", "varchar(254) AS (IF(`verified`, `email`, NULL)) STORED",
     "leuk_unique_verified_email", "`leuk_verified_email`"),
    ("account_emailaddress", "leuk_primary_user", "bigint AS (IF(`primary`, `user_id`, NULL)) STORED",
     "leuk_unique_primary_email", "`leuk_primary_user`"),
    ("mfa_authenticator", "leuk_single_type",
     "varchar(20) AS (IF(`type` IN ('totp', 'recovery_codes'), `type`, NULL)) STORED",
     "leuk_unique_authenticator_type", "`user_id`, `leuk_single_type`"),
]


#: Rows the new indexes would refuse, as (what, query): the migration stops and names them instead of failing on
#: MariaDB's "Duplicate entry".
DUPLICATES = [
    ("an address confirmed for more than one account",
     "SELECT `email` FROM `account_emailaddress` WHERE `verified` GROUP BY `email` HAVING COUNT(*) > 1"),
    ("an account with more than one primary address",
     "SELECT `user_id` FROM `account_emailaddress` WHERE `primary` GROUP BY `user_id` HAVING COUNT(*) > 1"),
    ("an account with more than one authenticator app or set of recovery codes",
     "SELECT `user_id` FROM `mfa_authenticator` WHERE `type` IN ('totp', 'recovery_codes') "
     "GROUP BY `user_id`, `type` HAVING COUNT(*) > 1"),
]


def add(apps, schema_editor):
    if schema_editor.connection.vendor != "mysql":
        return
    with schema_editor.connection.cursor() as cursor:
        for what, query in DUPLICATES:
            cursor.execute(query)
            found = [str(row[0]) for row in cursor.fetchall()]
            if found:
                raise RuntimeError(f"The database holds {what} ({', '.join(found[:5])}): resolve it in the admin "
                                   f"(remove the extra record), then migrate again.")
    # Not atomic on MariaDB: each step is skipped when a run that failed half-way already made it.
    for table, column, definition, index, columns in GENERATED:
        if not _exists(schema_editor, "COLUMNS", table, "COLUMN_NAME", column):
            schema_editor.execute(f"ALTER TABLE `{table}` ADD COLUMN `{column}` {definition}")
        if not _exists(schema_editor, "STATISTICS", table, "INDEX_NAME", index):
            schema_editor.execute(f"CREATE UNIQUE INDEX `{index}` ON `{table}` ({columns})")


def _exists(schema_editor, view, table, name_column, name):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM information_schema.{view} WHERE TABLE_SCHEMA = DATABASE() "
                       f"AND TABLE_NAME = %s AND {name_column} = %s", [table, name])
        return cursor.fetchone()[0] > 0


def remove(apps, schema_editor):
    if schema_editor.connection.vendor != "mysql":
        return
    for table, column, _definition, index, _columns in GENERATED:
        if _exists(schema_editor, "STATISTICS", table, "INDEX_NAME", index):
            schema_editor.execute(f"DROP INDEX `{index}` ON `{table}`")
        if _exists(schema_editor, "COLUMNS", table, "COLUMN_NAME", column):
            schema_editor.execute(f"ALTER TABLE `{table}` DROP COLUMN `{column}`")


class Migration(migrations.Migration):
    atomic = False  # DDL: MariaDB commits it at once and cannot roll it back
    dependencies = [
        ("accounts", "0010_admin_export_download_permissions"),
        ("account", "0009_emailaddress_unique_primary_email"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [migrations.RunPython(add, remove)]

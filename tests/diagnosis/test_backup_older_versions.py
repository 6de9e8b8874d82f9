"""A backup made by an older version of the portal restores into this one with the data rules of the migrations
it predates applied to its rows: loaddata brings the rows as they were, and those migrations ran on this database
while it was empty (restoring.REPLAYED_DATA_RULES)."""
import io

import pytest
from allauth.account.models import EmailAddress
from django.core.management import call_command

from tests.diagnosis.test_backup import back_up, dest, working_portal  # noqa: F401
from tests.diagnosis.test_backup_tampering import manifest_of, rewrite, rows_of, wiped  # noqa: F401


def as_made_before_vouched_addresses(folder, email):
    """The backup as a portal before migration accounts.0009 wrote it: an account made in the admin had no record
    of its address."""
    rows = [row for row in rows_of(folder)
            if not (row["model"] == "account.emailaddress" and row["fields"]["email"] == email)]
    manifest = manifest_of(folder)
    manifest["migrations"]["accounts"] = "0008_encrypt_mfa_secrets"
    manifest["row_counts"]["account.emailaddress"] -= 1
    manifest["rows"] -= 1
    rewrite(folder, rows=rows, manifest=manifest)


def restore(folder):
    out, err = io.StringIO(), io.StringIO()
    call_command("restore_portal", str(folder), stdout=out, stderr=err)
    return err.getvalue()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_accounts_of_a_backup_from_before_vouched_addresses_get_their_address_confirmed(working_portal, dest, wiped):
    technician = working_portal["technician"]
    folder, _, _ = back_up(dest)
    as_made_before_vouched_addresses(folder, technician.email)
    wiped()

    said = restore(folder)
    assert "predates accounts.0009: 1 account(s) without a record of their address" in " ".join(said.split())
    address = EmailAddress.objects.get(user__email=technician.email)
    assert address.verified and address.primary and address.email == technician.email


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_backup_of_this_version_is_restored_as_it_was(working_portal, dest, wiped):
    technician = working_portal["technician"]
    folder, _, _ = back_up(dest)
    rows = [row for row in rows_of(folder)
            if not (row["model"] == "account.emailaddress" and row["fields"]["email"] == technician.email)]
    manifest = manifest_of(folder)
    manifest["row_counts"]["account.emailaddress"] -= 1
    manifest["rows"] -= 1
    rewrite(folder, rows=rows, manifest=manifest)  # an account without a record, made after accounts.0009
    wiped()

    assert "predates" not in restore(folder)
    assert not EmailAddress.objects.filter(user__email=technician.email).exists()

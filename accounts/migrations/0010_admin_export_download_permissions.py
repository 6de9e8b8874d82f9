"""The Admin role gets the permissions of the export-download record (diagnosis.ExportDownload, migration
diagnosis.0015), as every diagnosis model's (0007 says why; the test
test_the_admin_role_holds_every_diagnosis_permission_including_those_of_later_models checks it)."""
from importlib import import_module

from django.db import migrations

grant_every_diagnosis_permission = import_module(
    "accounts.migrations.0007_admin_every_diagnosis_permission").grant_every_diagnosis_permission


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0009_vouch_for_admin_made_addresses"),
        ("diagnosis", "0015_export_download"),
    ]

    operations = [migrations.RunPython(grant_every_diagnosis_permission, migrations.RunPython.noop)]

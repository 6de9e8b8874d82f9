"""The Admin role again gets every diagnosis permission, as documented (0002_roles, 0003_review_permissions):
the models added since (notifications, 0007; reviewed-data exports, 0010) had none for it, so a staff Admin got
403 on their Django admin lists. A model added later needs the same: the test
test_the_admin_role_holds_every_diagnosis_permission_including_those_of_later_models says so."""
from django.contrib.auth.management import create_permissions
from django.db import migrations


def grant_every_diagnosis_permission(apps, schema_editor):
    for app_config in apps.get_app_configs():  # permissions are normally made after all migrations
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    admin, _ = Group.objects.get_or_create(name="Admin")
    admin.permissions.add(*Permission.objects.filter(content_type__app_label="diagnosis"))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_usability"),
        ("diagnosis", "0010_reviewed_export"),
    ]

    # Going back leaves the permissions: 0003's reverse removes the Admin role's diagnosis permissions as a whole.
    operations = [migrations.RunPython(grant_every_diagnosis_permission, migrations.RunPython.noop)]

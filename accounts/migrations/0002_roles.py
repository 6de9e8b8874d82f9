"""Create the role groups and their permissions.

Technician:  create patients and cases, upload smears, follow their status,
             retry failed smears; sees all cases of the lab (read).
Pathologist: sees all patients, cases, smears and predictions; review_case
             (placeholder for the sign-out workflow).
Admin:       every diagnosis permission and user management (the Django admin
             additionally needs the user's "staff status").
"""
from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "Technician": [
        "diagnosis.view_patient", "diagnosis.add_patient",
        "diagnosis.view_case", "diagnosis.add_case",
        "diagnosis.view_smear", "diagnosis.add_smear", "diagnosis.retry_smear",
        "diagnosis.view_prediction",
    ],
    "Pathologist": [
        "diagnosis.view_patient", "diagnosis.view_case", "diagnosis.review_case",
        "diagnosis.view_smear", "diagnosis.view_prediction",
    ],
    "Admin": [
        "diagnosis.*",
        "accounts.view_user", "accounts.change_user", "accounts.add_user",
        "auth.view_group",
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations (post_migrate);
    # create them now so the groups can reference them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        for perm in perms:
            app_label, codename = perm.split(".")
            qs = Permission.objects.filter(content_type__app_label=app_label)
            if codename != "*":
                qs = qs.filter(codename=codename)
            found = list(qs)
            if not found:
                raise RuntimeError(f"Permission {perm} does not exist")
            group.permissions.add(*found)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("diagnosis", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]

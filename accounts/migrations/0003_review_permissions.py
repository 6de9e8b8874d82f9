"""Permissions of the pathologist review (issue #5) for the existing role groups.

Technician:  may see the audit trail, rejected uploads and addenda of cases
             (read); cannot review, sign out or export.
Pathologist: review_case (confirm/reclassify smears, set the final stage),
             sign_out_case (sign out; addenda after sign-out), the agreement
             dashboard, the training-data export, and read access to the
             audit trail, rejected uploads and addenda. Any pathologist may
             sign out any case; the signer is recorded.
Admin:       every diagnosis permission again (the new ones included).
"""
from django.contrib.auth.management import create_permissions
from django.db import migrations

ADDED = {
    "Technician": [
        "view_auditevent", "view_rejectedupload", "view_caseaddendum",
    ],
    "Pathologist": [
        "sign_out_case", "view_review_dashboard", "export_reviewed",
        "view_auditevent", "view_rejectedupload", "view_caseaddendum",
    ],
    "Admin": ["*"],
}


def add_permissions(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ADDED.items():
        group, _ = Group.objects.get_or_create(name=role)
        for codename in codenames:
            qs = Permission.objects.filter(content_type__app_label="diagnosis")
            if codename != "*":
                qs = qs.filter(codename=codename)
            found = list(qs)
            if not found:
                raise RuntimeError(f"Permission diagnosis.{codename} does not exist")
            group.permissions.add(*found)


def remove_permissions(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ADDED.items():
        if codenames == ["*"]:
            continue
        perms = Permission.objects.filter(content_type__app_label="diagnosis", codename__in=codenames)
        for group in Group.objects.filter(name=role):
            group.permissions.remove(*perms)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_roles"),
        ("diagnosis", "0002_review"),
    ]

    operations = [migrations.RunPython(add_permissions, remove_permissions)]

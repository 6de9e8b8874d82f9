"""Backing up and restoring the portal (manage.py backup_portal / restore_portal, diagnosis.services.backup):
a backup of a working portal, restored into an empty one, gives back the same rows, files and passwords;
a damaged backup, a non-empty portal, a backup of newer code and a missing or existing folder are refused
without changing anything; files the database names but MEDIA_ROOT lacks are reported."""
import io
import json
import os
import re
import shutil
import stat
import threading
from datetime import datetime, timezone as dt_timezone
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core import serializers
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from accounts.roles import ALL_ROLES
from diagnosis import services
from diagnosis.models import AuditEvent, Case, Patient, RejectedUpload, ReviewedExport
from diagnosis.services import backup
from tests.portal_testutils import PASSWORD, image_bytes


def staging_result(stage, confidence=0.7):
    rest = (1 - confidence) / 3
    return {"stage": stage, "probabilities": {s: confidence if s == stage else rest
                                              for s in ("Benign", "Early", "Pre", "Pro")},
            "model": "fake_model", "model_version": "0.0-test", "in_domain": True, "domain_score": 0.5}


@pytest.fixture
def working_portal(technician, pathologist, lab_admin, patient, case, smear_factory):
    """A lab's portal in use: users with roles (a verified e-mail address, an authenticator app), a case
    signed out after review (a confirmed smear with a heat map, a changed one, an addendum) and another
    still open with a rejected upload, and a built export of reviewed smears."""
    from allauth.account.models import EmailAddress
    from allauth.mfa.models import Authenticator

    EmailAddress.objects.update_or_create(user=pathologist, email=pathologist.email,
                                          defaults={"verified": True, "primary": True})
    from accounts.mfa_adapter import encrypt_secret

    # Encrypted, as the portal stores it (accounts.mfa_adapter): backup and restore refuse an unencrypted secret.
    Authenticator.objects.create(user=pathologist, type=Authenticator.Type.TOTP,
                                 data={"secret": encrypt_secret("JBSWY3DPEHPK3PXP")})
    services.record_case_opened(case, technician)
    confirmed, changed = smear_factory(status="processing"), smear_factory(status="processing")
    services.record_prediction(confirmed.pk, staging_result("Pre"), 5)
    services.record_prediction(changed.pk, staging_result("Early", 0.55), 5)
    services.store_heatmap(confirmed.prediction.pk, image_bytes("JPEG", seed=99))
    confirmed.refresh_from_db()
    changed.refresh_from_db()
    services.review_smear(confirmed, pathologist, "Pre")
    services.review_smear(changed, pathologist, "Pro", "Large blasts with fine chromatin: Pro-B.")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL.")
    services.add_addendum(case, pathologist, "Flow cytometry confirms a precursor B phenotype.")
    open_case = Case.objects.create(patient=patient, accession_number="ACC-0002", created_by=technician)
    services.record_case_opened(open_case, technician)
    smear_factory(case_=open_case)
    RejectedUpload.objects.create(case=open_case, filename="notes.docx", reason="Not an image.",
                                  uploaded_by=technician)
    export = ReviewedExport.objects.create(requested_by=pathologist)
    services.build_export(export.pk)
    return {"technician": technician, "pathologist": pathologist, "case": case, "heatmap": confirmed.prediction.heatmap}


def database_rows():
    """Every backed-up row, natural keys for users and groups, as comparable text (m2m lists sorted)."""
    rows = {}
    for model in backup.included_models():
        if model._meta.auto_created:
            continue  # the many-to-many lists are in their parents' rows
        objects = serializers.serialize("python", model._base_manager.order_by("pk"),
                                        use_natural_foreign_keys=True, use_natural_primary_keys=True)
        for obj in objects:
            obj["fields"] = {k: sorted(v) if isinstance(v, list) else v for k, v in obj["fields"].items()}
        rows[model._meta.label_lower] = sorted(json.dumps(obj, sort_keys=True, default=str) for obj in objects)
    return rows


def audit_trail():
    return [(e.case.accession_number, e.action, e.actor.email if e.actor else None,
             e.smear.original_filename if e.smear else None, e.old_value, e.new_value, e.reason, e.model_version,
             e.detail, e.created_at) for e in AuditEvent.objects.select_related("case", "actor", "smear")]


def files_in(root):
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def back_up(dest):
    out, err = io.StringIO(), io.StringIO()
    call_command("backup_portal", str(dest), stdout=out, stderr=err)
    (folder,) = [p for p in Path(dest).iterdir() if p.name.startswith("leukportal-backup-")]
    return folder, out.getvalue(), err.getvalue()


def restore(folder):
    out, err = io.StringIO(), io.StringIO()
    call_command("restore_portal", str(folder), stdout=out, stderr=err)
    return out.getvalue()


@pytest.fixture
def dest(tmp_path):
    path = tmp_path / "backups"
    path.mkdir()
    return path


# --- A backup restored into an empty portal ---------------------------------------------------------------------

@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # flush, as a wiped server
def test_a_backup_restored_into_an_empty_portal_gives_back_the_same_rows_files_and_passwords(
        working_portal, media_root, dest, client):
    counts, rows, trail, files = backup.row_counts(), database_rows(), audit_trail(), files_in(media_root)
    assert working_portal["heatmap"].name in files and any(name.startswith("exports/") for name in files)

    folder, printed, _ = back_up(dest)
    assert f"{sum(backup.row_counts().values())} rows, {len(files)} media files" in printed and str(folder) in printed

    call_command("flush", interactive=False, verbosity=0)  # the server is lost...
    shutil.rmtree(media_root)
    for role in reversed(ALL_ROLES):  # ...and a new one migrated: its role groups, with other ids
        Group.objects.create(name=role)
    printed = restore(folder)

    assert "row counts match" in printed
    assert backup.row_counts() == counts
    assert database_rows() == rows
    assert audit_trail() == trail
    assert [e.action for e in AuditEvent.objects.filter(case__accession_number="ACC-0001")][-3:] == [
        "final_stage", "sign_out", "addendum"]
    assert files_in(media_root) == files
    assert Case.objects.get(accession_number="ACC-0001").signed_out_by.email == working_portal["pathologist"].email
    response = client.post(reverse("account_login"), {"login": working_portal["technician"].email,
                                                      "password": PASSWORD})
    assert response.status_code == 302 and client.session["_auth_user_id"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_restored_media_files_and_folders_are_not_world_readable(working_portal, media_root, dest):
    folder, _, _ = back_up(dest)
    call_command("flush", interactive=False, verbosity=0)
    shutil.rmtree(media_root)
    restore(folder)

    for path in [media_root, *media_root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o750 if path.is_dir() else 0o640), path


def test_the_backup_folder_holds_the_database_the_media_and_a_manifest_of_both(working_portal, media_root, dest):
    folder, _, _ = back_up(dest)

    assert re.fullmatch(r"leukportal-backup-\d{8}T\d{6}Z", folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ["database.json", "manifest.hmac", "manifest.json", "media"]
    manifest = json.loads((folder / "manifest.json").read_text())
    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    [(_, newest)] = MigrationLoader(connection).graph.leaf_nodes("diagnosis")
    assert manifest["migrations"]["diagnosis"] == newest
    assert manifest["row_counts"]["diagnosis.auditevent"] == AuditEvent.objects.count()
    assert manifest["row_counts"]["accounts.user_groups"] == 3
    assert {entry["path"] for entry in manifest["media"]} == set(files_in(media_root))
    assert manifest["missing_media"] == []
    models_dumped = {obj["model"] for obj in json.loads((folder / "database.json").read_text())}
    assert {"accounts.user", "auth.group", "account.emailaddress", "mfa.authenticator", "diagnosis.auditevent",
            "diagnosis.caseaddendum", "diagnosis.reviewedexport"} <= models_dumped
    assert not models_dumped & {"contenttypes.contenttype", "auth.permission", "sessions.session", "admin.logentry"}
    for path in [folder, *folder.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, path


def test_a_file_the_database_names_but_media_root_lacks_is_reported_and_the_backup_completes(
        working_portal, media_root, dest):
    heatmap = working_portal["heatmap"].name
    (media_root / heatmap).unlink()

    folder, printed, warnings = back_up(dest)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert [(m["model"], m["field"], m["path"]) for m in manifest["missing_media"]] == [
        ("diagnosis.prediction", "heatmap", heatmap)]
    assert heatmap in warnings and "1 missing file(s)" in printed


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_database_snapshot_ignores_rows_committed_while_it_is_read(technician, patient, dest, monkeypatch):
    """One consistent read: a patient another connection commits mid-backup is in neither the row counts
    nor database.json (on MariaDB it commits at once; SQLite makes the writer wait for the snapshot)."""
    counted = backup.row_counts
    writer = threading.Thread(target=_add_patient, args=("P-LATE",))

    def counts_then_a_concurrent_write():
        counts = counted()
        writer.start()
        writer.join(timeout=10 if connection.vendor == "mysql" else 0.5)
        return counts

    monkeypatch.setattr(backup.writing, "row_counts", counts_then_a_concurrent_write)
    folder, _, _ = back_up(dest)
    writer.join()

    assert Patient.objects.filter(lab_id="P-LATE").exists()
    dumped = [obj for obj in json.loads((folder / "database.json").read_text()) if obj["model"] == "diagnosis.patient"]
    assert [obj["fields"]["lab_id"] for obj in dumped] == ["P-0001"]
    assert json.loads((folder / "manifest.json").read_text())["row_counts"]["diagnosis.patient"] == 1


def _add_patient(lab_id):
    try:
        Patient.objects.create(lab_id=lab_id)
    finally:
        connection.close()


# --- Refusals ----------------------------------------------------------------------------------------------------

def test_backup_refuses_a_destination_that_does_not_exist(db, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("backup_portal", str(tmp_path / "nowhere"))


def test_backup_refuses_a_destination_that_is_a_file(db, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CommandError, match="is not a folder"):
        call_command("backup_portal", str(tmp_path / "file"))


def test_backup_refuses_to_write_into_an_existing_backup_folder(db, dest, monkeypatch):
    monkeypatch.setattr(backup.writing.timezone, "now", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc))
    (dest / "leukportal-backup-20260102T030405Z").mkdir()

    with pytest.raises(CommandError, match="already exists"):
        call_command("backup_portal", str(dest))
    assert not any((dest / "leukportal-backup-20260102T030405Z").iterdir())


def test_restore_refuses_a_portal_that_already_holds_users_patients_or_cases(working_portal, media_root, dest):
    folder, _, _ = back_up(dest)
    rows, files = database_rows(), files_in(media_root)

    with pytest.raises(CommandError, match="already holds users, patients, cases"):
        restore(folder)
    assert database_rows() == rows and files_in(media_root) == files


@pytest.mark.parametrize("damaged", ["a media file", "database.json"])
def test_restore_refuses_a_backup_whose_file_does_not_match_its_sha256(damaged, working_portal, media_root, dest):
    folder, _, _ = back_up(dest)
    target = folder / "database.json" if damaged == "database.json" else sorted((folder / "media").rglob("*.png"))[0]
    target.chmod(0o640)
    target.write_bytes(target.read_bytes().replace(b"P-0001", b"P-0666") if damaged == "database.json"
                       else target.read_bytes()[:-1] + b"\0")
    rows, files = database_rows(), files_in(media_root)

    with pytest.raises(CommandError, match=f"damaged or was changed: .*{target.name} does not match the manifest"):
        restore(folder)
    assert database_rows() == rows and files_in(media_root) == files


def test_restore_refuses_a_backup_made_by_newer_code(working_portal, dest):
    folder, _, _ = back_up(dest)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["migrations"]["diagnosis"] = "0099_from_the_future"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "manifest.hmac").unlink()  # signed again, as the newer portal that wrote it would have
    backup._write_signature(folder)

    with pytest.raises(CommandError, match="newer version of the portal.*diagnosis.0099_from_the_future.*Upgrade"):
        restore(folder)


def test_restore_refuses_to_overwrite_files_in_media_root_and_restores_once_they_are_gone(db, media_root, dest):
    """An empty portal (its role groups only) whose MEDIA_ROOT holds a file the backup has too."""
    stray = media_root / "smears" / "2026" / "01" / "left-over.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(image_bytes())
    folder, _, _ = back_up(dest)

    with pytest.raises(CommandError, match="would overwrite.*smears/2026/01/left-over.png"):
        restore(folder)
    assert stray.read_bytes() == image_bytes()

    shutil.rmtree(media_root)
    assert "row counts match" in restore(folder)
    assert stray.read_bytes() == image_bytes() and stat.S_IMODE(stray.stat().st_mode) == 0o640
    assert sorted(Group.objects.values_list("name", flat=True)) == sorted(ALL_ROLES)


def test_restore_refuses_a_folder_without_a_manifest(db, dest):
    with pytest.raises(CommandError, match="no manifest.json"):
        restore(dest)


def test_an_incomplete_backup_leaves_no_folder_behind(working_portal, dest, monkeypatch):
    def disk_full(src, dst):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(backup.writing, "_copy_file", disk_full)
    with pytest.raises(OSError):
        call_command("backup_portal", str(dest))
    assert list(dest.iterdir()) == []


def test_backup_refuses_a_destination_inside_media_root(db, media_root):
    (media_root / "backups").mkdir(parents=True)
    with pytest.raises(CommandError, match="inside MEDIA_ROOT"):
        call_command("backup_portal", str(media_root / "backups"))

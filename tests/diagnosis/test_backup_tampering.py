"""A backup folder changed by someone who can write to the backup store (security review round 2, R9) is refused
by restore_portal, changing nothing: the manifest is signed with a key derived from SECRET_KEY (checked before
anything else; SECRET_KEY_FALLBACKS verify too), an unsigned backup restores only with --unsigned, database.json
holds rows only of the models a backup includes and no unencrypted two-factor secret, no symbolic link or special
file is followed or copied, and a manifest of the wrong shape is a refusal, never a traceback."""
import hashlib
import io
import json
import os
import shutil

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from accounts.mfa_adapter import PREFIX, encrypt_secret
from accounts.roles import ALL_ROLES
from diagnosis.services import backup
from tests.diagnosis.test_backup import back_up, database_rows, dest, files_in, restore, working_portal  # noqa: F401
from tests.portal_testutils import PASSWORD

ATTACKER_PASSWORD = "Attacker-Pass-4242"


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def rows_of(folder):
    return json.loads((folder / "database.json").read_text())


def rewrite(folder, *, rows=None, manifest=None, sign=True):
    """Change a backup as anyone with write access to the backup store can: database.json's rows, and the
    manifest with database.json's size and sha256 recomputed. sign=True then signs the manifest with this portal's
    key, which only a holder of SECRET_KEY can do: it reaches the checks behind the signature."""
    if rows is not None:
        (folder / "database.json").write_text(json.dumps(rows))
    manifest = manifest_of(folder) if manifest is None else manifest
    if rows is not None:
        data = (folder / "database.json").read_bytes()
        manifest["database"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if sign and hasattr(backup, "_write_signature"):
        (folder / backup.SIGNATURE_FILE).unlink(missing_ok=True)
        backup._write_signature(folder)


def refusal(folder, **options):
    """restore_portal's refusal (a CommandError, never another exception) on a portal holding users: every check
    here comes before the empty-portal check."""
    with pytest.raises(CommandError) as caught:
        call_command("restore_portal", str(folder), stdout=io.StringIO(), stderr=io.StringIO(), **options)
    return str(caught.value)


def authenticator_row(rows):
    return next(o for o in rows if o["model"] == "mfa.authenticator")


@pytest.fixture
def wiped(media_root):
    """Turn the test's portal into a freshly migrated, empty one (its role groups only), as restore expects."""
    def wipe():
        call_command("flush", interactive=False, verbosity=0)
        shutil.rmtree(media_root)
        for role in ALL_ROLES:
            Group.objects.create(name=role)
    return wipe


# --- 1. The signature -----------------------------------------------------------------------------------------

def test_a_changed_database_with_a_recomputed_manifest_is_refused_as_changed_or_written_under_another_key(
        working_portal, dest):
    """The audit's takeover: a known password hash and a new superuser in database.json, the manifest's sha256
    and row counts recomputed, as anyone can. Without SECRET_KEY the signature cannot be recomputed."""
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    for row in rows:
        if row["model"] == "accounts.user" and row["fields"]["email"] == working_portal["pathologist"].email:
            row["fields"]["password"] = make_password(ATTACKER_PASSWORD)
    rewrite(folder, rows=rows, sign=False)

    message = refusal(folder)
    assert "was changed" in message and "another SECRET_KEY" in message and "manifest" in message
    with pytest.raises(backup.BackupError, match="another SECRET_KEY"):
        backup.verify_backup(folder)


def test_the_signature_is_checked_before_anything_else_is_read(working_portal, dest, monkeypatch):
    folder, _, _ = back_up(dest)
    manifest = manifest_of(folder)
    manifest["media"] = "not a list"
    rewrite(folder, manifest=manifest, sign=False)
    (folder / "database.json").unlink()
    read = []
    monkeypatch.setattr(backup.checking, "_database_problems", lambda *args, **kwargs: read.append(args) or [])

    message = refusal(folder)
    assert "another SECRET_KEY" in message and read == []


def test_a_backup_written_under_another_secret_key_verifies_only_with_that_key_among_the_fallbacks(
        working_portal, dest, settings):
    own_key = settings.SECRET_KEY
    settings.SECRET_KEY = "the-key-of-another-portal-" + "x" * 40
    folder, _, _ = back_up(dest)
    settings.SECRET_KEY = own_key

    with pytest.raises(backup.BackupError, match="another SECRET_KEY"):
        backup.verify_backup(folder)
    settings.SECRET_KEY_FALLBACKS = ["an-older-key-" + "y" * 40, "the-key-of-another-portal-" + "x" * 40]
    assert backup.verify_backup(folder)["format"] == backup.FORMAT


def test_a_signature_made_with_secret_key_itself_instead_of_the_derived_key_is_refused(working_portal, dest, settings):
    import hmac

    folder, _, _ = back_up(dest)
    raw = hmac.new(settings.SECRET_KEY.encode(), (folder / "manifest.json").read_bytes(), hashlib.sha256).hexdigest()
    (folder / backup.SIGNATURE_FILE).write_text(f"hmac-sha256:{raw}\n")
    assert "another SECRET_KEY" in refusal(folder)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_unsigned_backup_is_refused_with_how_to_restore_it_on_purpose_and_restores_with_unsigned(
        working_portal, dest, wiped):
    """A format 1 backup, written before backups were signed (or one whose signature was removed)."""
    folder, _, _ = back_up(dest)
    (folder / getattr(backup, "SIGNATURE_FILE", "manifest.hmac")).unlink(missing_ok=True)
    manifest = manifest_of(folder)
    manifest["format"] = 1
    rewrite(folder, manifest=manifest, sign=False)
    rows = database_rows()
    wiped()

    message = refusal(folder)
    assert "not signed" in message and "--unsigned" in message
    assert get_user_model().objects.count() == 0

    out, err = io.StringIO(), io.StringIO()
    call_command("restore_portal", str(folder), unsigned=True, stdout=out, stderr=err)
    assert "row counts match" in out.getvalue()
    assert "signature" in err.getvalue() and "not checked" in err.getvalue()
    assert database_rows() == rows


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_unsigned_restores_a_backup_of_a_lost_key_and_says_whose_codes_are_unreadable(
        working_portal, dest, wiped, settings):
    """The key that wrote a backup is lost: --unsigned restores it, saying the signature did not match and that
    two-factor secrets encrypted under that key cannot be decrypted (their codes are refused, never an error)."""
    from allauth.mfa.models import Authenticator

    own_key = settings.SECRET_KEY
    settings.SECRET_KEY = "the-lost-key-" + "z" * 40
    Authenticator.objects.update(data={"secret": encrypt_secret("JBSWY3DPEHPK3PXP")})
    folder, _, _ = back_up(dest)
    settings.SECRET_KEY = own_key
    wiped()

    assert "another SECRET_KEY" in refusal(folder)
    out, err = io.StringIO(), io.StringIO()
    call_command("restore_portal", str(folder), unsigned=True, stdout=out, stderr=err)
    assert "row counts match" in out.getvalue()
    assert "does not match" in err.getvalue() and "1 two-factor secret(s) cannot be decrypted" in err.getvalue()


def test_unsigned_skips_only_the_signature_every_other_check_still_refuses(working_portal, dest):
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    authenticator_row(rows)["fields"]["data"] = {"secret": "JBSWY3DPEHPK3PXP"}
    rewrite(folder, rows=rows, sign=False)

    assert "unencrypted" in refusal(folder, unsigned=True)


# --- 2. Only the models a backup includes ---------------------------------------------------------------------

FOREIGN_ROWS = {
    "admin.logentry": {"model": "admin.logentry", "fields": {
        "action_time": "2026-11-25T00:00:00Z", "user": ["x@a.test"], "content_type": None, "object_id": "1",
        "object_repr": "forged", "action_flag": 1, "change_message": "forged history"}},
    "Admin.LogEntry (other case)": {"model": "Admin.LogEntry", "fields": {
        "action_time": "2026-11-25T00:00:00Z", "user": ["x@a.test"], "content_type": None, "object_id": "1",
        "object_repr": "forged", "action_flag": 1, "change_message": "forged history"}},
    "sessions.session": {"model": "sessions.session", "pk": "k" * 32, "fields": {
        "session_data": "x", "expire_date": "2036-01-01T00:00:00Z"}},
    "auth.permission": {"model": "auth.permission", "fields": {
        "name": "Can do anything", "content_type": ["diagnosis", "case"], "codename": "do_anything"}},
    "a many-to-many table's own row": {"model": "accounts.user_groups", "pk": 999, "fields": {
        "user": 1, "group": 1}},
}


@pytest.mark.parametrize("foreign", FOREIGN_ROWS)
def test_rows_of_a_model_the_backup_does_not_include_are_refused(foreign, working_portal, dest):
    folder, _, _ = back_up(dest)
    rewrite(folder, rows=[*rows_of(folder), FOREIGN_ROWS[foreign]])

    message = refusal(folder)
    assert "a backup does not include" in message and FOREIGN_ROWS[foreign]["model"] in message


def test_a_manifest_counting_a_model_the_backup_does_not_include_is_refused(working_portal, dest):
    folder, _, _ = back_up(dest)
    rewrite(folder, rows=[*rows_of(folder), FOREIGN_ROWS["admin.logentry"]])
    manifest = manifest_of(folder)
    manifest["row_counts"]["admin.logentry"] = 1
    manifest["rows"] += 1
    rewrite(folder, manifest=manifest)

    assert "admin.logentry" in refusal(folder)


def test_rows_of_an_included_model_the_manifest_does_not_count_are_refused(working_portal, dest):
    folder, _, _ = back_up(dest)
    manifest = manifest_of(folder)
    manifest["rows"] -= manifest["row_counts"].pop("diagnosis.caseaddendum")
    rewrite(folder, manifest=manifest)

    assert "diagnosis.caseaddendum" in refusal(folder)


def test_the_row_count_check_still_refuses_a_missing_row(working_portal, dest):
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    rows.remove(next(o for o in rows if o["model"] == "diagnosis.caseaddendum"))
    rewrite(folder, rows=rows)

    assert "holds 0 diagnosis.caseaddendum rows, the manifest 1" in refusal(folder)


# --- 3. No unencrypted two-factor secret ----------------------------------------------------------------------

PLAINTEXT = {
    "TOTP secret": {"secret": "JBSWY3DPEHPK3PXP"},
    "recovery seed": {"seed": "0123456789abcdef0123456789abcdef01234567"},
    "migrated code": {"secret": "ENCRYPTED", "migrated_codes": ["ENCRYPTED", "12345678"]},
    "secret not a string": {"secret": ["JBSWY3DPEHPK3PXP"]},
    "data a string": '{"secret": "JBSWY3DPEHPK3PXP"}',
}


@pytest.mark.parametrize("data", PLAINTEXT)
def test_a_backup_holding_an_unencrypted_two_factor_secret_is_refused(data, working_portal, dest):
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    encrypted = encrypt_secret("JBSWY3DPEHPK3PXP")
    planted = json.loads(json.dumps(PLAINTEXT[data]).replace("ENCRYPTED", encrypted))
    authenticator_row(rows)["fields"]["data"] = planted
    rewrite(folder, rows=rows)

    message = refusal(folder)
    assert "unencrypted" in message and "two-factor" in message and PREFIX in message


def test_encrypted_secrets_and_migrated_codes_are_accepted(working_portal, dest):
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    authenticator_row(rows)["fields"]["data"] = {"secret": encrypt_secret("JBSWY3DPEHPK3PXP"),
                                                 "migrated_codes": [encrypt_secret("12345678")]}
    rewrite(folder, rows=rows)

    backup.verify_backup(folder)


def test_backup_refuses_a_database_holding_an_unencrypted_two_factor_secret(working_portal, dest):
    from allauth.mfa.models import Authenticator

    Authenticator.objects.update(data={"secret": "JBSWY3DPEHPK3PXP"})
    with pytest.raises(CommandError, match=f"unencrypted.*{working_portal['pathologist'].email}"):
        call_command("backup_portal", str(dest), stdout=io.StringIO(), stderr=io.StringIO())
    assert list(dest.iterdir()) == []


# --- 4. Symbolic links and special files ----------------------------------------------------------------------

def outside_copy(tmp_path, path, name="outside"):
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if path.is_dir() else shutil.copy)(path, target)
    return target


def test_a_media_file_replaced_by_a_symlink_to_a_file_outside_is_refused(working_portal, dest, tmp_path):
    folder, _, _ = back_up(dest)
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("contents of a file outside the backup\n")
    manifest = manifest_of(folder)
    victim = manifest["media"][0]
    (folder / "media" / victim["path"]).unlink()
    (folder / "media" / victim["path"]).symlink_to(secret)
    manifest["media_bytes"] += secret.stat().st_size - victim["size"]
    victim.update(size=secret.stat().st_size, sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    rewrite(folder, manifest=manifest)

    message = refusal(folder)
    assert "symbolic link" in message and victim["path"] in message


def test_a_symlinked_folder_in_media_is_refused(working_portal, dest, tmp_path):
    folder, _, _ = back_up(dest)
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (outside / "x.txt").write_text("outside\n")
    (folder / "media" / "linked").symlink_to(outside)
    manifest = manifest_of(folder)
    manifest["media"].append({"path": "linked/x.txt", "size": 8, "sha256": hashlib.sha256(b"outside\n").hexdigest()})
    manifest["media_files"] += 1
    manifest["media_bytes"] += 8
    rewrite(folder, manifest=manifest)

    assert "media/linked is a symbolic link" in refusal(folder)


@pytest.mark.parametrize("name", ["database.json", "manifest.json", "media"])
def test_database_manifest_or_media_folder_replaced_by_a_symlink_is_refused(name, working_portal, dest, tmp_path):
    folder, _, _ = back_up(dest)
    target = outside_copy(tmp_path, folder / name)
    shutil.rmtree(folder / name) if (folder / name).is_dir() else (folder / name).unlink()
    (folder / name).symlink_to(target)

    message = refusal(folder)
    assert "symbolic link" in message and name in message


def test_a_fifo_or_other_special_file_in_media_is_refused_without_opening_it(working_portal, dest):
    folder, _, _ = back_up(dest)
    os.mkfifo(folder / "media" / "pipe")

    message = refusal(folder)
    assert "media/pipe" in message and "not a regular file" in message


def test_a_fifo_named_in_the_manifest_is_refused_without_blocking(working_portal, dest):
    folder, _, _ = back_up(dest)
    os.mkfifo(folder / "media" / "pipe")
    manifest = manifest_of(folder)
    manifest["media"].append({"path": "pipe", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()})
    manifest["media_files"] += 1
    rewrite(folder, manifest=manifest)

    assert "media/pipe" in refusal(folder)


def test_the_file_opener_follows_no_symlink_at_any_level(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("x")
    (tmp_path / "dirlink").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "filelink").symlink_to(tmp_path / "real" / "x.txt")

    with backup._open_regular(tmp_path, "real/x.txt") as f:
        assert f.read() == b"x"
    for relative in ("dirlink/x.txt", "real/filelink"):
        with pytest.raises(backup.BackupError, match="symbolic link"):
            backup._open_regular(tmp_path, relative)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_media_folder_swapped_for_a_symlink_after_the_checks_is_not_followed(
        working_portal, dest, wiped, tmp_path, monkeypatch, media_root):
    folder, _, _ = back_up(dest)
    wiped()
    smears = folder / "media" / "smears"
    checked = backup.check_migrations

    def check_then_swap(state):
        notes = checked(state)
        target = outside_copy(tmp_path, smears, "outside-smears")
        shutil.rmtree(smears)
        smears.symlink_to(target)
        return notes

    monkeypatch.setattr(backup.restoring, "check_migrations", check_then_swap)
    with pytest.raises(CommandError, match="symbolic link"):
        restore(folder)
    assert get_user_model().objects.count() == 0 and files_in(media_root) == {}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_restore_loads_the_database_json_it_checked_not_one_swapped_in_afterwards(working_portal, dest, wiped,
                                                                                   monkeypatch, client):
    folder, _, _ = back_up(dest)
    rows = rows_of(folder)
    for row in rows:
        if row["model"] == "accounts.user":
            row["fields"]["password"] = make_password(ATTACKER_PASSWORD)
    swapped = json.dumps(rows)
    wiped()
    checked = backup.check_migrations

    def check_then_swap(state):
        notes = checked(state)
        (folder / "database.json").write_text(swapped)
        return notes

    monkeypatch.setattr(backup.restoring, "check_migrations", check_then_swap)
    restore(folder)
    technician = get_user_model().objects.get(email=working_portal["technician"].email)
    assert technician.check_password(PASSWORD) and not technician.check_password(ATTACKER_PASSWORD)


def test_backup_refuses_a_media_root_holding_a_symlink(working_portal, dest, media_root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the portal's\n")
    (media_root / "link.txt").symlink_to(outside)

    with pytest.raises(CommandError, match="link.txt is a symbolic link"):
        call_command("backup_portal", str(dest), stdout=io.StringIO(), stderr=io.StringIO())
    assert list(dest.iterdir()) == []


# --- 5. The manifest's shape ----------------------------------------------------------------------------------

def _set(path, value):
    def change(manifest):
        *parents, last = path
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value
        return manifest
    return change


def _append_media(entry):
    def change(manifest):  # the totals kept right: the entry itself is what is wrong
        manifest["media"].append(entry)
        manifest["media_files"] += 1
        if isinstance(entry, dict) and isinstance(entry.get("size"), int):
            manifest["media_bytes"] += entry["size"]
        return manifest
    return change


SHA = "0" * 64
BAD_MANIFESTS = {
    "a list": lambda m: [m],
    "format a string": _set(["format"], "2"),
    "media path not a string": _append_media({"path": 5, "size": 0, "sha256": SHA}),
    "media entry a string": _append_media("oops"),
    "media entry without sha256": _append_media({"path": "a.png", "size": 0}),
    "media size a string": _set(["media", 0, "size"], "12"),
    "media size true": _set(["media", 0, "size"], True),
    "media sha256 not hex": _set(["media", 0, "sha256"], "z" * 64),
    "media not a list": _set(["media"], {"path": "a.png"}),
    "media path twice": lambda m: {**m, "media": [*m["media"], dict(m["media"][0])]},
    "media path not normal": lambda m: _set(["media", 0, "path"], "./" + m["media"][0]["path"])(m),
    "media path with NUL": _append_media({"path": "a\x00b", "size": 0, "sha256": SHA}),
    "media path ../": _append_media({"path": "../escape.txt", "size": 0, "sha256": SHA}),
    "database not an object": _set(["database"], "database.json"),
    "database sha256 missing": lambda m: {**m, "database": {"path": "database.json", "size": 1}},
    "database another path": _set(["database", "path"], "../other.json"),
    "row_counts a list": _set(["row_counts"], []),
    "a row count a string": _set(["row_counts", "diagnosis.case"], "2"),
    "a migration not a string": _set(["migrations", "diagnosis"], 7),
    "missing_media not a list": _set(["missing_media"], "none"),
    "created_at missing": lambda m: {k: v for k, v in m.items() if k != "created_at"},
    "rows not the sum of row_counts": lambda m: _set(["rows"], m["rows"] + 1)(m),
}


@pytest.mark.parametrize("bad", BAD_MANIFESTS)
def test_a_manifest_of_the_wrong_shape_is_refused_not_a_traceback(bad, working_portal, dest):
    folder, _, _ = back_up(dest)
    rewrite(folder, manifest=BAD_MANIFESTS[bad](manifest_of(folder)))

    message = refusal(folder)
    assert "manifest.json" in message and ("not a manifest this portal can read" in message
                                           or "outside the media folder" in message)


BAD_DATABASES = {
    "an object": {"model": 1},
    "a row not an object": [["accounts.user"]],
    "a row without model": [{"fields": {}}],
    "a model not a string": [{"model": ["accounts", "user"], "fields": {}}],
    "fields not an object": [{"model": "diagnosis.patient", "fields": "lab_id"}],
}


@pytest.mark.parametrize("bad", BAD_DATABASES)
def test_a_database_json_of_the_wrong_shape_is_refused_not_a_traceback(bad, working_portal, dest):
    folder, _, _ = back_up(dest)
    rewrite(folder, rows=BAD_DATABASES[bad])

    message = refusal(folder)
    assert "database.json" in message and "already holds" not in message


def test_the_tampering_tests_own_helper_leaves_a_valid_backup_valid(working_portal, dest):
    """rewrite() without a change keeps a backup restorable: the refusals above are for the change made."""
    folder, _, _ = back_up(dest)
    rewrite(folder, rows=rows_of(folder))
    assert backup.verify_backup(folder)["rows"] == sum(backup.row_counts().values())


def test_a_backup_is_signed_in_its_own_file_over_the_exact_bytes_of_the_manifest(working_portal, dest):
    folder, _, _ = back_up(dest)
    assert sorted(p.name for p in folder.iterdir()) == ["database.json", "manifest.hmac", "manifest.json", "media"]
    assert manifest_of(folder)["format"] == 2
    (folder / "manifest.json").write_bytes((folder / "manifest.json").read_bytes() + b" ")
    assert "another SECRET_KEY" in refusal(folder)


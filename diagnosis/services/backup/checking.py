"""Checking a backup folder before anything is restored from it (and after writing one): the signature first,
then the manifest's shape, every file, and database.json's rows."""
import hashlib
import json
import os
import re
import stat
from pathlib import Path

from .shared import (
    DATABASE_FILE, FORMAT, MANIFEST_FILE, MEDIA_DIR, UNSIGNED_FORMATS, BackupError, _check_signature, _hash_file,
    _kind, _open_regular, _safe_relative, _unencrypted_in_rows, _walk_files, included_models,
)


# --- Checking a backup ---------------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_file_entry(entry):
    return (isinstance(entry, dict) and isinstance(entry.get("path"), str) and _is_count(entry.get("size"))
            and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"]) is not None)


def _shape_problem(manifest, formats):
    """Why manifest is not one this portal reads (every field restore uses, with its type), or None."""
    if not isinstance(manifest, dict):
        return "it is not a JSON object"
    version = manifest.get("format")
    if not _is_count(version) or version not in formats:
        return f"format {' or '.join(map(str, formats))} expected, not {version!r}"
    if not isinstance(manifest.get("created_at"), str):
        return "created_at is not a text"
    if not _is_file_entry(manifest.get("database")) or manifest["database"]["path"] != DATABASE_FILE:
        return f"database is not an object with path {DATABASE_FILE!r}, a size and a sha256"
    media = manifest.get("media")
    if not isinstance(media, list):
        return "media is not a list"
    seen = set()
    for number, entry in enumerate(media):
        if not _is_file_entry(entry):
            return f"media entry {number + 1} is not an object with a path, a size and a sha256"
        if entry["path"] in seen:
            return f"media names {entry['path']!r} twice"
        seen.add(entry["path"])
    for key in ("migrations", "row_counts"):
        if not isinstance(manifest.get(key), dict) or not all(isinstance(name, str) for name in manifest[key]):
            return f"{key} is not an object"
    if not all(isinstance(name, str) for name in manifest["migrations"].values()):
        return "migrations holds a migration name that is not a text"
    if not all(_is_count(n) for n in manifest["row_counts"].values()):
        return "row_counts holds a count that is not a whole number"
    if manifest.get("rows") != sum(manifest["row_counts"].values()) or not _is_count(manifest.get("rows")):
        return "rows is not the sum of row_counts"
    if manifest.get("media_files") != len(media) or not _is_count(manifest.get("media_files")):
        return "media_files is not the number of media entries"
    if (manifest.get("media_bytes") != sum(entry["size"] for entry in media)
            or not _is_count(manifest.get("media_bytes"))):
        return "media_bytes is not the sum of the media sizes"
    missing = manifest.get("missing_media")
    if not isinstance(missing, list) or not all(
            isinstance(ref, dict) and all(isinstance(ref.get(key), str) for key in ("path", "model", "field"))
            for ref in missing):
        return "missing_media is not a list of objects with a path, a model and a field"
    return None


class _Checked:
    """A checked backup: its manifest, database.json's bytes and rows as checked, and whether it was signed."""

    def __init__(self, manifest, database, objects, signature):
        self.manifest, self.database, self.objects, self.signature = manifest, database, objects, signature


def read_manifest(folder, *, unsigned=False):
    """The manifest of a backup folder, read only once its signature is checked (see verify_backup)."""
    return _read_signed_manifest(Path(folder), unsigned=unsigned)[0]


def _read_signed_manifest(folder, *, unsigned=False):
    """(manifest, "verified" / "missing" / "invalid"): manifest.json's bytes, their signature checked before
    anything in them (or any other file) is read, then its shape."""
    path = folder / MANIFEST_FILE
    try:
        with _open_regular(folder, MANIFEST_FILE) as f:
            data = f.read()
    except FileNotFoundError:
        raise BackupError(f"{folder} has no {MANIFEST_FILE}: not a portal backup, or an unfinished one.") from None
    except BackupError as exc:
        raise BackupError(f"The backup in {folder} is damaged or was changed: {exc}; refusing.") from None
    except OSError as exc:
        raise BackupError(f"{path} cannot be read ({exc}).") from None
    signature = _check_signature(folder, data, unsigned=unsigned)
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise BackupError(f"{path} cannot be read ({exc}).") from None
    problem = _shape_problem(manifest, (FORMAT,) if signature == "verified" else UNSIGNED_FORMATS)
    if problem:
        raise BackupError(f"{path} is not a manifest this portal can read: {problem}.")
    for entry in manifest["media"]:
        _safe_relative(entry["path"], path)
    return manifest, signature


def verify_backup(folder, *, unsigned=False):
    """Re-read a backup folder: the signature of manifest.json first (with SECRET_KEY or one of
    SECRET_KEY_FALLBACKS; with unsigned, a missing or wrong one is let through), the manifest's shape, then
    database.json and every media file must be regular files (no symbolic link anywhere) with the manifest's size
    and sha256, media/ must hold nothing else, and database.json must parse, hold rows only of the models a backup
    includes, the manifest's row count of each, and no unencrypted two-factor secret. Returns the manifest; raises
    BackupError naming what is wrong."""
    return _check_backup(Path(folder), unsigned=unsigned).manifest


def _check_backup(folder, *, unsigned=False):
    manifest, signature = _read_signed_manifest(folder, unsigned=unsigned)
    problems, database = [], None
    try:
        with _open_regular(folder, DATABASE_FILE) as f:
            database = f.read()
    except FileNotFoundError:
        problems.append(f"{DATABASE_FILE} is missing")
    except BackupError as exc:
        problems.append(str(exc))
    except OSError as exc:
        problems.append(f"{DATABASE_FILE} cannot be read ({exc.strerror})")
    if database is not None:
        entry = manifest["database"]
        digest = hashlib.sha256(database).hexdigest()
        if (len(database), digest) != (entry["size"], entry["sha256"]):
            problems.append(f"{DATABASE_FILE} does not match the manifest (sha256 {digest}, "
                            f"expected {entry['sha256']})")
    media = folder / MEDIA_DIR
    try:
        media_mode = os.lstat(media).st_mode
    except FileNotFoundError:
        media_mode = None
    if media_mode is not None and not stat.S_ISDIR(media_mode):
        found, walk_problems = [], [f"{MEDIA_DIR} is {_kind(media_mode)}, not a folder"]
    else:
        found, walk_problems = _walk_files(media, f"{MEDIA_DIR}/")
    problems += walk_problems
    expected, found_set = {entry["path"]: entry for entry in manifest["media"]}, set(found)
    for relative, entry in expected.items():
        if relative not in found_set:
            if not walk_problems:  # otherwise a link or special file stands in its way, named already
                problems.append(f"{MEDIA_DIR}/{relative} is missing")
            continue
        try:  # opened without following a link: one swapped in since the walk is refused too
            with _open_regular(folder, f"{MEDIA_DIR}/{relative}") as f:
                size, digest = _hash_file(f)
        except FileNotFoundError:
            problems.append(f"{MEDIA_DIR}/{relative} is missing")
            continue
        except BackupError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{MEDIA_DIR}/{relative} cannot be read ({exc.strerror})")
            continue
        if (size, digest) != (entry["size"], entry["sha256"]):
            problems.append(f"{MEDIA_DIR}/{relative} does not match the manifest (sha256 {digest}, "
                            f"expected {entry['sha256']})")
    problems += [f"{MEDIA_DIR}/{p} is not in the manifest" for p in found if p not in expected]
    objects = []
    if not problems:
        objects, problems = _read_rows(database)
        if not problems:
            problems = _database_problems(objects, manifest["row_counts"])
    if problems:
        problems = list(dict.fromkeys(problems))
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BackupError(f"The backup in {folder} is damaged or was changed: {shown}.")
    unencrypted = _unencrypted_in_rows(objects)
    if unencrypted:
        from accounts.mfa_adapter import PREFIX

        raise BackupError(
            f"{DATABASE_FILE} in {folder} holds two-factor secrets stored unencrypted (without accounts.mfa_adapter's "
            f"{PREFIX!r} prefix): {'; '.join(unencrypted[:5])}. The portal stores them encrypted with SECRET_KEY since "
            f"migration accounts.0008, so an unencrypted one was put there by hand or by someone who changed the "
            f"backup, and it would hand them that user's second factor: refusing. (A backup made before that "
            f"migration restores with the code version that made it; upgrading then encrypts them.)")
    return _Checked(manifest, database, objects, signature)


def _read_rows(data):
    """(rows, problems): database.json parsed, each row an object with a model name and fields."""
    try:
        objects = json.loads(data)
    except ValueError as exc:
        return [], [f"{DATABASE_FILE} does not parse ({exc})"]
    if not isinstance(objects, list):
        return [], [f"{DATABASE_FILE} is not a list of rows"]
    for number, obj in enumerate(objects):
        if not (isinstance(obj, dict) and isinstance(obj.get("model"), str) and isinstance(obj.get("fields"), dict)):
            return [], [f"{DATABASE_FILE}'s row {number + 1} is not an object with a model name and fields"]
    return objects, []


def _database_problems(objects, counts):
    """Rows only of the models a backup includes (never one EXCLUDED, nor an automatic many-to-many table's own
    row: dumpdata writes those lists inside their parents' rows), each model counted by the manifest as many
    times as database.json holds it."""
    included = {model._meta.label_lower: model for model in included_models()}
    through = {label for label, model in included.items() if model._meta.auto_created}
    dumped = {}
    for obj in objects:
        dumped[obj["model"]] = dumped.get(obj["model"], 0) + 1
    problems = []
    foreign = sorted(label for label in dumped if label not in included or label in through)
    if foreign:
        problems.append(f"{DATABASE_FILE} holds rows of {', '.join(repr(label[:80]) for label in foreign[:5])}, "
                        f"which a backup does not include")
    uncounted = sorted(label for label in counts if label not in included)
    if uncounted:
        problems.append(f"the manifest counts rows of {', '.join(repr(label[:80]) for label in uncounted[:5])}, "
                        f"which a backup does not include")
    problems += [f"{DATABASE_FILE} holds {n} {label} rows the manifest does not count"
                 for label, n in sorted(dumped.items()) if label in included and label not in counts]
    problems += [f"{DATABASE_FILE} holds {dumped.get(label, 0)} {label} rows, the manifest {n}"
                 for label, n in counts.items() if label in included and label not in through
                 and dumped.get(label, 0) != n]
    return problems

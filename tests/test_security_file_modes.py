"""F6 of the security audit: with SQLite, `manage.py migrate` created the database (patients, password hashes,
TOTP secrets) world-readable under the usual umask 022, and the runtime folder var/ (secret key, broker messages)
0755. leukportal.settings now creates the database file 0600 before Django opens it and the folder 0750, and warns
about an existing database every local account can read, without changing its mode."""
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from leukportal import settings as portal_settings  # the module already loaded: its helpers, not a re-import

ROOT = Path(__file__).resolve().parent.parent
SQLITE = "django.db.backends.sqlite3"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_sqlite_database_is_created_private_and_usable(tmp_path, umask_022):
    path = tmp_path / "db.sqlite3"
    assert portal_settings.secure_sqlite_database({"ENGINE": SQLITE, "NAME": str(path)}) is None
    assert mode(path) == 0o600 and path.stat().st_size == 0
    with sqlite3.connect(path) as db:  # SQLite takes the empty file as an empty database
        db.execute("create table t (x)")
        db.execute("insert into t values (1)")
    assert mode(path) == 0o600
    assert sqlite3.connect(path).execute("select x from t").fetchall() == [(1,)]


def test_a_new_sqlite_database_is_private_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        portal_settings.secure_sqlite_database({"ENGINE": SQLITE, "NAME": tmp_path / "db.sqlite3"})
    finally:
        os.umask(old)
    assert mode(tmp_path / "db.sqlite3") == 0o600


def test_an_existing_world_readable_database_is_left_alone_with_a_warning(tmp_path):
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"data")
    path.chmod(0o644)
    warning = portal_settings.secure_sqlite_database({"ENGINE": SQLITE, "NAME": str(path)})
    assert f"chmod 600 {path}" in warning and "mode 644" in warning
    assert mode(path) == 0o644 and path.read_bytes() == b"data"


@pytest.mark.parametrize("file_mode", [0o600, 0o640])
def test_an_existing_private_database_gets_no_warning(tmp_path, file_mode):
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"data")
    path.chmod(file_mode)
    assert portal_settings.secure_sqlite_database({"ENGINE": SQLITE, "NAME": str(path)}) is None
    assert mode(path) == file_mode and path.read_bytes() == b"data"


@pytest.mark.parametrize("db", [
    {"ENGINE": SQLITE, "NAME": ":memory:"},
    {"ENGINE": SQLITE, "NAME": "file:memdb1?mode=memory&cache=shared"},
    {"ENGINE": SQLITE, "NAME": ""},
    {"ENGINE": "django.db.backends.mysql", "NAME": "leukportal"},
])
def test_nothing_is_created_for_other_databases(tmp_path, db, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portal_settings.secure_sqlite_database(db) is None
    assert list(tmp_path.iterdir()) == []


def test_a_database_in_a_missing_folder_is_left_to_djangos_own_error(tmp_path):
    path = tmp_path / "missing" / "db.sqlite3"
    assert portal_settings.secure_sqlite_database({"ENGINE": SQLITE, "NAME": str(path)}) is None
    assert not path.parent.exists()


def test_create_private_file_writes_once_and_never_overwrites(tmp_path, umask_022):
    path = tmp_path / "key"
    assert portal_settings.create_private_file(path, b"first") is True
    assert portal_settings.create_private_file(path, b"second") is False
    assert path.read_bytes() == b"first" and mode(path) == 0o600


def test_the_var_folder_is_created_0750(tmp_path):
    old = os.umask(0)
    try:
        portal_settings.make_private_dir(tmp_path / "a" / "var")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a" / "var") == 0o750


def test_an_existing_var_folder_keeps_its_mode(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var").chmod(0o755)
    portal_settings.make_private_dir(tmp_path / "var")
    assert mode(tmp_path / "var") == 0o755


def run_settings(tmp_path, code, **env):
    """`code` after django.setup(), in a fresh interpreter under umask 022, with a database and var/ in tmp_path."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    base.update(DEBUG="1", LEUKPORTAL_VAR_DIR=str(tmp_path / "var"),
                DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DJANGO_SETTINGS_MODULE="leukportal.settings")
    base.update(env)
    program = "import os; os.umask(0o022)\nimport django; django.setup()\n" + code
    return subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=base, capture_output=True, text=True,
                          timeout=120)


def test_settings_create_the_database_var_and_secret_key_private_before_django_opens_them(tmp_path):
    code = ("from django.db import connection\n"
            "with connection.cursor() as c: c.execute('create table t (x integer)')\n")
    run = run_settings(tmp_path, code)
    assert run.returncode == 0, run.stderr
    assert mode(tmp_path / "db.sqlite3") == 0o600
    assert mode(tmp_path / "var") == 0o750
    assert mode(tmp_path / "var" / "dev-secret-key") == 0o600
    assert "can be read by every local account" not in run.stderr


def test_settings_warn_once_about_an_existing_world_readable_database(tmp_path):
    (tmp_path / "db.sqlite3").write_bytes(b"")
    (tmp_path / "db.sqlite3").chmod(0o644)
    run = run_settings(tmp_path, "print('started')")
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("can be read by every local account") == 1
    assert f"chmod 600 {tmp_path / 'db.sqlite3'}" in run.stderr
    assert mode(tmp_path / "db.sqlite3") == 0o644

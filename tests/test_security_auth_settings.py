"""Settings that decide how exposed a deployment is, read in a fresh
interpreter from the environment alone: DEBUG is off unless asked for, and the
reverse proxy's client address reaches the login rate limits."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def settings_from(tmp_path, code, **env):
    """Run `code` after django.setup() with nothing but `env` (and PATH) in the environment."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    base.update(LEUKPORTAL_VAR_DIR=str(tmp_path / "var"), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                DJANGO_SETTINGS_MODULE="leukportal.settings")
    base.update(env)
    return subprocess.run([sys.executable, "-c", "import django; django.setup()\n" + code], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def no_debug_in_dotenv():
    dotenv = ROOT / ".env"
    if dotenv.is_file() and any(line.strip().startswith("DEBUG") for line in dotenv.read_text().splitlines()):
        pytest.skip(".env sets DEBUG for this checkout")


def test_debug_is_off_unless_the_environment_turns_it_on(tmp_path, no_debug_in_dotenv):
    code = "from django.conf import settings; print(settings.DEBUG, settings.SECURE_SSL_REDIRECT)"
    run = settings_from(tmp_path, code, SECRET_KEY="k" * 60, ALLOWED_HOSTS="portal.lab.example")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]


def test_a_machine_with_no_configuration_refuses_to_start_instead_of_running_in_debug(tmp_path, no_debug_in_dotenv):
    run = settings_from(tmp_path, "print('started')")
    assert run.returncode != 0 and "SECRET_KEY must be set" in run.stderr


def test_development_mode_is_asked_for_with_debug_1(tmp_path):
    run = settings_from(tmp_path, "from django.conf import settings; print(settings.DEBUG)", DEBUG="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True"]


def test_trusted_proxy_settings_are_read_from_the_environment(tmp_path):
    code = "from allauth import app_settings as a; print(a.TRUSTED_PROXY_COUNT, a.TRUSTED_CLIENT_IP_HEADER)"
    run = settings_from(tmp_path, code, DEBUG="1", ALLAUTH_TRUSTED_PROXY_COUNT="1",
                        ALLAUTH_TRUSTED_CLIENT_IP_HEADER="X-Real-IP")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "X-Real-IP"]
    # Unset: no proxy is trusted, X-Forwarded-For is ignored and REMOTE_ADDR counts.
    run = settings_from(tmp_path, code, DEBUG="1")
    assert run.stdout.split() == ["0", "None"]


def test_media_file_modes_are_octal_from_the_environment_and_private_by_default(tmp_path):
    code = ("from django.conf import settings as s; "
            "print(oct(s.FILE_UPLOAD_PERMISSIONS), oct(s.FILE_UPLOAD_DIRECTORY_PERMISSIONS))")
    run = settings_from(tmp_path, code, DEBUG="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0o640", "0o750"]
    run = settings_from(tmp_path, code, DEBUG="1", FILE_UPLOAD_PERMISSIONS="600",
                        FILE_UPLOAD_DIRECTORY_PERMISSIONS="0o700")
    assert run.stdout.split() == ["0o600", "0o700"]

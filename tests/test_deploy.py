"""Production settings: `manage.py check --deploy` is clean with DEBUG=0, and
the documented production server (gunicorn, `make serve`) serves the portal
with the security headers on."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def production_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "OMP_NUM_THREADS")}
    env.update(
        DEBUG="0",
        SECRET_KEY="x" * 20 + "-production-test-secret-key-with-enough-entropy-0123456789",
        ALLOWED_HOSTS="portal.lab.example,127.0.0.1",
        LEUKPORTAL_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        DJANGO_SETTINGS_MODULE="leukportal.settings",
    )
    env.update(extra)
    return env


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_production_settings_refuse_to_start_without_a_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    run = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "SECRET_KEY must be set" in run.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_serves_the_portal_with_security_headers(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed in this environment")
    port = free_port()
    env = production_env(tmp_path, SECURE_PROXY_SSL_HEADER="1")
    server = subprocess.Popen(
        [str(gunicorn), "leukportal.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/accounts/login/",
                                         headers={"X-Forwarded-Proto": "https", "Host": "portal.lab.example"})
        deadline = time.monotonic() + 60
        while True:
            try:
                response = urllib.request.urlopen(request, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        assert response.status == 200
        headers = response.headers
        assert "max-age=31536000" in headers["Strict-Transport-Security"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"
        # Plain HTTP is sent to HTTPS.
        plain = urllib.request.Request(f"http://127.0.0.1:{port}/accounts/login/", headers={"Host": "portal.lab.example"})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        with pytest.raises(urllib.error.HTTPError) as redirect:
            urllib.request.build_opener(NoRedirect).open(plain, timeout=5)
        assert redirect.value.code == 301
        assert redirect.value.headers["Location"] == "https://portal.lab.example/accounts/login/"
    finally:
        server.terminate()
        server.wait(timeout=30)

"""F8 of the security audit (hardening): no portal script reads the CSRF cookie, so it is HttpOnly; a script
injected into a page cannot read it either. A script that needs the token reads it from the form's hidden
csrfmiddlewaretoken input (or a meta tag), never from document.cookie."""
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def test_the_csrf_cookie_set_by_the_login_page_is_httponly():
    response = Client().get(reverse("account_login"))
    assert response.status_code == 200
    cookie = response.cookies[settings.CSRF_COOKIE_NAME]
    assert cookie.value and cookie["httponly"] is True


def test_no_portal_script_or_template_reads_the_csrf_cookie():
    """With the cookie HttpOnly such a script would get nothing: this fails before it ships."""
    reads_cookie = re.compile(r"csrftoken|document\.cookie|getCookie", re.IGNORECASE)
    files = [p for p in (ROOT / "static").rglob("*.js") if "vendor" not in p.parts]
    files += list((ROOT / "templates").rglob("*.html"))
    files += [p for app in ("accounts", "diagnosis") for p in (ROOT / app).rglob("templates/**/*.html")]
    assert files
    offenders = [str(p.relative_to(ROOT)) for p in files if reads_cookie.search(p.read_text(errors="replace"))]
    assert offenders == []

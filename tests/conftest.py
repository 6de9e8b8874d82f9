"""Shared fixtures for the portal tests (accounts, diagnosis, ...)."""
import os
import shutil

import pytest
from django.contrib.auth.models import Group
from tests.portal_testutils import PASSWORD


@pytest.fixture(autouse=True)
def mfa_off_unless_marked(request, settings):
    """Most tests sign users in with force_login and test other things: MFA is
    required for no role there. Tests marked `mfa` keep the configured roles."""
    if not request.node.get_closest_marker("mfa"):
        settings.MFA_REQUIRED_ROLES = []


@pytest.fixture(autouse=True)
def private_cache(settings):
    """A fresh in-memory cache per test, so that login rate limits never carry
    over from one test to another (and a Redis cache is never flushed)."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "test"}}
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def make_user(db, django_user_model):
    counter = {"n": 0}

    def make(role=None, email=None, **extra):
        counter["n"] += 1
        user = django_user_model.objects.create_user(
            email=email or f"user{counter['n']}-{(role or 'none').lower()}@lab.example", password=PASSWORD, **extra
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def technician(make_user):
    return make_user("Technician")


@pytest.fixture
def pathologist(make_user):
    return make_user("Pathologist")


@pytest.fixture
def lab_admin(make_user):
    return make_user("Admin", is_staff=True)


@pytest.fixture
def no_role_user(make_user):
    return make_user(None)


def client_for(client, user):
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def tech_client(client, technician):
    return client_for(client, technician)


@pytest.fixture
def path_client(client, pathologist):
    client.force_login(pathologist)
    return client


@pytest.fixture
def patient(db, technician):
    from diagnosis.models import Patient

    return Patient.objects.create(lab_id="P-0001", sex="F", birth_year=1984, created_by=technician)


@pytest.fixture
def case(db, patient, technician):
    from diagnosis.models import Case

    return Case.objects.create(patient=patient, accession_number="ACC-0001", created_by=technician)


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture
def browser(monkeypatch):
    """Headless system Chromium driven by Playwright; skips with the reason when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls stay synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(browser):
    return browser.new_page()


@pytest.fixture
def parsed(monkeypatch):
    """The paths of the requests whose multipart body was parsed."""
    paths = []
    from django.http.multipartparser import MultiPartParser

    real_parse = MultiPartParser.parse

    def parse(self):
        paths.append(self._meta["PATH_INFO"])
        return real_parse(self)

    monkeypatch.setattr(MultiPartParser, "parse", parse)
    return paths

"""An anonymous client must not make the portal parse (and spool to disk) a
multipart body on any URL: the too-many-files answer reads the body before
the CSRF check, so it does so for the smear upload view only, and only for a
signed-in user allowed to upload (tests/test_security_upload_body.py)."""
import pytest
from django.test import Client
from django.urls import reverse

from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def files(n=2):
    return {"images": [upload(f"f{i}.png", image_bytes(seed=i)) for i in range(n)]}


@pytest.mark.parametrize("name,status", [("account_login", 403), ("account_signup", 403), ("home", 403)])
def test_anonymous_multipart_post_elsewhere_is_not_parsed(parsed, name, status):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse(name), files())
    assert response.status_code == status  # CSRF refuses it: no cookie, so it never reads the body either
    assert parsed == []


def test_multipart_post_to_an_unknown_url_is_not_parsed(parsed):
    response = Client(enforce_csrf_checks=True).post("/no-such-page/", files())
    assert response.status_code == 404
    assert parsed == []


def test_too_many_files_elsewhere_get_the_normal_answer(parsed, tech_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    response = tech_client.post(reverse("diagnosis:case_list"), files(2))
    assert response.status_code == 405  # the case list takes no POST, whatever the body
    assert parsed == []


def test_the_upload_view_is_still_parsed_first(parsed, tech_client, case, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    url = reverse("diagnosis:smear_upload", args=[case.pk])
    response = tech_client.post(url, {"kind": "field", **files(2)})
    assert response.status_code == 302 and response["Location"] == url
    assert parsed[:1] == [url]

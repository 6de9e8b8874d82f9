"""F5 of the security audit: a multipart body sent to the smear upload view was parsed, and its files spooled to
disk, before sign-in and CSRF were checked, whoever sent it and however large it was. Now the too-many-files answer
(leukportal.middleware.TooManyFilesMiddleware) reads the body only for a signed-in user allowed to upload, and a body
larger than a legitimate request can be is refused before a byte of it is read, on every URL."""
import pytest
from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.test import Client
from django.test.client import BOUNDARY, encode_multipart
from django.urls import reverse

from leukportal import middleware
from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def upload_url(case):
    return reverse("diagnosis:smear_upload", args=[case.pk])


def form(n=2, **fields):
    return {"kind": "field", "images": [upload(f"f{i}.png", image_bytes(seed=i)) for i in range(n)], **fields}


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def csrf_client(user=None, page=None):
    """A client that CSRF checks as a browser's would be, holding the CSRF cookie that a GET of a page with a form
    gives it (the login page gives it to any visitor)."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.get(page or reverse("account_login"))
    return client, client.cookies["csrftoken"].value


# --- Who the body is read for -----------------------------------------------------------------------------------


def test_anonymous_upload_post_is_not_parsed_and_goes_to_the_login_page(parsed, client, case):
    response = client.post(upload_url(case), form())
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert parsed == []


def test_anonymous_upload_post_without_a_csrf_token_gets_403_unparsed(parsed, case):
    response = Client(enforce_csrf_checks=True).post(upload_url(case), form())
    assert response.status_code == 403  # as every anonymous POST without the cookie
    assert parsed == []


def test_anonymous_too_many_files_get_the_login_page_not_the_forms_message(parsed, client, case, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    response = client.post(upload_url(case), form(2))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert parsed == []
    assert not any("can be uploaded at once" in m for m in messages_of(response))


@pytest.mark.parametrize("who,status", [("pathologist", 403), ("no_role_user", 302)])
def test_a_user_who_may_not_upload_is_not_parsed(parsed, client, case, settings, request, who, status):
    """A pathologist lacks diagnosis.add_smear (403); a user without a role is sent to the waiting page."""
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    client.force_login(request.getfixturevalue(who))
    response = client.post(upload_url(case), form(2))
    assert response.status_code == status
    if status == 302:
        assert response["Location"] == reverse("pending_role")
    assert parsed == []


def test_the_permission_is_the_one_the_upload_view_declares(tech_client, case):
    """The middleware asks the view which permission it needs, rather than keeping a copy that could drift."""
    from diagnosis.views import SmearUploadView

    assert SmearUploadView.permission_required == "diagnosis.add_smear"
    request = tech_client.get(upload_url(case)).wsgi_request
    assert middleware.upload_permission(request) == "diagnosis.add_smear"


def test_a_technician_with_too_many_files_still_gets_the_forms_message(parsed, tech_client, case, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    url = upload_url(case)
    response = tech_client.post(url, form(2), follow=True)
    assert response.redirect_chain == [(url, 302)]
    assert "At most 1 files can be uploaded at once; nothing was uploaded." in response.content.decode()
    assert parsed[:1] == [url]
    assert not case.smears.exists()


def test_too_many_files_give_the_message_before_csrf_reads_the_body(technician, case, settings):
    """Moved after AuthenticationMiddleware, the middleware still reads the body before CsrfViewMiddleware's
    process_view does (which runs after every middleware's __call__): the technician gets the form's message,
    not Django's bare 400."""
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    url = upload_url(case)
    client, token = csrf_client(technician, url)
    response = client.post(url, form(2, csrfmiddlewaretoken=token), follow=True)
    assert response.redirect_chain == [(url, 302)]
    assert "At most 1 files can be uploaded at once" in response.content.decode()


def test_a_technicians_upload_with_the_csrf_token_is_stored(technician, case):
    client, token = csrf_client(technician, upload_url(case))
    response = client.post(upload_url(case), form(2, csrfmiddlewaretoken=token))
    assert response.status_code == 302 and response["Location"] == case.get_absolute_url()
    assert case.smears.count() == 2


def test_the_middleware_comes_after_sign_in_and_the_session_and_mfa_checks():
    stack = django_settings.MIDDLEWARE
    mine = stack.index("leukportal.middleware.TooManyFilesMiddleware")
    for earlier in ("django.contrib.auth.middleware.AuthenticationMiddleware",
                    "leukportal.middleware.IdleSessionTimeoutMiddleware", "accounts.middleware.RequireMFAMiddleware"):
        assert stack.index(earlier) < mine


# --- How large a body may be ----------------------------------------------------------------------------------


def test_an_over_long_upload_is_refused_unread_with_the_forms_message(parsed, tech_client, case, settings):
    settings.SMEAR_MAX_UPLOAD_BYTES, settings.SMEAR_MAX_FILES_PER_UPLOAD = 10_000, 2
    limit = middleware.upload_body_limit()
    url = upload_url(case)
    data = {"kind": "field", "images": [upload("huge.png", b"\0" * (limit + 1))]}
    response = tech_client.post(url, data, follow=True)
    assert response.redirect_chain == [(url, 302)]
    page = response.content.decode().replace("\xa0", " ")
    assert "nothing was uploaded" in page and "at most 2 files of 9.8 KB each" in page
    assert parsed == []
    assert not case.smears.exists()


def test_an_over_long_content_length_is_refused_before_reading_with_default_limits(parsed, tech_client, case):
    """The declared length decides, before the body is read (the body here is small: it is never looked at)."""
    url = upload_url(case)
    response = tech_client.post(url, form(1), CONTENT_LENGTH=str(middleware.upload_body_limit() + 1))
    assert response.status_code == 302 and response["Location"] == url
    assert any("nothing was uploaded" in m for m in messages_of(response))
    assert parsed == []


def test_an_upload_just_within_the_limit_is_read(parsed, tech_client, case, settings):
    settings.SMEAR_MAX_UPLOAD_BYTES, settings.SMEAR_MAX_FILES_PER_UPLOAD = 10_000, 2
    url = upload_url(case)
    data = {"kind": "field", "images": [upload("big.png", b"\0" * (2 * 10_000))]}
    response = tech_client.post(url, data)
    assert response.status_code == 200  # the form again: the file itself is refused with its reason
    assert parsed == [url]
    assert any("big.png" in m and "the limit is 9.8" in m for m in messages_of(response))


def test_the_upload_limit_leaves_room_for_a_full_legitimate_upload_and_fits_the_documented_proxy(settings):
    """Fifty files of the largest size with long names, plus the form's fields, are read; the README's nginx
    client_max_body_size (1300m, for the defaults) lets through everything the portal reads."""
    settings.SMEAR_MAX_FILES_PER_UPLOAD, settings.SMEAR_MAX_UPLOAD_BYTES = 50, 25 * 1024 * 1024  # the defaults
    files, size = settings.SMEAR_MAX_FILES_PER_UPLOAD, settings.SMEAR_MAX_UPLOAD_BYTES
    long_name = "x" * 251 + ".png"
    one = len(encode_multipart(BOUNDARY, {"kind": "field", "csrfmiddlewaretoken": "t" * 64,
                                          "images": [upload(long_name, b"", "image/png")]}))
    overhead_per_file = one  # generous: the whole form's overhead counted for every file
    assert middleware.upload_body_limit() >= files * (size + overhead_per_file)
    assert middleware.upload_body_limit() <= 1300 * 1024 * 1024


def test_a_malformed_or_negative_content_length_is_not_a_500(tech_client, case):
    for length in ("abc", "-1"):
        response = tech_client.post(upload_url(case), form(1), CONTENT_LENGTH=length)
        assert response.status_code in (200, 302, 400)


# --- Large bodies elsewhere, and from anyone with a CSRF cookie -------------------------------------------------


@pytest.mark.parametrize("name", ["upload", "account_login", "account_signup"])
def test_an_anonymous_client_with_a_csrf_cookie_cannot_make_the_portal_spool_a_large_body(parsed, case, name):
    """With the cookie (anyone gets one from the login page) and the token in the body, CsrfViewMiddleware itself
    would parse the body of any URL; a multipart body larger than any page but the upload form takes is refused
    first, unread."""
    client, token = csrf_client()
    url = upload_url(case) if name == "upload" else reverse(name)
    big = middleware.other_body_limit() + 1
    data = {"csrfmiddlewaretoken": token, "images": [upload("big.png", b"\0" * big)]}
    response = client.post(url, data)
    assert response.status_code == 413
    assert "too large" in response.content.decode()
    assert parsed == []


def test_a_large_body_to_another_page_is_refused_for_a_technician_too(parsed, tech_client):
    big = middleware.other_body_limit() + 1
    response = tech_client.post(reverse("diagnosis:case_create"), {"images": [upload("big.png", b"\0" * big)]})
    assert response.status_code == 413
    assert parsed == []


def test_a_small_anonymous_post_with_the_csrf_token_gets_the_login_page_as_before(case):
    client, token = csrf_client()
    response = client.post(upload_url(case), form(1, csrfmiddlewaretoken=token))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))

"""Every portal page for anonymous, role-less, wrong-role and right-role users."""
import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROLES = ("Technician", "Pathologist", "Admin")


@pytest.fixture
def objects(smear_factory, case):
    smear = smear_factory(status="failed", error="boom")
    return {"case": case, "patient": case.patient, "smear": smear}


# (url name, kwargs key, roles allowed, method)
PAGES = [
    ("diagnosis:case_list", None, ROLES, "get"),
    ("diagnosis:case_detail", "case", ROLES, "get"),
    ("diagnosis:case_status", "case", ROLES, "get"),
    ("diagnosis:case_create", None, ("Technician", "Admin"), "get"),
    ("diagnosis:smear_upload", "case", ("Technician", "Admin"), "get"),
    ("diagnosis:smear_image", "smear", ROLES, "get"),
    ("diagnosis:smear_thumbnail", "smear", ROLES, "get"),
    ("diagnosis:smear_retry", "smear", ("Technician", "Admin"), "post"),
    ("diagnosis:case_cancel", "case", ("Technician", "Admin"), "post"),
    ("diagnosis:patient_list", None, ROLES, "get"),
    ("diagnosis:patient_detail", "patient", ROLES, "get"),
    ("diagnosis:patient_create", None, ("Technician", "Admin"), "get"),
    ("diagnosis:model_cards", None, ROLES, "get"),
    ("diagnosis:model_card", ("screening",), ROLES, "get"),
    ("diagnosis:model_card_figure", ("screening", 0), ROLES, "get"),
]


def url_for(name, key, objects):
    """``key``: None (no argument), a fixture object's name (its pk), or a tuple of the URL's own arguments."""
    if isinstance(key, tuple):
        return reverse(name, args=key)
    return reverse(name, args=[objects[key].pk]) if key else reverse(name)


@pytest.mark.parametrize("name,key,allowed,method", PAGES)
def test_anonymous_is_sent_to_login(client, objects, name, key, allowed, method):
    url = url_for(name, key, objects)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize("name,key,allowed,method", PAGES)
def test_user_without_role_waits(client, objects, no_role_user, name, key, allowed, method):
    client.force_login(no_role_user)
    response = getattr(client, method)(url_for(name, key, objects))
    assert response.status_code == 302
    assert response.url == reverse("pending_role")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,key,allowed,method", PAGES)
def test_roles(client, objects, make_user, role, name, key, allowed, method):
    client.force_login(make_user(role))
    response = getattr(client, method)(url_for(name, key, objects))
    if role not in allowed:
        assert response.status_code == 403
    elif method == "post":
        assert response.status_code == 302  # retry redirects back to the case page
        assert response.url == objects["case"].get_absolute_url()
    else:
        assert response.status_code == 200


def test_media_is_not_publicly_served(client, objects):
    smear = objects["smear"]
    assert client.get(settings_media_url() + smear.image.name).status_code == 404


def settings_media_url():
    from django.conf import settings

    return settings.MEDIA_URL


def test_smear_image_served_with_original_content(client, pathologist, objects):
    client.force_login(pathologist)
    smear = objects["smear"]
    response = client.get(reverse("diagnosis:smear_image", args=[smear.pk]))
    assert b"".join(response.streaming_content) == smear.image.open("rb").read()
    assert smear.original_filename in response["Content-Disposition"]


def test_retry_requires_post(client, technician, objects):
    client.force_login(technician)
    assert client.get(reverse("diagnosis:smear_retry", args=[objects["smear"].pk])).status_code == 405


@pytest.mark.parametrize("next_url,goes_to", [
    ("/uploads/", "/uploads/"),  # the upload queue's own form
    ("//evil.example/", None), ("https://evil.example/", None), ("/\\evil.example", None),
    # Not a path: once taken for a URL pattern name (Django's redirect() tries reverse()), a server error.
    ("uploads", None), ("²", None), ("diagnosis:exports", None), ("<x>", None),
])
def test_retry_returns_only_to_a_page_of_the_portal(client, technician, objects, next_url, goes_to):
    client.force_login(technician)
    client.raise_request_exception = False
    smear = objects["smear"]
    response = client.post(reverse("diagnosis:smear_retry", args=[smear.pk]), {"next": next_url})
    assert response.status_code == 302
    assert response.url == (goes_to or smear.case.get_absolute_url())


def test_admin_pages(client, lab_admin, objects, technician):
    client.force_login(lab_admin)
    for model in ("patient", "case", "smear", "prediction"):
        assert client.get(reverse(f"admin:diagnosis_{model}_changelist")).status_code == 200
    assert client.get(reverse("admin:diagnosis_case_change", args=[objects["case"].pk])).status_code == 200
    assert client.get(reverse("admin:accounts_user_changelist")).status_code == 200
    assert client.get(reverse("admin:diagnosis_prediction_add")).status_code == 403
    client.force_login(technician)
    assert client.get(reverse("admin:diagnosis_case_changelist")).status_code == 302  # not staff

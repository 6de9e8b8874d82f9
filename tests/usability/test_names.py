"""Issue 15.5: people have names. Sign-up asks for the full name and an
optional title; the signer's name is shown on the case, report and audit trail."""
import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.formatting import signer_name
from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


def test_signup_asks_for_full_name_and_optional_title(client, django_user_model):
    page = client.get(reverse("account_signup")).content.decode()
    assert 'name="full_name"' in page and 'name="title"' in page
    response = client.post(reverse("account_signup"), {
        "email": "jane@lab.example", "password1": PASSWORD, "password2": PASSWORD,
        "full_name": "Jane Roe", "title": "Dr",
    })
    assert response.status_code == 302
    user = django_user_model.objects.get()
    assert (user.full_name, user.title, user.display_name) == ("Jane Roe", "Dr", "Dr Jane Roe")


def test_signup_without_a_full_name_is_refused(client, django_user_model):
    response = client.post(reverse("account_signup"), {
        "email": "anon@lab.example", "password1": PASSWORD, "password2": PASSWORD, "full_name": "",
    })
    assert response.status_code == 200
    assert not django_user_model.objects.exists()


def test_an_overlong_name_is_refused_with_its_limit(client, django_user_model):
    response = client.post(reverse("account_signup"), {
        "email": "long@lab.example", "password1": PASSWORD, "password2": PASSWORD, "full_name": "n" * 500,
    })
    assert "at most 150 characters" in response.content.decode()
    assert not django_user_model.objects.exists()


def test_an_account_without_a_name_is_shown_by_its_email(make_user):
    assert make_user("Pathologist", email="p@lab.example").display_name == "p@lab.example"


@pytest.fixture
def signed_out_by_dr_roe(reviewed_case, pathologist):
    pathologist.full_name, pathologist.title = "Jane Roe", "Dr"
    pathologist.save()
    services.sign_out(reviewed_case, pathologist, "Pre")
    reviewed_case.refresh_from_db()
    return reviewed_case


def test_case_page_names_the_signer_and_the_audit_trail_names_the_actors(path_client, signed_out_by_dr_roe):
    html = path_client.get(reverse("diagnosis:case_detail", args=[signed_out_by_dr_roe.pk])).content.decode()
    assert '<span data-signer>Dr Jane Roe</span>' in html
    trail = html.split("data-audit-trail")[1]
    assert "Dr Jane Roe" in trail


def test_report_names_the_signer(path_client, signed_out_by_dr_roe):
    html = path_client.get(reverse("diagnosis:case_report", args=[signed_out_by_dr_roe.pk])).content.decode()
    assert "Dr Jane Roe" in html
    assert signer_name(signed_out_by_dr_roe) == "Dr Jane Roe"

"""Issue 15.11 (and 15.1 in the admin): one "Accounts" section, rounded
probabilities, case state, final stage and a signed-out column and filter."""
import pytest
from django.urls import reverse

from diagnosis import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(client, make_user):
    user = make_user("Admin", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_admin_index_has_one_accounts_section_with_users_groups_and_email_addresses(admin_client_):
    response = admin_client_.get(reverse("admin:index"))
    names = [app["name"] for app in response.context["app_list"]]
    assert names.count("Accounts") == 1
    assert "Authentication and Authorization" not in names
    accounts = next(app for app in response.context["app_list"] if app["name"] == "Accounts")
    assert {m["object_name"] for m in accounts["models"]} >= {"User", "Group", "EmailAddress"}


def test_case_admin_lists_state_final_stage_and_signer(admin_client_, reviewed_case, pathologist):
    pathologist.full_name = "Jane Roe"
    pathologist.save()
    services.sign_out(reviewed_case, pathologist, "Pre")
    html = admin_client_.get(reverse("admin:diagnosis_case_changelist")).content.decode()
    assert "Signed out" in html and "Pre-B" in html and "by Jane Roe" in html


def test_case_admin_filters_signed_out_and_state(admin_client_, reviewed_case, pathologist, patient, technician):
    from diagnosis.models import Case

    Case.objects.create(patient=patient, accession_number="ACC-OPEN", created_by=technician)
    services.sign_out(reviewed_case, pathologist, "Pre")
    url = reverse("admin:diagnosis_case_changelist")
    signed = admin_client_.get(url, {"signed_out": "yes"}).context["cl"].result_list
    assert [c.accession_number for c in signed] == ["ACC-0001"]
    open_ = admin_client_.get(url, {"signed_out": "no"}).context["cl"].result_list
    assert [c.accession_number for c in open_] == ["ACC-OPEN"]
    by_state = admin_client_.get(url, {"state": "awaiting_classification"}).context["cl"].result_list
    assert [c.accession_number for c in by_state] == ["ACC-OPEN"]


def test_prediction_admin_rounds_probabilities(admin_client_, field):
    field("Pre", 0.812345)
    html = admin_client_.get(reverse("admin:diagnosis_prediction_changelist")).content.decode()
    assert "Pre-B 0.81" in html
    assert "0.812345" not in html and "0.8123" not in html


ADMIN_LISTS = ["diagnosis_patient", "diagnosis_case", "diagnosis_smear", "diagnosis_prediction", "diagnosis_auditevent",
               "diagnosis_caseaddendum", "diagnosis_rejectedupload", "accounts_user"]


@pytest.mark.parametrize("model", ADMIN_LISTS)
def test_an_admin_search_too_long_to_be_an_identifier_is_refused_with_a_message(admin_client_, case, model):
    """A pasted megabyte made SQLite refuse the LIKE pattern ("pattern too complex"): a server error."""
    admin_client_.raise_request_exception = False
    response = admin_client_.get(reverse(f"admin:{model}_changelist"), {"q": "a" * 60_000})
    assert response.status_code == 200
    assert "at most 200 characters" in response.content.decode()
    assert list(response.context["cl"].result_list) == []


def test_an_admin_search_of_ordinary_length_still_finds(admin_client_, case):
    response = admin_client_.get(reverse("admin:diagnosis_case_changelist"), {"q": case.accession_number})
    assert [c.pk for c in response.context["cl"].result_list] == [case.pk]


def test_the_patient_autocomplete_refuses_an_overlong_term_without_a_server_error(admin_client_, case):
    admin_client_.raise_request_exception = False
    response = admin_client_.get(reverse("admin:autocomplete"), {
        "term": "a" * 60_000, "app_label": "diagnosis", "model_name": "case", "field_name": "patient"})
    assert response.status_code == 200 and response.json()["results"] == []

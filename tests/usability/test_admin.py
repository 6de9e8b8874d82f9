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

"""Issue 15.1: the case's state and final stage wherever a case is listed,
with filters by state, final stage, date range and a search."""
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnosis import services
from diagnosis.models import Case, CaseState

pytestmark = pytest.mark.django_db


def state_of(case):
    return Case.objects.with_state().get(pk=case.pk).state


def test_state_follows_the_workflow_from_upload_to_addendum(case, field, pathologist):
    assert state_of(case) == CaseState.AWAITING_CLASSIFICATION
    smear = field("Pre")
    assert state_of(case) == CaseState.AWAITING_REVIEW
    services.review_smear(smear, pathologist, "Pre")
    assert state_of(case) == CaseState.IN_REVIEW
    services.sign_out(case, pathologist, "Pre")
    assert state_of(case) == CaseState.SIGNED_OUT
    services.add_addendum(case, pathologist, "Second look", "Pro")
    assert state_of(case) == CaseState.ADDENDUM
    assert case.state == CaseState.ADDENDUM  # the unannotated instance computes the same


def test_a_saved_final_stage_alone_puts_the_case_in_review(case, field, pathologist):
    field("Pre")
    services.set_final_stage(case, pathologist, "Pre")
    assert state_of(case) == CaseState.IN_REVIEW


def test_case_list_shows_state_and_final_stage_not_the_processing_status(path_client, reviewed_case, pathologist):
    services.sign_out(reviewed_case, pathologist, "Pre")
    page = path_client.get(reverse("diagnosis:case_list")).content.decode()
    assert 'data-case-state="signed_out"' in page
    assert "Signed out" in page
    assert "data-final-stage-badge" in page and "Pre-B" in page


def test_patient_history_shows_state_and_final_stage(path_client, reviewed_case, pathologist, patient):
    services.sign_out(reviewed_case, pathologist, "Pre")
    page = path_client.get(reverse("diagnosis:patient_detail", args=[patient.pk])).content.decode()
    assert 'data-case-state="signed_out"' in page and "data-final-stage-badge" in page


def test_case_page_shows_the_state(path_client, reviewed_case):
    page = path_client.get(reverse("diagnosis:case_detail", args=[reviewed_case.pk])).content.decode()
    assert 'data-case-state="in_review"' in page


@pytest.fixture
def three_cases(patient, technician, field, pathologist, case):
    """ACC-0001 signed out as Pre-B; ACC-0002 awaiting review, opened ten days ago; ACC-0003 empty."""
    field("Pre")
    services.review_smear(case.smears.get(), pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre")
    waiting = Case.objects.create(patient=patient, accession_number="ACC-0002", created_by=technician)
    field("Pro", case_=waiting)
    Case.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(days=10))
    Case.objects.create(patient=patient, accession_number="ACC-0003", created_by=technician)
    return case


def listed(client, **params):
    response = client.get(reverse("diagnosis:case_list"), params)
    assert response.status_code == 200
    return sorted(c.accession_number for c in response.context["object_list"])


def test_case_list_filters_by_state(path_client, three_cases):
    assert listed(path_client, state="signed_out") == ["ACC-0001"]
    assert listed(path_client, state="awaiting_review") == ["ACC-0002"]
    assert listed(path_client, state="awaiting_classification") == ["ACC-0003"]


def test_case_list_filters_by_final_stage(path_client, three_cases):
    assert listed(path_client, final="Pre") == ["ACC-0001"]
    assert listed(path_client, final="Pro") == []


def test_case_list_filters_by_date_range(path_client, three_cases):
    today = timezone.localdate()
    assert listed(path_client, created_from=str(today)) == ["ACC-0001", "ACC-0003"]
    assert listed(path_client, created_to=str(today - timedelta(days=5))) == ["ACC-0002"]


def test_case_list_searches_patient_or_accession_ignoring_spaces(path_client, three_cases):
    assert listed(path_client, q="  acc-0002 ") == ["ACC-0002"]
    assert listed(path_client, q="p-0001") == ["ACC-0001", "ACC-0002", "ACC-0003"]


def test_bad_filter_values_are_explained_not_a_server_error(path_client, three_cases):
    response = path_client.get(reverse("diagnosis:case_list"), {"state": "nonsense", "created_from": "31/02/2026"})
    assert response.status_code == 200
    assert "data-filter-errors" in response.content.decode()
    reversed_range = path_client.get(reverse("diagnosis:case_list"), {"created_from": "2026-02-01", "created_to": "2026-01-01"})
    assert "is after" in reversed_range.content.decode()
    assert len(reversed_range.context["object_list"]) == 3  # the broken range is ignored, nothing hidden

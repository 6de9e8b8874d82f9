"""Regression tests for holes found by the session-11 audit: a signed-out result
changed without a trace (the smear admin, a retried not-assessable smear, a
late worker result), admin case edits silently dropped, a double-submitted
addendum, and spreadsheet formulas in the export's labels.csv."""
import csv
import datetime

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from diagnosis import services
from diagnosis.models import AuditEvent, Case, CaseAddendum, Smear
from tests.portal_testutils import image_bytes
from tests.review.conftest import result

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_admin_client(client, make_user):
    """A lab Admin (staff, not superuser): the role the README's threat model names."""
    client.force_login(make_user("Admin", is_staff=True))
    return client


@pytest.fixture
def signed_with_failed_smear(classified, smear_factory, case, pathologist):
    """A signed-out case: one smear reviewed Pre, one failed smear set aside as not assessable."""
    reviewed = classified("Pre")
    services.review_smear(reviewed, pathologist, "Pre")
    failed = smear_factory(status="failed", error="worker crashed")
    services.mark_not_assessable(failed, pathologist, "Out of focus.")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL.")
    case.refresh_from_db()
    return case, reviewed, failed


def test_the_smear_admin_cannot_mark_a_signed_smear_not_assessable(signed_with_failed_smear, staff_admin_client):
    case, reviewed, _ = signed_with_failed_smear
    url = reverse("admin:diagnosis_smear_change", args=[reviewed.pk])
    staff_admin_client.post(url, {"not_assessable": "on", "not_assessable_reason": "hidden", "review_version": 9})
    reviewed.refresh_from_db()
    assert not reviewed.not_assessable and reviewed.not_assessable_reason == ""
    assert case.smears.filter(not_assessable=False).count() == 1


def test_the_smear_admin_shows_every_field_read_only(smear_factory, staff_admin_client):
    smear = smear_factory(status="failed")
    page = staff_admin_client.get(reverse("admin:diagnosis_smear_change", args=[smear.pk])).content.decode()
    assert 'name="not_assessable"' not in page and 'name="review_version"' not in page
    assert 'name="status"' not in page


def test_a_not_assessable_smear_is_not_retried_and_shows_no_retry_button(signed_with_failed_smear, case,
                                                                         pathologist, smear_factory, tech_client):
    open_case = Case.objects.create(patient=case.patient, accession_number="ACC-OPEN", created_by=case.created_by)
    failed = smear_factory(status="failed", case_=open_case, error="worker crashed")
    services.mark_not_assessable(failed, pathologist, "Smudged.")
    failed.refresh_from_db()
    assert not failed.can_retry
    response = tech_client.post(reverse("diagnosis:smear_retry", args=[failed.pk]), follow=True)
    assert "marked not assessable" in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == Smear.Status.FAILED
    assert not AuditEvent.objects.filter(smear=failed, action=AuditEvent.Action.RETRY).exists()


def test_the_sweep_leaves_a_not_assessable_smear_failed(case, smear_factory, pathologist):
    failed = smear_factory(status="failed", error="deadlock", transient_failure=True, attempts=1)
    services.mark_not_assessable(failed, pathologist, "Smudged.")
    services.sweep_stale_smears()
    failed.refresh_from_db()
    assert failed.status == Smear.Status.FAILED


def test_sign_out_waits_for_a_pending_smear_even_if_marked_not_assessable(classified, smear_factory, case,
                                                                          pathologist):
    services.review_smear(classified("Pre"), pathologist, "Pre")
    pending = smear_factory(status="failed")
    services.mark_not_assessable(pending, pathologist, "Smudged.")
    Smear.objects.filter(pk=pending.pk).update(status=Smear.Status.QUEUED)  # as the old retry hole left it
    assert "some smears are still being classified" in services.sign_out_problems(case)


def test_a_result_arriving_after_sign_out_is_not_stored(signed_with_failed_smear):
    case, _, failed = signed_with_failed_smear
    Smear.objects.filter(pk=failed.pk).update(status=Smear.Status.PROCESSING)  # a late worker's claim
    events_before = case.audit_events.filter(action=AuditEvent.Action.PREDICTION).count()
    assert services.record_prediction(failed.pk, result("Pro", 0.99), 5) is None
    failed.refresh_from_db()
    assert failed.status == Smear.Status.FAILED and "signed out" in failed.error
    assert not hasattr(failed, "prediction") or failed.prediction is None
    assert case.audit_events.filter(action=AuditEvent.Action.PREDICTION).count() == events_before


def admin_case_form(case, **changes):
    data = {"patient": case.patient_id, "accession_number": case.accession_number, "clinical_note": case.clinical_note,
            "specimen_type": case.specimen_type, "collection_date": "",
            "smears-TOTAL_FORMS": 0, "smears-INITIAL_FORMS": 0, "smears-MIN_NUM_FORMS": 0, "smears-MAX_NUM_FORMS": 0}
    data.update(changes)
    return data


def test_admin_edits_of_specimen_type_and_collection_date_are_saved_and_audited(case, staff_admin_client):
    url = reverse("admin:diagnosis_case_change", args=[case.pk])
    response = staff_admin_client.post(url, admin_case_form(case, specimen_type="bone_marrow",
                                                            collection_date="2026-11-20"))
    assert response.status_code == 302
    case.refresh_from_db()
    assert (case.specimen_type, case.collection_date) == ("bone_marrow", datetime.date(2026, 11, 20))
    changed = set(case.audit_events.filter(action=AuditEvent.Action.CASE_CHANGED).values_list("new_value", flat=True))
    assert "2026-11-20" in changed and len(changed) == 2


def test_the_admin_refuses_a_collection_date_in_the_future(case, staff_admin_client):
    tomorrow = (timezone.localdate() + datetime.timedelta(days=1)).isoformat()
    url = reverse("admin:diagnosis_case_change", args=[case.pk])
    response = staff_admin_client.post(url, admin_case_form(case, collection_date=tomorrow))
    assert response.status_code == 200 and "cannot be in the future" in response.content.decode()
    case.refresh_from_db()
    assert case.collection_date is None


def test_an_addendum_sent_twice_is_stored_once(signed_with_failed_smear, pathologist):
    case = signed_with_failed_smear[0]
    first = services.add_addendum(case, pathologist, "Flow cytometry: Pro-B.", "Pro")
    second = services.add_addendum(case, pathologist, "Flow cytometry: Pro-B.", "Pro")
    assert second.pk == first.pk and CaseAddendum.objects.filter(case=case).count() == 1
    assert case.audit_events.filter(action=AuditEvent.Action.ADDENDUM).count() == 1


def test_the_same_addendum_later_or_by_someone_else_is_a_new_one(signed_with_failed_smear, pathologist, make_user):
    case = signed_with_failed_smear[0]
    first = services.add_addendum(case, pathologist, "Morphology reviewed again.")
    services.add_addendum(case, make_user("Pathologist"), "Morphology reviewed again.")
    CaseAddendum.objects.filter(pk=first.pk).update(created_at=timezone.now() - datetime.timedelta(hours=1))
    services.add_addendum(case, pathologist, "Morphology reviewed again.")
    assert CaseAddendum.objects.filter(case=case).count() == 3


@pytest.mark.parametrize("value", ["=HYPERLINK(\"http://evil\")", "+1", "-2+3", "@SUM(A1)", "\tx"])
def test_the_spreadsheet_safe_cell_starts_a_formula_like_text_with_an_apostrophe(value):
    assert services.spreadsheet_safe(value) == "'" + value
    assert services.spreadsheet_safe("Pre") == "Pre" and services.spreadsheet_safe(1) == 1


def test_the_exported_labels_csv_has_no_formula_cells(classified, case, pathologist, tmp_path):
    pathologist.email = "=cmd|'/c calc'!A1@lab.example"
    pathologist.save()
    smear = classified("Pre")
    services.review_smear(smear, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "")
    call_command("export_reviewed", str(tmp_path / "export"))
    [row] = list(csv.DictReader((tmp_path / "export" / "staging" / "labels.csv").open()))
    assert row["reviewer"] == "'" + pathologist.email


def test_sex_and_birth_year_edited_after_sign_out_leave_the_signed_report(classified, case, pathologist, path_client):
    import io

    from pypdf import PdfReader

    patient = case.patient
    patient.sex, patient.birth_year = "F", 1971
    patient.save()
    smear = classified("Pre")
    services.review_smear(smear, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "")
    services.update_patient(patient, pathologist, sex="M", birth_year=1950)
    html = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    sex_row = html[html.index("<th>Sex</th>"):][:160]
    assert "Female" in sex_row and "1971" in sex_row and "1950" not in sex_row
    pdf = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk]))
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Female" in text and "1971" in text and "1950" not in text


def test_a_case_signed_before_the_copy_existed_shows_the_current_sex_and_birth_year(signed_with_failed_smear):
    case = signed_with_failed_smear[0]
    Case.objects.filter(pk=case.pk).update(signed_out_patient_sex="", signed_out_patient_birth_year=None)
    case.refresh_from_db()
    assert case.report_patient_sex_display == case.patient.get_sex_display()
    assert case.report_patient_birth_year == case.patient.birth_year


def test_sign_out_records_a_pending_heat_map_as_unavailable(signed_case):
    smear = signed_case.smears.get()  # its heat map was still being computed at sign-out
    assert smear.prediction.heatmap_error == services.HEATMAP_AFTER_SIGN_OUT
    assert services.claim_heatmap(smear.prediction.pk) is None  # no worker starts it any more


def test_a_heat_map_finished_after_sign_out_never_reaches_the_signed_report(signed_case, path_client, settings):
    from pathlib import Path

    case, smear = signed_case, signed_case.smears.get()
    stored_files = lambda: sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())  # noqa: E731
    files_before = stored_files()
    assert services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", seed=3)) is None
    assert stored_files() == files_before  # the refused file is deleted again
    smear.prediction.refresh_from_db()
    assert not smear.prediction.heatmap
    report = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "heat map unavailable" in report
    assert reverse("diagnosis:smear_heatmap", args=[smear.pk]) not in report
    assert path_client.get(reverse("diagnosis:smear_heatmap", args=[smear.pk])).status_code == 404


def test_a_heat_map_a_worker_was_computing_during_sign_out_is_refused(classified, case, pathologist):
    smear = classified("Pre")
    services.review_smear(smear, pathologist, "Pre")
    assert services.claim_heatmap(smear.prediction.pk) is not None  # a worker starts it before sign-out
    services.sign_out(case, pathologist, "Pre", "")
    assert services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", seed=3)) is None
    smear.prediction.refresh_from_db()
    assert not smear.prediction.heatmap and smear.prediction.heatmap_error == services.HEATMAP_AFTER_SIGN_OUT


def test_the_sweep_does_not_resend_a_signed_cases_heat_map(signed_case, monkeypatch):
    sent = []
    monkeypatch.setattr("diagnosis.services.recovery.enqueue_heatmap", lambda prediction: sent.append(prediction.pk) or True)
    later = timezone.now() + datetime.timedelta(days=1)
    assert services.resend_lost_heatmaps(now=later) == 0 and sent == []


def test_a_heat_map_stored_before_sign_out_stays_on_the_signed_report(classified, case, pathologist, path_client):
    smear = classified("Pre")
    services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", seed=3))
    services.review_smear(smear, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "")
    smear.prediction.refresh_from_db()
    assert smear.prediction.heatmap and smear.prediction.heatmap_error == ""
    report = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert reverse("diagnosis:smear_heatmap", args=[smear.pk]) in report

"""Review rules: confirm/override, locking after sign-out, addenda, the audit
trail and its immutability, the work queue's flags, the upload side."""
import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AppendOnlyError, AuditEvent, Case, RejectedUpload
from tests.portal_testutils import image_bytes, upload

pytestmark = pytest.mark.django_db


def actions(case):
    return list(AuditEvent.objects.filter(case=case).values_list("action", flat=True))


def test_confirm_and_override_are_audited(classified, case, pathologist):
    a, b = classified("Pre"), classified("Pro")
    services.review_smear(a, pathologist, "Pre")
    with pytest.raises(services.ReviewError, match="reason is required"):
        services.review_smear(b, pathologist, "Pre")
    services.review_smear(b, pathologist, "Pre", "Blasts with fine chromatin, typical of Pre-B.")
    confirm = AuditEvent.objects.get(case=case, action="confirm")
    override = AuditEvent.objects.get(case=case, action="override")
    assert (confirm.actor, confirm.old_value, confirm.new_value) == (pathologist, "Pre", "Pre")
    assert (override.old_value, override.new_value, override.smear) == ("Pro", "Pre", b)
    assert override.reason.startswith("Blasts") and override.model_version == "fake_model 0.0-test"
    b.refresh_from_db()
    assert b.review_label == "Pre" and b.reviewed_by == pathologist and b.is_overridden


def test_label_must_belong_to_the_models_label_set(classified, pathologist):
    smear = classified("Pre")
    with pytest.raises(services.ReviewError, match="not a label"):
        services.review_smear(smear, pathologist, "blast", "screening label on a staging smear")


def test_audit_covers_upload_prediction_review_signout_addendum(tech_client, case, pathologist, sent_messages):
    response = tech_client.post(
        reverse("diagnosis:smear_upload", args=[case.pk]),
        {"kind": "field", "images": [upload("good.png", image_bytes(seed=1)), upload("notes.txt", b"not an image")]},
    )
    assert response.status_code == 302
    smear = case.smears.get()
    assert services.claim_smear(smear.pk)
    from tests.review.conftest import result

    services.record_prediction(smear.pk, result("Early", 0.7), 5)
    smear.refresh_from_db()
    services.review_smear(smear, pathologist, "Pre", "Nucleoli visible.")
    services.sign_out(case, pathologist, "Pre", "Consistent with Pre-B ALL.")
    services.add_addendum(case, pathologist, "Flow cytometry says Pro-B.", "Pro")
    assert actions(case) == [
        "upload_rejected", "upload", "prediction", "override", "final_stage", "sign_out", "addendum",
    ]
    upload_event = AuditEvent.objects.get(case=case, action="upload")
    assert upload_event.actor == smear.uploaded_by and upload_event.smear == smear and smear.sha256 in upload_event.detail
    prediction_event = AuditEvent.objects.get(case=case, action="prediction")
    assert prediction_event.actor is None and prediction_event.new_value == "Early"
    assert prediction_event.model_version == "fake_model 0.0-test"
    addendum = AuditEvent.objects.get(case=case, action="addendum")
    assert (addendum.old_value, addendum.new_value) == ("Pre", "Pro")


def test_audit_events_are_append_only(classified, case, pathologist):
    smear = classified("Pre")
    services.review_smear(smear, pathologist, "Pre")
    event = AuditEvent.objects.get(action="confirm")
    event.reason = "rewritten history"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(reason="x")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    event.refresh_from_db()
    assert event.reason == ""


def test_sign_out_needs_every_smear_reviewed(classified, case, pathologist):
    a, b = classified("Pre"), classified("Pre")
    services.review_smear(a, pathologist, "Pre")
    with pytest.raises(services.ReviewError, match="not yet confirmed"):
        services.sign_out(case, pathologist, "Pre")
    services.review_smear(b, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "ok")
    case.refresh_from_db()
    assert case.signed_out_by == pathologist and case.signed_out_stage == "Pre" and case.final_stage == "Pre"


def test_signed_out_case_refuses_review_posts(path_client, signed_case):
    smear = signed_case.smears.get()
    before = AuditEvent.objects.count()
    r1 = path_client.post(reverse("diagnosis:smear_review", args=[smear.pk]), {"label": "Pro", "reason": "late change"})
    r2 = path_client.post(reverse("diagnosis:case_finalize", args=[signed_case.pk]), {"final_stage": "Pro", "action": "save"})
    r3 = path_client.post(
        reverse("diagnosis:case_finalize", args=[signed_case.pk]), {"final_stage": "Pro", "action": "sign_out"},
        HTTP_ACCEPT="application/json",
    )
    assert r1.status_code == 302 and r2.status_code == 302 and r3.status_code == 409
    smear.refresh_from_db()
    signed_case.refresh_from_db()
    assert smear.review_label == "Pre" and signed_case.final_stage == "Pre"
    assert AuditEvent.objects.count() == before
    with pytest.raises(services.CaseLocked):
        services.review_smear(smear, signed_case.signed_out_by, "Pro", "x")


def test_addenda_keep_the_original_sign_out(path_client, signed_case, make_user):
    second = make_user("Pathologist")
    original_time = signed_case.signed_out_at
    response = path_client.post(
        reverse("diagnosis:case_addendum", args=[signed_case.pk]),
        {"text": "Molecular results: Pro-B.", "final_stage": "Pro", "case_version": signed_case.review_version},
    )
    assert response.status_code == 302
    services.add_addendum(signed_case, second, "Typo in the comment; no change of stage.")
    signed_case.refresh_from_db()
    assert signed_case.final_stage == "Pro"
    assert signed_case.signed_out_stage == "Pre" and signed_case.signed_out_at == original_time
    assert signed_case.review_comment == "Pre-B ALL."
    first, later = signed_case.addenda.all()
    assert (first.previous_final_stage, first.new_final_stage) == ("Pre", "Pro")
    assert later.new_final_stage == "" and later.author == second
    with pytest.raises(AppendOnlyError):
        first.save()
    page = path_client.get(signed_case.get_absolute_url()).content.decode()
    assert "Molecular results: Pro-B." in page and "Signed out (locked)" in page and "Typo in the comment" in page


def test_addendum_refused_before_sign_out(classified, case, pathologist):
    classified("Pre")
    with pytest.raises(services.ReviewError, match="signed-out"):
        services.add_addendum(case, pathologist, "too early")


def test_queue_lists_awaiting_cases_oldest_first_with_flags(classified, smear_factory, patient, technician, settings):
    settings.REVIEW_LOW_CONFIDENCE_THRESHOLD = 0.6
    cases = [Case.objects.create(patient=patient, accession_number=f"Q-{i}", created_by=technician) for i in range(5)]
    classified("Pre", 0.9, case_=cases[0]); classified("Pre", 0.95, case_=cases[0])   # clean
    classified("Pro", 0.4, case_=cases[1])                                                 # low confidence
    classified("Pre", 0.9, case_=cases[2]); classified("Early", 0.8, case_=cases[2])    # disagreement
    classified("Pre", 0.9, case_=cases[3]); smear_factory(status="queued", case_=cases[3])  # still processing
    services.refresh_case(cases[3])
    # cases[4] has no smear
    entries = services.review_queue()
    assert [e.case.accession_number for e in entries if e.case.accession_number.startswith("Q-")] == ["Q-0", "Q-1", "Q-2"]
    by = {e.case.accession_number: e for e in entries}
    assert not by["Q-0"].flagged and by["Q-0"].min_confidence == pytest.approx(0.9)
    assert by["Q-1"].low_confidence and not by["Q-1"].disagreement
    assert by["Q-2"].disagreement and not by["Q-2"].low_confidence and by["Q-2"].stages == ["Early", "Pre"]


def test_queue_page_and_signed_out_cases_leave_it(path_client, classified, case, pathologist):
    smear = classified("Pro", 0.3)
    page = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert case.accession_number in page and 'data-flag="low"' in page
    services.review_smear(smear, pathologist, "Pro")
    services.sign_out(case, pathologist, "Pro")
    assert case.accession_number not in path_client.get(reverse("diagnosis:review_queue")).content.decode()


def test_review_page_shows_heatmap_or_unavailable(path_client, classified, case):
    a, b = classified("Pre"), classified("Pre")
    services.store_heatmap(a.prediction.pk, image_bytes("JPEG", seed=3))
    services.heatmap_failed(b.prediction.pk, "Heat map unavailable: RuntimeError: boom")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert reverse("diagnosis:smear_heatmap", args=[a.pk]) in page
    assert page.count("heat map unavailable") == 1
    assert path_client.get(reverse("diagnosis:smear_heatmap", args=[a.pk])).status_code == 200
    assert path_client.get(reverse("diagnosis:smear_heatmap", args=[b.pk])).status_code == 404


def test_rejected_uploads_are_persisted_and_shown(tech_client, technician, case):
    tech_client.post(
        reverse("diagnosis:smear_upload", args=[case.pk]),
        {"kind": "field", "images": [upload("scan.txt", b"hello"), upload("ok.png", image_bytes(seed=7))]},
    )
    rejected = RejectedUpload.objects.get()
    assert (rejected.filename, rejected.uploaded_by, rejected.case) == ("scan.txt", technician, case)
    assert "not an image" in rejected.reason
    page = tech_client.get(reverse("diagnosis:upload_queue")).content.decode()
    assert "scan.txt" in page and "not an image" in page and "ok.png" in page
    assert "scan.txt" in tech_client.get(case.get_absolute_url()).content.decode()


def test_upload_queue_status_json_and_retry_returns_to_queue(tech_client, technician, smear_factory, make_user):
    mine = smear_factory(status="failed", error="boom")
    theirs = smear_factory(status="queued")
    type(theirs).objects.filter(pk=theirs.pk).update(uploaded_by=make_user("Technician"))
    data = tech_client.get(reverse("diagnosis:upload_queue_status")).json()
    assert [s["id"] for s in data["smears"]] == [mine.pk] and data["smears"][0]["can_retry"]
    response = tech_client.post(reverse("diagnosis:smear_retry", args=[mine.pk]), {"next": reverse("diagnosis:upload_queue")})
    assert response.url == reverse("diagnosis:upload_queue")
    assert AuditEvent.objects.filter(action="retry", actor=technician).exists()


def test_signed_out_case_takes_no_more_smears(tech_client, signed_case):
    response = tech_client.post(
        reverse("diagnosis:smear_upload", args=[signed_case.pk]), {"kind": "field", "images": [upload("late.png", image_bytes(seed=9))]}
    )
    assert response.status_code == 302
    assert signed_case.smears.count() == 1
    assert not AuditEvent.objects.filter(case=signed_case, action="upload", smear__original_filename="late.png").exists()

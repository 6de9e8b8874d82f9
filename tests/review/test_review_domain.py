"""Smears the model cannot judge (outside its domain) and smears the pathologist marks not assessable:
no suggestion is shown, they count nowhere, and every step is audited."""
import io

import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case
from tests.review.conftest import result
from tests.screening.conftest import cell  # noqa: F401
from tests.portal_testutils import exported_zip_names

pytestmark = pytest.mark.django_db

REASON = "looks like a single segmented cell, not a blood-smear field: upload it as a single cell"


@pytest.fixture
def outside(smear_factory, case):
    """outside(stage="Pro", confidence=0.99) -> a field the model classified but judged outside its domain."""

    def make(stage="Pro", confidence=0.99, case_=None):
        smear = smear_factory(status="processing", case_=case_ or case)
        services.record_prediction(smear.pk, {**result(stage, confidence), "in_domain": False, "domain_score": 0.0009,
                                              "reason": REASON}, 5)
        smear.refresh_from_db()
        return smear

    return make


def test_the_verdict_is_stored_with_the_prediction_and_audited(outside, case):
    smear = outside()
    prediction = smear.prediction
    assert (prediction.in_domain, prediction.domain_reason) == (False, REASON)
    assert prediction.domain_score == pytest.approx(0.0009)
    assert prediction.label == "Pro"  # kept for transparency
    event = AuditEvent.objects.get(case=case, action="prediction")
    assert "outside the model's domain" in event.detail and REASON in event.detail


def test_a_result_without_a_verdict_is_refused(smear_factory):
    smear = smear_factory(status="processing")
    bare = {k: v for k, v in result("Pre").items() if k not in ("in_domain", "domain_score")}
    with pytest.raises(services.InvalidModelOutput, match="domain"):
        services.record_prediction(smear.pk, bare, 5)


def test_an_outside_smear_is_left_out_of_the_suggestion(classified, outside, case):
    classified("Early", 0.7)
    outside("Pro", 0.99)
    case.refresh_from_db()
    assert (case.suggested_stage, case.compute_suggestion()[2]) == ("Early", 1)


def test_the_case_page_shows_no_stage_for_an_outside_smear(outside, classified, tech_client, case):
    out, inside = outside(), classified("Early")
    page = tech_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    card = page[page.index(f'data-smear="{out.pk}"'):page.index(f'data-smear="{inside.pk}"')]
    assert "Outside the model's domain: no suggestion" in card
    assert "Looks like a single segmented cell" in card
    assert "stage-badge stage-Pro" not in card
    assert 'data-field="probs" hidden' in card
    status = tech_client.get(reverse("diagnosis:case_status", args=[case.pk])).json()
    item = next(i for i in status["smears"] if i["id"] == out.pk)
    assert (item["in_domain"], item["domain_reason"]) == (False, REASON)


def test_the_review_queue_flags_a_case_with_an_outside_smear(outside, classified, path_client, case):
    classified("Pre")
    outside()
    [entry] = services.review_queue()
    assert entry.outside_domain == 1 and entry.flagged
    page = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert 'data-flag="outside-domain"' in page


def test_the_review_screen_asks_the_pathologist_to_judge_without_a_suggestion(outside, path_client, pathologist, case):
    smear = outside()
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "data-outside-domain-panel" in page and "(model)" not in page
    # No suggestion to argue against: labelling it needs no reason.
    services.review_smear(smear, pathologist, "Early")
    smear.refresh_from_db()
    assert smear.review_label == "Early"


def test_outside_cells_are_not_screened(cell, case):
    from tests.screening.conftest import screening_result

    cell(0.9)
    smear = cell(0.2)
    other = case.smears.create(kind="cell", sha256="f" * 64, width=1, height=1, image_format="PNG", size_bytes=1,
                               original_filename="x.png", uploaded_by=case.created_by, status="processing",
                               image="smears/x.png")
    services.record_prediction(other.pk, {**screening_result(0.99), "in_domain": False, "domain_score": 0.0,
                                          "reason": "blank or nearly uniform image"}, 5)
    summary = case.screening_summary()
    assert (summary["cells"], summary["screened"], summary["flagged"], summary["outside_domain"]) == (3, 2, 1, 1)
    assert "1 of 2 cells flagged by the screen" in services.screening_summary_text(case, reviewed=False)
    assert smear.prediction.in_domain


# --------------------------------------------------------------------------- not assessable

def mark(client, smear, reason="Out of focus, no cell detail visible."):
    return client.post(reverse("diagnosis:smear_assessable", args=[smear.pk]),
                       {"action": "not_assessable", "reason": reason})


def test_not_assessable_needs_a_reason_and_is_audited(classified, path_client, pathologist, case):
    smear = classified("Pre")
    mark(path_client, smear, reason="  ")
    smear.refresh_from_db()
    assert not smear.not_assessable
    assert mark(path_client, smear).status_code == 302
    smear.refresh_from_db()
    assert smear.not_assessable and smear.not_assessable_by == pathologist
    event = AuditEvent.objects.get(case=case, action="not_assessable")
    assert (event.actor, event.smear, event.reason) == (pathologist, smear, "Out of focus, no cell detail visible.")


def test_a_technician_cannot_mark_not_assessable(classified, tech_client):
    smear = classified("Pre")
    assert mark(tech_client, smear).status_code == 403
    smear.refresh_from_db()
    assert not smear.not_assessable


def test_sign_out_needs_no_review_of_a_not_assessable_smear(classified, outside, path_client, pathologist, case):
    good, bad = classified("Pre"), outside()
    services.review_smear(good, pathologist, "Pre")
    assert any("not yet confirmed" in p for p in services.sign_out_problems(case))
    mark(path_client, bad)
    assert services.sign_out_problems(case) == []
    services.sign_out(case, pathologist, "Pre")
    case.refresh_from_db()
    assert case.is_signed_out
    # Locked after sign-out, like every review action.
    response = mark(path_client, good)
    good.refresh_from_db()
    assert not good.not_assessable and response.status_code == 302


def test_a_failed_smear_can_be_marked_not_assessable(smear_factory, classified, pathologist, case):
    classified("Pre")
    failed = smear_factory(status="failed", error="unreadable")
    assert any("failed" in p for p in services.sign_out_problems(case))
    services.mark_not_assessable(failed, pathologist, "Corrupt file; slide re-imaged as another smear.")
    assert not any("failed" in p for p in services.sign_out_problems(case))


def test_mark_assessable_again_is_audited_and_needs_review(classified, pathologist, case):
    smear = classified("Pre")
    services.mark_not_assessable(smear, pathologist, "Smudged")
    services.mark_assessable(smear, pathologist)
    smear.refresh_from_db()
    assert not smear.not_assessable
    assert list(AuditEvent.objects.filter(case=case, smear=smear).values_list("action", flat=True))[-2:] == [
        "not_assessable", "assessable"]


def test_not_assessable_leaves_the_suggestion(classified, pathologist, case):
    classified("Pre", 0.9)
    pro = classified("Pro", 0.99)
    services.mark_not_assessable(pro, pathologist, "Wrong slide")
    case.refresh_from_db()
    assert case.suggested_stage == "Pre"


def test_report_and_export_respect_not_assessable_and_outside(classified, outside, path_client, pathologist, case):
    good, out, bad = classified("Pre"), outside(), classified("Early")
    services.review_smear(good, pathologist, "Pre")
    services.review_smear(out, pathologist, "Pre")
    services.mark_not_assessable(bad, pathologist, "Stain precipitate over every cell")
    services.sign_out(case, pathologist, "Pre")
    html = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "data-report-not-assessable" in html and "Stain precipitate over every cell" in html
    assert "data-outside-domain" in html
    from pypdf import PdfReader

    pdf = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk]))
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages).split())
    assert "Not assessable" in text and "Stain precipitate over every cell" in text
    assert "Outside the model's domain: no suggestion" in text
    names = exported_zip_names(path_client)
    exported = [n for n in names if n.endswith(".png")]
    assert len(exported) == 2 and not any(f"-{bad.pk}." in n for n in exported)


def test_dashboard_leaves_outside_smears_out_of_agreement(classified, outside, pathologist, case):
    good, out = classified("Pre"), outside("Pro")
    services.review_smear(good, pathologist, "Pre")
    services.review_smear(out, pathologist, "Early")
    services.sign_out(case, pathologist, "Pre")
    stats = services.agreement_stats(kind="field")
    assert (stats["n"], stats["agree"], stats["outside_domain"]) == (1, 1, 1)
    assert Case.objects.get(pk=case.pk).is_signed_out


def test_confirm_all_remaining_leaves_outside_and_not_assessable_smears_to_the_pathologist(
        classified, outside, pathologist, case):
    plain, out, skipped = classified("Pre"), outside(), classified("Early")
    services.mark_not_assessable(skipped, pathologist, "Smudged")
    events = services.confirm_remaining(case, pathologist)
    assert [e.smear for e in events] == [plain]
    out.refresh_from_db()
    skipped.refresh_from_db()
    assert out.review_label == "" and skipped.review_label == ""

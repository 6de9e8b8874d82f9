"""What the review pages say about a smear, found wrong by a QA walk-through and kept right here:
a smear outside the model's domain is the pathologist's own call (no note needed, no "changed", no hidden model
label in the audit trail); the gallery words answers as every other page does; a not-assessable smear still shows
the model's label; a signed-out case shows the patient as signed out; confirm-all leaves flagged cells to be looked
at; a draft keeps its comment without a stage; messages and the audit trail use names, not codes."""
import pytest
from django.urls import reverse

from diagnosis import selectors, services
from diagnosis.models import AuditEvent, Case
from tests.review.test_review_domain import outside  # noqa: F401
from tests.screening.conftest import cell  # noqa: F401

pytestmark = pytest.mark.django_db


def test_labelling_a_smear_outside_the_domain_needs_no_note_and_is_recorded_as_the_pathologists_own_call(
        outside, pathologist, path_client, case):
    smear = outside("Pro", 0.99)
    event = services.review_smear(smear, pathologist, "Early")
    assert (event.action, event.old_value, event.new_value) == (AuditEvent.Action.LABELLED, "", "Early")
    smear.refresh_from_db()
    assert smear.review_state == "labelled"
    page = path_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    assert "own label, no model suggestion" in page and "changed:" not in page
    review = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "own label (no suggestion)" in review and ">changed<" not in review and ">confirmed<" not in review


def test_the_same_label_as_the_hidden_model_output_is_not_called_confirmed(outside, pathologist):
    smear = outside("Pro", 0.99)
    assert services.review_smear(smear, pathologist, "Pro").action == AuditEvent.Action.LABELLED
    smear.refresh_from_db()
    assert smear.review_state == "labelled"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_in_the_browser_save_label_needs_no_note_outside_the_domain_and_a_reason_for_a_change(
        browser_page, live_server, outside, classified, pathologist, case):
    from tests.portal_testutils import browser_login

    out, inside = outside("Pro", 0.99), classified("Pre")
    page = browser_page
    browser_login(page, live_server.url, pathologist)
    page.goto(live_server.url + reverse("diagnosis:case_review", args=[case.pk]))
    form = page.locator(f"#smear-{out.pk} form[data-review-form]")
    form.locator("select[name=label]").select_option("Early")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    out.refresh_from_db()
    assert out.review_label == "Early" and out.review_state == "labelled"
    form = page.locator(f"#smear-{inside.pk} form[data-review-form]")
    form.locator("select[name=label]").select_option("Pro")
    assert form.locator("textarea[name=reason]").evaluate("box => box.required")  # a change of the model's label


def test_the_audit_trail_shows_no_label_for_a_prediction_outside_the_domain(outside, classified, case):
    outside("Pro", 0.99)
    classified("Early")
    changes = [selectors.audit_change_display(e) for e in
               case.audit_events.filter(action="prediction").select_related("smear__prediction").order_by("pk")]
    assert changes == [("", "Outside the model's domain (no suggestion)"), ("", "Early Pre-B")]


def test_the_gallery_words_each_answer_as_the_other_pages(outside, classified, cell, path_client, case):
    outside("Pro", 0.99)
    classified("Pre", 0.8)
    cell(0.9)
    cell(0.05)
    page = path_client.get(reverse("diagnosis:case_gallery", args=[case.pk])).content.decode()
    models = [chunk.split("</div>")[0] for chunk in page.split("data-gallery-model>")[1:]]
    assert "Outside the model's domain" in models[0] and "Pro-B" not in models[0]
    assert "Pre-B" in models[1] and "0.80" in models[1]
    assert "flagged for review" in models[2] and "Blast" not in models[2]
    assert "not flagged" in models[3] and "Normal" not in models[3]


def test_a_smear_marked_not_assessable_still_shows_the_models_label_on_the_review_screen(
        classified, make_user, client, case):
    pathologist = make_user("Pathologist", full_name="Paula Path", title="Dr")
    path_client = client
    path_client.force_login(pathologist)
    smear = classified("Pre", 0.97)
    services.mark_not_assessable(smear, pathologist, "Out of focus.")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    label_line = page[page.index("Model label"):][:400]
    assert "Pre-B" in label_line and "Not assessable" not in label_line
    state = page[page.index("data-not-assessable-state"):][:600]
    assert pathologist.display_name in state and pathologist.email not in state  # a name and a zoned time
    assert " UTC" in state or " CET" in state


def test_a_signed_out_case_shows_the_patient_as_signed_out(signed_case, lab_admin, path_client):
    services.update_patient(signed_case.patient, lab_admin, birth_year=1981)
    page = path_client.get(reverse("diagnosis:case_detail", args=[signed_case.pk])).content.decode()
    assert "born 1984" in page and "born 1981" not in page and "(as at sign-out)" in page


def test_confirm_all_remaining_leaves_the_cells_the_screen_flagged(cell, pathologist, path_client, case):
    flagged, passed = cell(0.9), cell(0.05)
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "Confirm all remaining (1)" in page and "1 cell flagged by the screen: review each one" in page
    events = services.confirm_remaining(case, pathologist)
    assert [e.smear_id for e in events] == [passed.pk]
    flagged.refresh_from_db()
    assert flagged.review_label == "" and selectors.flagged_cells_awaiting_review(case) == 1
    second = cell(0.8)
    services.mark_not_assessable(second, pathologist, "Two cells overlap.")
    assert selectors.flagged_cells_awaiting_review(case) == 1  # set aside: nothing more to review
    services.review_smear(flagged, pathologist, "blast")
    assert selectors.flagged_cells_awaiting_review(case) == 0
    assert "flagged by the screen: review each one" not in path_client.get(
        reverse("diagnosis:case_review", args=[case.pk])).content.decode()


def test_a_draft_keeps_its_comment_while_the_final_stage_is_still_open(classified, pathologist, path_client, case):
    services.review_smear(classified("Pre"), pathologist, "Pre")
    response = path_client.post(reverse("diagnosis:case_finalize", args=[case.pk]),
                                {"action": "save", "final_stage": "", "comment": "Waiting for flow cytometry.",
                                 "case_version": Case.objects.get(pk=case.pk).review_version})
    assert response.status_code == 302
    case.refresh_from_db()
    assert (case.final_stage, case.review_comment) == ("", "Waiting for flow cytometry.")
    with pytest.raises(services.ReviewError, match="Choose a final stage among Benign, Early Pre-B, Pre-B, Pro-B"):
        services.sign_out(case, pathologist, "", "")


def test_messages_name_stages_and_people_not_codes_and_addresses(classified, make_user, pathologist, case):
    smear = classified("Pre")
    colleague = make_user("Pathologist", full_name="Ada Colleague")
    services.review_smear(smear, colleague, "Pre")
    with pytest.raises(services.ReviewConflict, match="Ada Colleague reviewed this smear meanwhile"):
        services.review_smear(smear, pathologist, "Pro", "Other view.", expected_version=0)
    with pytest.raises(services.ReviewError, match=r"\(Benign, Early Pre-B, Pre-B, Pro-B\)"):
        services.review_smear(smear, pathologist, "Stage-X", "Why not.")
    with pytest.raises(services.ReviewError, match="Choose a label"):
        services.review_smear(smear, pathologist, "", "")


def test_the_audit_trail_quotes_a_clinical_note_as_text(technician, patient):
    from diagnosis.models import Case

    case = Case.objects.create(patient=patient, accession_number="ACC-Q1", created_by=technician,
                               clinical_note="Line one\nline 'two'")
    event = services.record_case_opened(case, technician)
    assert event.detail == "Patient P-0001; clinical note: “Line one\nline 'two'”"


def test_the_queue_the_report_and_the_admin_name_stages_and_round_confidences(
        classified, pathologist, path_client, client, lab_admin, case):
    classified("Early", 0.6545242675169715)
    classified("Pre", 0.97)
    queue = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert "smears disagree (Early Pre-B, Pre-B)" in queue
    report = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "Early Pre-B 0.65" in report and "Early 0." not in report
    services.set_final_stage(case, pathologist, "Early")
    case.refresh_from_db()
    client.force_login(lab_admin)
    admin_page = client.get(reverse("admin:diagnosis_case_change", args=[case.pk])).content.decode()
    assert str(case.suggested_confidence) not in admin_page and f"{case.suggested_confidence:.2f}" in admin_page
    assert '<div class="readonly">Early Pre-B</div>' in admin_page


def test_the_pdf_report_names_who_marked_a_smear_not_assessable(classified, make_user, path_client, case):
    from io import BytesIO

    from pypdf import PdfReader

    person = make_user("Pathologist", full_name="Paula Path", title="Dr")
    services.mark_not_assessable(classified("Pre"), person, "Out of focus.")
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk]))
    text = "".join(page.extract_text() for page in PdfReader(BytesIO(b"".join(response.streaming_content
                                                                             if response.streaming else
                                                                             [response.content]))).pages)
    assert "Dr Paula Path" in text and person.email not in text


def test_the_report_of_a_case_without_images_says_so_instead_of_an_empty_table(path_client, case):
    page = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "No image was classified in this case." in page and "<th>Final label</th>" not in page


def test_the_queue_says_when_a_case_opened_and_since_when_it_is_ready(classified, path_client, case):
    import datetime

    from django.utils import timezone

    from diagnosis.models import Case, Prediction

    old = timezone.now() - datetime.timedelta(days=3)
    Case.objects.filter(pk=case.pk).update(created_at=old)
    smear = classified("Pre")
    entry = selectors.review_queue()[0]
    assert entry.ready_since == Prediction.objects.get(smear=smear).created_at > old
    page = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert "<th class=\"hide-on-phone\">Ready since</th>" in page and "data-ready-since" in page


def test_a_signed_out_review_page_asks_for_nothing_more(signed_case, path_client):
    page = path_client.get(reverse("diagnosis:case_review", args=[signed_case.pk])).content.decode()
    assert "changes go through an addendum" in page and "Confirm or reclassify every smear" not in page


# ---- a second QA pass ---------------------------------------------------------------------------------------------

def test_a_prediction_outside_the_domain_never_gets_a_heat_map_from_the_sweep_or_a_worker(outside, settings,
                                                                                        monkeypatch):
    import datetime

    from django.utils import timezone

    from diagnosis import tasks

    smear = outside("Pro", 0.99)
    sent = []
    monkeypatch.setattr(services.recovery, "enqueue_heatmap", lambda prediction: sent.append(prediction.pk) or True)
    later = timezone.now() + datetime.timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 60)
    assert services.resend_lost_heatmaps(now=later) == 0 and sent == []
    assert services.claim_heatmap(smear.prediction.pk) is None
    assert tasks.compute_heatmap(smear.prediction.pk) == "skipped"


def test_a_heat_map_stored_for_a_prediction_outside_the_domain_is_never_shown(outside, path_client, pathologist,
                                                                           case):
    from django.core.files.base import ContentFile

    from tests.portal_testutils import image_bytes

    smear = outside("Pro", 0.99)
    prediction = smear.prediction
    prediction.heatmap.save("old.jpg", ContentFile(image_bytes("JPEG", seed=2)))  # made before this was fixed
    review = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "where blurring lowers" not in review and "no heat map (outside the model&#x27;s domain)" in review
    assert path_client.get(reverse("diagnosis:smear_heatmap", args=[smear.pk])).status_code == 404
    report = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert reverse("diagnosis:smear_heatmap", args=[smear.pk]) not in report
    services.review_smear(smear, pathologist, "Pro")
    services.sign_out(case, pathologist, "Pro", "")
    prediction.refresh_from_db()
    assert prediction.heatmap_error == ""  # not "signed out before it was ready": it never was to be made


def test_an_image_also_in_another_patients_case_is_flagged_to_the_pathologist_and_not_confirmed_in_bulk(
        classified, technician, path_client, pathologist, case):
    from diagnosis.models import Case, Patient, Smear

    mine = classified("Pre")
    other_patient = Patient.objects.create(lab_id="P-0002", sex="M", birth_year=1990, created_by=technician)
    other_case = Case.objects.create(patient=other_patient, accession_number="ACC-0002", created_by=technician)
    twin = classified("Pre", case_=other_case)
    Smear.objects.filter(pk=twin.pk).update(sha256=mine.sha256)
    single = classified("Early")
    assert selectors.images_in_other_patients_cases(case) == {mine.pk: ["ACC-0002 (patient P-0002)"]}
    for url in (reverse("diagnosis:case_review", args=[case.pk]), case.get_absolute_url()):
        page = path_client.get(url).content.decode()
        assert page.count("data-also-in") == 1 and "The same image is in ACC-0002 (patient P-0002)" in page
    queue = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert "1 image also in another patient&#x27;s case" in queue or "1 image also in another patient's case" in queue
    assert [s.pk for s in selectors.confirmable_smears(case)] == [single.pk]


def test_the_review_page_of_a_cancelled_case_sends_to_the_case_page(technician, path_client, case):
    services.cancel_case(case, technician, "Opened twice.")
    response = path_client.get(reverse("diagnosis:case_review", args=[case.pk]), follow=True)
    assert response.redirect_chain[-1][0] == case.get_absolute_url()
    assert "was cancelled: there is nothing to review" in response.content.decode()


def test_once_labelled_a_smear_outside_the_domain_is_no_longer_asked_for(outside, pathologist, path_client, case):
    smear = outside("Pro", 0.99)
    before = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "1 smear outside the model" in before
    services.review_smear(smear, pathologist, "Benign", "Looks reactive.")
    after = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "1 smear outside the model" not in after
    report = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "Note: Looks reactive." in report and "Reason: Looks reactive." not in report

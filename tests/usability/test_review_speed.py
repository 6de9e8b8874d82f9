"""Issue 15.4: review speed: confirm all remaining (each smear audited),
next case in queue after sign-out, a gallery of the case's smears.
(The keyboard shortcuts are walked in tests/review/test_review_browser.py.)"""
import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case

pytestmark = pytest.mark.django_db


def test_confirm_all_remaining_confirms_each_unreviewed_smear_with_its_own_audit_event(path_client, case, field, cell, pathologist):
    changed = field("Pre")
    services.review_smear(changed, pathologist, "Pro", "blasts look pro-B")
    others = [field("Early"), cell(0.05)]
    flagged = cell(0.9)  # a cell the screen flagged is looked at one by one
    case.refresh_from_db()
    response = path_client.post(reverse("diagnosis:case_confirm_remaining", args=[case.pk]),
                                {"case_version": case.review_version}, follow=True)
    assert "2 smears confirmed" in response.content.decode()
    assert "1 smear still needs your own judgement (cells flagged by the screen" in response.content.decode()
    flagged.refresh_from_db()
    assert flagged.review_label == ""
    for smear in others:
        smear.refresh_from_db()
        assert smear.review_label == smear.prediction.label and smear.reviewed_by == pathologist
    changed.refresh_from_db()
    assert changed.review_label == "Pro"  # an earlier decision is kept
    confirms = AuditEvent.objects.filter(case=case, action=AuditEvent.Action.CONFIRM)
    assert sorted(e.smear_id for e in confirms) == sorted(s.pk for s in others)


def test_confirm_all_remaining_is_refused_on_a_signed_out_case(path_client, reviewed_case, pathologist, field):
    services.sign_out(reviewed_case, pathologist, "Pre")
    reviewed_case.refresh_from_db()
    response = path_client.post(reverse("diagnosis:case_confirm_remaining", args=[reviewed_case.pk]),
                                {"case_version": reviewed_case.review_version}, follow=True)
    assert "signed out" in response.content.decode()
    assert not AuditEvent.objects.filter(case=reviewed_case, action=AuditEvent.Action.CONFIRM).exclude(
        smear__in=reviewed_case.smears.all()).exists()


def test_confirm_all_remaining_needs_the_review_permission(tech_client, case, field):
    field("Pre")
    assert tech_client.post(reverse("diagnosis:case_confirm_remaining", args=[case.pk])).status_code == 403
    assert not case.smears.exclude(review_label="").exists()


def test_review_screen_offers_confirm_all_and_the_shortcut_help(path_client, case, field):
    field("Pre")
    field("Pro")
    html = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "Confirm all remaining (2)" in html
    assert "data-shortcut-help" in html and "review_keys.js" in html


def test_after_sign_out_the_case_page_offers_the_next_case_in_queue(path_client, reviewed_case, patient, technician, field):
    waiting = Case.objects.create(patient=patient, accession_number="ACC-NEXT", created_by=technician)
    field("Pro", case_=waiting)
    response = path_client.post(
        reverse("diagnosis:case_finalize", args=[reviewed_case.pk]),
        {"final_stage": "Pre", "action": "sign_out", "case_version": reviewed_case.review_version}, follow=True,
    )
    html = response.content.decode()
    assert "signed out as Pre-B" in html
    assert f'href="{reverse("diagnosis:case_review", args=[waiting.pk])}" data-next-case' in html


def test_no_next_case_link_when_the_queue_is_empty(path_client, reviewed_case, pathologist):
    services.sign_out(reviewed_case, pathologist, "Pre")
    html = path_client.get(reverse("diagnosis:case_detail", args=[reviewed_case.pk])).content.decode()
    assert "data-next-case" not in html


def test_gallery_shows_every_smear_with_model_and_pathologist_labels(tech_client, reviewed_case, field, cell):
    field("Pro")
    cell(0.9)
    response = tech_client.get(reverse("diagnosis:case_gallery", args=[reviewed_case.pk]))
    html = response.content.decode()
    assert html.count("data-gallery-item=") == 3
    assert html.count("data-gallery-reviewed") == 1
    assert "Pro-B" in html and "flagged for review" in html  # the model's answers, worded as everywhere


def test_gallery_needs_a_role(client, no_role_user, case):
    client.force_login(no_role_user)
    assert client.get(reverse("diagnosis:case_gallery", args=[case.pk])).url == reverse("pending_role")

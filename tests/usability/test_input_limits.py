"""Issue 15.3: every free text is bounded and every field says its limit."""
import pytest
from django.urls import reverse

from diagnosis import models, services
from diagnosis.models import Case

pytestmark = pytest.mark.django_db


def test_a_clinical_note_over_the_limit_is_refused_with_the_limit(tech_client, patient):
    response = tech_client.post(
        reverse("diagnosis:case_create"),
        {"patient": patient.pk, "accession_number": "ACC-9", "specimen_type": "peripheral_blood",
         "clinical_note": "x" * 108_000},
    )
    assert response.status_code == 200
    assert f"at most {models.CLINICAL_NOTE_MAX_LENGTH} characters" in response.content.decode()
    assert not Case.objects.exists()


def test_case_form_says_each_limit(tech_client):
    page = tech_client.get(reverse("diagnosis:case_create")).content.decode()
    assert f"Up to {models.CLINICAL_NOTE_MAX_LENGTH} characters" in page
    assert f'maxlength="{models.CLINICAL_NOTE_MAX_LENGTH}"' in page
    assert f"Up to {models.IDENTIFIER_MAX_LENGTH} characters" in page


def test_patient_form_says_the_identifier_limit(tech_client):
    page = tech_client.get(reverse("diagnosis:patient_create")).content.decode()
    assert f"up to {models.IDENTIFIER_MAX_LENGTH} characters" in page


def test_an_overlong_review_reason_is_refused_and_the_smear_stays_unreviewed(path_client, field):
    smear = field("Pre")
    response = path_client.post(
        reverse("diagnosis:smear_review", args=[smear.pk]), {"label": "Pro", "reason": "r" * 5000}, follow=True
    )
    assert f"the limit is {models.REVIEW_REASON_MAX_LENGTH:,} characters" in response.content.decode()
    smear.refresh_from_db()
    assert smear.review_label == ""


def test_an_overlong_sign_out_comment_is_refused(path_client, reviewed_case):
    response = path_client.post(
        reverse("diagnosis:case_finalize", args=[reviewed_case.pk]),
        {"final_stage": "Pre", "comment": "c" * 3000, "action": "sign_out",
         "case_version": reviewed_case.review_version}, follow=True,
    )
    assert "the limit is" in response.content.decode()
    reviewed_case.refresh_from_db()
    assert not reviewed_case.is_signed_out


def test_an_overlong_addendum_is_refused(path_client, reviewed_case, pathologist):
    services.sign_out(reviewed_case, pathologist, "Pre")
    response = path_client.post(
        reverse("diagnosis:case_addendum", args=[reviewed_case.pk]), {"text": "a" * 5000}, follow=True
    )
    assert "the limit is" in response.content.decode()
    assert not reviewed_case.addenda.exists()


def test_review_screen_says_the_reason_and_comment_limits(path_client, case, field):
    field("Pre")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert f'maxlength="{models.REVIEW_REASON_MAX_LENGTH}"' in page
    assert f"Up to {models.REVIEW_COMMENT_MAX_LENGTH} characters" in page


def test_an_overlong_search_is_explained_not_a_server_error(path_client):
    response = path_client.get(reverse("diagnosis:case_list"), {"q": "q" * 5000})
    assert response.status_code == 200
    assert "data-filter-errors" in response.content.decode()


def test_an_overlong_patient_search_is_cut_not_a_server_error(tech_client, patient):
    response = tech_client.get(reverse("diagnosis:patient_list"), {"q": "P-0001" + " " * 10 + "x" * 100_000})
    assert response.status_code == 200


def test_an_overlong_reason_for_assessable_again_is_refused_and_nothing_is_recorded(path_client, field, pathologist):
    from diagnosis.models import AuditEvent
    from diagnosis.services.review import NOT_ASSESSABLE_REASON_MAX

    smear = field("Pre")
    services.mark_not_assessable(smear, pathologist, "smudged")
    response = path_client.post(reverse("diagnosis:smear_assessable", args=[smear.pk]),
                                {"action": "assessable", "reason": "r" * 2_500_000}, follow=True)
    assert response.status_code == 200
    assert f"the limit is {NOT_ASSESSABLE_REASON_MAX:,} characters" in response.content.decode()
    smear.refresh_from_db()
    assert smear.not_assessable
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.ASSESSABLE).exists()


@pytest.mark.parametrize("version", ["²", "9" * 5000, "-1", "1.5"])
def test_a_review_with_a_malformed_version_is_saved_without_the_edit_check_not_a_server_error(path_client, field,
                                                                                              version):
    smear = field("Pre")
    response = path_client.post(reverse("diagnosis:smear_review", args=[smear.pk]),
                                {"label": "Pro", "reason": "nucleoli", "version": version})
    assert response.status_code == 302
    smear.refresh_from_db()
    assert smear.review_label == "Pro"


# A browser's maxlength counts a line break as one character but sends it as CR LF (two): a text at the limit
# with line breaks, which the page let through, must not be refused (the pathologist's typing would be lost).
AT_LIMIT_WITH_LINE_BREAKS = lambda limit: "line\r\n" * 10 + "x" * (limit - 50)  # noqa: E731 -- 5 + 1 per line


def test_a_review_reason_at_the_limit_with_line_breaks_is_saved(path_client, field):
    smear = field("Pre")
    reason = AT_LIMIT_WITH_LINE_BREAKS(models.REVIEW_REASON_MAX_LENGTH)
    path_client.post(reverse("diagnosis:smear_review", args=[smear.pk]), {"label": "Pro", "reason": reason})
    smear.refresh_from_db()
    assert smear.review_label == "Pro" and smear.review_reason == reason.replace("\r\n", "\n").strip()


def test_a_sign_out_comment_and_an_addendum_at_the_limit_with_line_breaks_are_saved(path_client, reviewed_case):
    comment = AT_LIMIT_WITH_LINE_BREAKS(models.REVIEW_COMMENT_MAX_LENGTH)
    path_client.post(reverse("diagnosis:case_finalize", args=[reviewed_case.pk]),
                     {"final_stage": "Pre", "comment": comment, "action": "sign_out",
                      "case_version": reviewed_case.review_version})
    reviewed_case.refresh_from_db()
    assert reviewed_case.is_signed_out and reviewed_case.review_comment == comment.replace("\r\n", "\n")
    text = AT_LIMIT_WITH_LINE_BREAKS(models.ADDENDUM_MAX_LENGTH)
    path_client.post(reverse("diagnosis:case_addendum", args=[reviewed_case.pk]), {"text": text})
    assert reviewed_case.addenda.get().text == text.replace("\r\n", "\n")


def test_a_not_assessable_reason_at_the_limit_with_line_breaks_is_saved(path_client, field):
    smear = field("Pre")
    reason = AT_LIMIT_WITH_LINE_BREAKS(services.NOT_ASSESSABLE_REASON_MAX)
    path_client.post(reverse("diagnosis:smear_assessable", args=[smear.pk]),
                     {"action": "not_assessable", "reason": reason})
    smear.refresh_from_db()
    assert smear.not_assessable and smear.not_assessable_reason == reason.replace("\r\n", "\n")


def test_a_clinical_note_at_the_limit_with_line_breaks_is_saved(tech_client, patient):
    note = AT_LIMIT_WITH_LINE_BREAKS(models.CLINICAL_NOTE_MAX_LENGTH)
    response = tech_client.post(
        reverse("diagnosis:case_create"),
        {"patient": patient.pk, "accession_number": "ACC-9", "specimen_type": "peripheral_blood",
         "clinical_note": note},
    )
    assert response.status_code == 302
    assert Case.objects.get().clinical_note == note.replace("\r\n", "\n")


def test_a_clinical_note_over_the_limit_counting_line_breaks_as_one_is_still_refused(tech_client, patient):
    note = AT_LIMIT_WITH_LINE_BREAKS(models.CLINICAL_NOTE_MAX_LENGTH) + "x"
    response = tech_client.post(
        reverse("diagnosis:case_create"),
        {"patient": patient.pk, "accession_number": "ACC-9", "specimen_type": "peripheral_blood",
         "clinical_note": note},
    )
    assert f"at most {models.CLINICAL_NOTE_MAX_LENGTH} characters" in response.content.decode()
    assert not Case.objects.exists()


def test_a_clinical_note_at_the_limit_with_line_breaks_is_saved_in_the_admin(client, make_user, case):
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    note = AT_LIMIT_WITH_LINE_BREAKS(models.CLINICAL_NOTE_MAX_LENGTH)
    response = client.post(reverse("admin:diagnosis_case_change", args=[case.pk]), {
        "patient": case.patient_id, "accession_number": case.accession_number, "specimen_type": case.specimen_type,
        "clinical_note": note, "smears-TOTAL_FORMS": 0, "smears-INITIAL_FORMS": 0, "smears-MIN_NUM_FORMS": 0,
        "smears-MAX_NUM_FORMS": 0,
    })
    assert response.status_code == 302
    case.refresh_from_db()
    assert case.clinical_note == note.replace("\r\n", "\n")

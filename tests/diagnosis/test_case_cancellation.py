"""A case opened by mistake is cancelled, not deleted: with a reason, while no image is kept in it; it then shows
as cancelled everywhere, keeps its audit trail, and takes no image, review or edit."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case, CaseState
from tests.portal_testutils import image_bytes
from tests.review.conftest import classified, signed_case  # noqa: F401

pytestmark = pytest.mark.django_db


def test_a_technician_cancels_an_empty_case_with_a_reason_and_it_shows_everywhere(tech_client, technician, case):
    page = tech_client.get(case.get_absolute_url()).content.decode()
    assert "data-cancel-case" in page
    response = tech_client.post(reverse("diagnosis:case_cancel", args=[case.pk]),
                                {"reason": "Opened for the wrong patient; the specimen is under ACC-0002."}, follow=True)
    page = response.content.decode()
    assert "Case ACC-0001 cancelled." in page and "data-cancelled" in page and "data-cancel-case" not in page
    case.refresh_from_db()
    assert case.is_cancelled and case.cancelled_by == technician and case.state == CaseState.CANCELLED
    event = AuditEvent.objects.get(case=case, action=AuditEvent.Action.CASE_CANCELLED)
    assert event.actor == technician and "wrong patient" in event.reason
    listed = tech_client.get(reverse("diagnosis:case_list") + "?state=cancelled").content.decode()
    assert "ACC-0001" in listed
    report = tech_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "Cancelled on" in report and "preliminary" not in report


@pytest.mark.parametrize("blank", ["   ", "\x00", " \x00\x1b\x7f\u0085 ", "\ufffe\uffff",
                                   "\u200b", "\u2060\ufeff", "\u3164", "\u202e", " \u00ad ", "\u0301\u0301"])
def test_a_reason_is_required(technician, case, blank):
    """Control, format and blank characters are invisible on every page: a lone NUL or zero-width space is no reason
    (security review F7, second round R13)."""
    with pytest.raises(services.ReviewError, match="Say why"):
        services.cancel_case(case, technician, blank)
    case.refresh_from_db()
    assert not case.is_cancelled


def test_a_case_holding_an_image_cannot_be_cancelled(classified, technician, case):
    classified("Pre")
    with pytest.raises(services.ReviewError, match="holds images"):
        services.cancel_case(case, technician, "Mistake.")


def test_a_signed_out_case_cannot_be_cancelled(signed_case, technician):
    with pytest.raises(services.CaseLocked):
        services.cancel_case(signed_case, technician, "Mistake.")


def test_a_cancelled_case_takes_no_image_no_edit_and_no_second_cancellation(tech_client, technician, lab_admin,
                                                                             client, case):
    services.cancel_case(case, technician, "Duplicate accession.")
    with pytest.raises(services.CaseLocked, match="cancelled"):
        services.add_smears(case, [SimpleUploadedFile("a.png", image_bytes("PNG", size=(256, 256), seed=3))],
                            technician, kind="field")
    assert tech_client.get(reverse("diagnosis:smear_upload", args=[case.pk])).status_code == 302
    with pytest.raises(services.CaseLocked):
        services.update_case(case, lab_admin, clinical_note="changed")
    with pytest.raises(services.CaseLocked):
        services.cancel_case(case, technician, "Again.")
    client.force_login(lab_admin)
    page = client.get(reverse("admin:diagnosis_case_change", args=[case.pk])).content.decode()
    assert 'name="clinical_note"' not in page  # read-only in the admin too
    assert Case.objects.get(pk=case.pk).smears.count() == 0


def test_a_pathologist_is_not_offered_cancellation(path_client, case):
    assert "data-cancel-case" not in path_client.get(case.get_absolute_url()).content.decode()
    assert path_client.post(reverse("diagnosis:case_cancel", args=[case.pk]), {"reason": "x"}).status_code == 403

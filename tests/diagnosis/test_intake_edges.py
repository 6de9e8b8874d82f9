"""Intake edges a QA walk-through found: the browser's own checks say what the server says, a collection date
cannot precede the patient, a signed-out case's upload page says at once that it takes no more smears, and the
screening summary never reads "0 of 0" as if it were a result."""
import datetime

import pytest
from django.urls import reverse

from diagnosis.forms import CaseForm, PatientForm
from tests.review.conftest import classified, signed_case  # noqa: F401

pytestmark = pytest.mark.django_db


def test_the_birth_year_box_allows_what_the_server_allows():
    attrs = PatientForm().fields["birth_year"].widget.attrs
    assert attrs["min"] == 1900 and attrs["max"] == datetime.date.today().year
    assert not PatientForm({"lab_id": "P-9", "sex": "F", "birth_year": 0}).is_valid()


@pytest.mark.parametrize("day,error", [
    (datetime.date(1800, 1, 1), "before the patient's birth year (1984)"),
    (datetime.date(1983, 12, 31), "before the patient's birth year (1984)"),
    (datetime.date(1984, 1, 1), None),
])
def test_a_collection_date_before_the_patients_birth_year_is_refused(patient, day, error):
    form = CaseForm({"patient": patient.pk, "accession_number": "ACC-D1", "specimen_type": "",
                     "collection_date": day.isoformat(), "clinical_note": ""})
    if error is None:
        assert "collection_date" not in form.errors
    else:
        assert error in form.errors["collection_date"][0]


def test_the_upload_page_of_a_signed_out_case_says_so_before_files_are_chosen(signed_case, tech_client):
    response = tech_client.get(reverse("diagnosis:smear_upload", args=[signed_case.pk]), follow=True)
    assert response.redirect_chain[-1][0] == signed_case.get_absolute_url()
    assert "takes no more smears" in response.content.decode()


def test_the_upload_page_of_a_cancelled_case_says_what_the_upload_itself_would(case, tech_client, technician):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from diagnosis import services
    from tests.portal_testutils import image_bytes

    services.cancel_case(case, technician, "Opened for the wrong patient.")
    response = tech_client.get(reverse("diagnosis:smear_upload", args=[case.pk]), follow=True)
    assert response.redirect_chain[-1][0] == case.get_absolute_url()
    with pytest.raises(services.CaseLocked) as refusal:
        services.add_smears(case, [SimpleUploadedFile("field.png", image_bytes())], technician, kind="field")
    assert str(refusal.value) == f"Case {case.accession_number} was cancelled; it takes no smears."
    assert str(refusal.value) in response.content.decode()


def test_a_case_whose_cells_wait_for_the_screen_says_so_not_0_of_0(smear_factory, tech_client, case):
    smear_factory(kind="cell")  # queued
    page = tech_client.get(case.get_absolute_url()).content.decode()
    assert "No cell screened yet." in page and "0 of 0" not in page


def test_an_image_already_in_another_patients_case_is_kept_with_a_warning_said_and_audited(
        tech_client, technician, patient, case):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from diagnosis.models import AuditEvent, Case, Patient
    from tests.portal_testutils import image_bytes

    other_patient = Patient.objects.create(lab_id="P-0002", sex="M", birth_year=1990, created_by=technician)
    other = Case.objects.create(patient=other_patient, accession_number="ACC-0002", created_by=technician)
    data = image_bytes("PNG", size=(256, 256), seed=7)
    first = tech_client.post(reverse("diagnosis:smear_upload", args=[other.pk]),
                             {"kind": "field", "images": [SimpleUploadedFile("a.png", data)]}, follow=True)
    assert "already in" not in first.content.decode()
    second = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]),
                              {"kind": "field", "images": [SimpleUploadedFile("b.png", data)]}, follow=True)
    page = second.content.decode()
    warning = "the same image is already in case ACC-0002 of patient P-0002: check that it belongs to this patient."
    assert warning in page and case.smears.count() == 1
    assert warning in AuditEvent.objects.get(case=case, action="upload").detail

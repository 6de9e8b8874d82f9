"""Issue 15.2: patient and accession identifiers are unique regardless of
letter case and surrounding spaces, in the forms and in the database."""
import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from diagnosis.models import Case, Patient

pytestmark = pytest.mark.django_db


def test_patient_form_refuses_an_identifier_differing_only_in_case_and_spaces(tech_client, patient):
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "  p-0001 ", "sex": "U"})
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Patient.objects.count() == 1


def test_patient_identifier_is_stored_without_surrounding_spaces(tech_client):
    tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "  P-0009  ", "sex": "U"})
    assert Patient.objects.get().lab_id == "P-0009"


def test_case_form_refuses_an_accession_differing_only_in_case_and_spaces(tech_client, case, patient):
    response = tech_client.post(
        reverse("diagnosis:case_create"),
        {"patient": patient.pk, "accession_number": " acc-0001", "specimen_type": "peripheral_blood"},
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Case.objects.count() == 1


def test_database_refuses_a_duplicate_patient_identifier_that_bypasses_the_forms(patient):
    with pytest.raises(IntegrityError), transaction.atomic():
        Patient.objects.bulk_create([Patient(lab_id=" p-0001 ")])


def test_database_refuses_a_duplicate_accession_that_bypasses_the_forms(case, patient, technician):
    with pytest.raises(IntegrityError), transaction.atomic():
        Case.objects.bulk_create([Case(patient=patient, accession_number="Acc-0001  ", created_by=technician)])


def test_a_duplicate_saved_between_check_and_insert_gives_a_form_error_not_a_500(tech_client, patient, monkeypatch):
    # The form's own check passes (as when a colleague saves the same identifier a moment later) ...
    monkeypatch.setattr(Patient, "validate_unique", lambda self, exclude=None: None)
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "P-0001", "sex": "U"})
    # ... and the database's refusal becomes a message on the form.
    assert response.status_code == 200
    assert "already exists" in response.content.decode()


def test_admin_refuses_a_patient_identifier_differing_only_in_case(client, make_user, patient):
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    response = client.post(reverse("admin:diagnosis_patient_add"), {
        "lab_id": "P-0001 ", "sex": "U", "birth_year": "",
        "cases-TOTAL_FORMS": "0", "cases-INITIAL_FORMS": "0", "cases-MIN_NUM_FORMS": "0", "cases-MAX_NUM_FORMS": "0",
    })
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Patient.objects.count() == 1

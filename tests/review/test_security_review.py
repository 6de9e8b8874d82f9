"""Regression tests for issue 13 on the review side, through the real views:
hostile accession numbers (export path, PDF header), two pathologists
reviewing one smear, the signer's identity at sign-out, and audited admin
edits of patients and cases."""

import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case
from tests.portal_testutils import exported_zip_names

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("accession", ["../../../../tmp/pwned", "a/b", "ACC\n1", 'ACC"1', ".hidden", "x" * 65])
def test_case_form_refuses_accession_numbers_that_could_become_paths_or_headers(tech_client, patient, accession):
    response = tech_client.post(reverse("diagnosis:case_create"), {"patient": patient.pk, "accession_number": accession})
    assert response.status_code == 200 and "letters, digits" in response.content.decode().lower()
    assert not Case.objects.filter(accession_number=accession).exists()


def test_patient_form_refuses_lab_ids_with_path_characters(tech_client):
    response = tech_client.post(reverse("diagnosis:patient_create"), {"lab_id": "../P1", "sex": "U"})
    assert response.status_code == 200
    from diagnosis.models import Patient

    assert not Patient.objects.filter(lab_id="../P1").exists()


def test_export_zip_never_writes_outside_its_folder_even_for_a_legacy_hostile_accession(
    signed_case, path_client, tmp_path, monkeypatch
):
    import tempfile

    # The export folder is tmp_path/tmp/leukportal-export-*/reviewed/staging/Pre/: five levels up is tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # Stored before validation existed (or by a raw update): the export must still be safe.
    Case.objects.filter(pk=signed_case.pk).update(accession_number="../../../../../pwned")
    names = exported_zip_names(path_client)
    assert all(name.startswith("reviewed/") and ".." not in name.split("/") for name in names)
    smear = signed_case.smears.get()
    assert f"reviewed/staging/Pre/_.._.._.._.._pwned-{smear.pk}.png" in names
    assert list(tmp_path.rglob("pwned*")) == []


def test_export_refuses_a_path_that_escapes_its_folder(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        services._inside(tmp_path, "../escape.png")


@pytest.mark.parametrize("accession", ["ACC\r\nSet-Cookie: x=1", 'ACC"; filename="evil.exe'])
def test_pdf_download_header_cannot_be_broken_by_the_accession(signed_case, path_client, accession):
    Case.objects.filter(pk=signed_case.pk).update(accession_number=accession)
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[signed_case.pk]))
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="report-{signed_case.pk}-ACC')
    assert "\n" not in disposition and "\r" not in disposition and disposition.count('"') == 2
    assert "Set-Cookie" not in response.headers


def test_second_pathologist_reviewing_the_same_smear_sees_a_conflict(classified, client, make_user):
    smear = classified("Pre")
    first, second = make_user("Pathologist"), make_user("Pathologist")
    url = reverse("diagnosis:smear_review", args=[smear.pk])
    shown = smear.review_version  # both review screens were opened now
    client.force_login(first)
    assert client.post(url, {"label": "Pre", "version": shown}).status_code == 302
    client.force_login(second)
    response = client.post(url, {"label": "Pro", "reason": "Looks Pro-B.", "version": shown},
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 409 and "meanwhile" in response.content.decode()
    smear.refresh_from_db()
    assert (smear.review_label, smear.reviewed_by) == ("Pre", first)
    response = client.post(url, {"label": "Pro", "reason": "Looks Pro-B.", "version": shown}, follow=True)
    assert "your change was not saved" in response.content.decode()


def test_review_screen_sends_the_version_it_shows(classified, case, path_client):
    smear = classified("Pre")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert f'name="version" value="{smear.review_version}"' in page


def test_signer_of_a_past_sign_out_keeps_the_name_and_email_signed_with(signed_case, pathologist, client, make_user):
    client.force_login(make_user("Pathologist"))  # someone else reads the case
    pathologist.first_name, pathologist.last_name = "Ada", "Lovelace"
    old_email = pathologist.email
    pathologist.save()
    assert signed_case.signed_out_by_email == old_email
    pathologist.email = "someone.else@lab.example"
    pathologist.save()
    detail = client.get(reverse("diagnosis:case_detail", args=[signed_case.pk])).content.decode()
    signout_card = detail[detail.index("data-signout"):][:800]
    assert old_email in signout_card and "someone.else" not in signout_card
    report = client.get(reverse("diagnosis:case_report", args=[signed_case.pk])).content.decode()
    signed_by_row = report[report.index("Signed out by"):][:200]
    assert old_email in signed_by_row and "someone.else" not in signed_by_row


def test_signer_snapshot_uses_the_full_name_when_there_is_one(classified, case, make_user):
    signer = make_user("Pathologist", first_name="Grace", last_name="Hopper")
    smear = classified("Pre")
    services.review_smear(smear, signer, "Pre")
    services.sign_out(case, signer, "Pre")
    case.refresh_from_db()
    assert (case.signed_out_by_name, case.signed_out_by_email) == ("Grace Hopper", signer.email)
    assert case.signer_display == f"Grace Hopper <{signer.email}>"


@pytest.fixture
def superuser_client(client, make_user):
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    return client


def admin_case_form(case, **changes):
    data = {"patient": case.patient_id, "accession_number": case.accession_number, "clinical_note": case.clinical_note,
            "specimen_type": case.specimen_type, "smears-TOTAL_FORMS": 0, "smears-INITIAL_FORMS": 0, "smears-MIN_NUM_FORMS": 0, "smears-MAX_NUM_FORMS": 0}
    data.update(changes)
    return data


def test_admin_edit_of_a_case_is_audited_with_before_and_after(case, superuser_client):
    url = reverse("admin:diagnosis_case_change", args=[case.pk])
    response = superuser_client.post(url, admin_case_form(case, clinical_note="Referred by Dr X."))
    assert response.status_code == 302 and response.url == reverse("admin:diagnosis_case_changelist")
    event = AuditEvent.objects.get(case=case, action=AuditEvent.Action.CASE_CHANGED)
    assert (event.old_value, event.new_value) == ("", "Referred by Dr X.")
    assert event.actor.is_superuser


def test_admin_cannot_change_a_signed_out_case(signed_case, superuser_client):
    url = reverse("admin:diagnosis_case_change", args=[signed_case.pk])
    response = superuser_client.post(url, admin_case_form(signed_case, accession_number="CHANGED"))
    assert response.status_code == 403
    signed_case.refresh_from_db()
    assert signed_case.accession_number == "ACC-0001"


def admin_patient_form(patient, **changes):
    data = {"lab_id": patient.lab_id, "sex": patient.sex, "birth_year": patient.birth_year or "",
            "cases-TOTAL_FORMS": 0, "cases-INITIAL_FORMS": 0, "cases-MIN_NUM_FORMS": 0, "cases-MAX_NUM_FORMS": 0}
    data.update(changes)
    return data


def test_admin_edit_of_a_patient_after_sign_out_is_audited_and_leaves_the_signed_report(
    signed_case, superuser_client, pathologist
):
    patient = signed_case.patient
    url = reverse("admin:diagnosis_patient_change", args=[patient.pk])
    response = superuser_client.post(url, admin_patient_form(patient, lab_id="P-RENAMED"))
    assert response.status_code == 302 and response.url == reverse("admin:diagnosis_patient_changelist")
    event = AuditEvent.objects.get(case=signed_case, action=AuditEvent.Action.PATIENT_CHANGED)
    assert (event.old_value, event.new_value) == ("P-0001", "P-RENAMED")
    superuser_client.force_login(pathologist)
    report = superuser_client.get(reverse("diagnosis:case_report", args=[signed_case.pk])).content.decode()
    patient_row = report[report.index("<th>Patient</th>"):][:80]
    assert "P-0001" in patient_row and "P-RENAMED" not in patient_row


def test_update_case_from_a_shell_is_audited_and_refused_after_sign_out(case, signed_case, pathologist):
    with pytest.raises(services.CaseLocked):
        services.update_case(signed_case, pathologist, clinical_note="late edit")
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.CASE_CHANGED).exists()


def test_opening_a_case_is_the_first_entry_of_its_audit_trail(tech_client, technician, patient):
    response = tech_client.post(reverse("diagnosis:case_create"),
                                {"patient": patient.pk, "accession_number": "ACC-NEW", "clinical_note": "Fever.",
                                 "specimen_type": "peripheral_blood"})
    assert response.status_code == 302
    case = Case.objects.get(accession_number="ACC-NEW")
    [event] = AuditEvent.objects.filter(case=case)
    assert (event.action, event.actor, event.new_value) == ("case_opened", technician, "ACC-NEW")
    assert "P-0001" in event.detail and "Fever." in event.detail


def test_a_case_added_in_the_admin_is_audited_too(superuser_client, patient):
    data = admin_case_form(Case(patient=patient, accession_number="ACC-ADMIN", clinical_note=""))
    assert superuser_client.post(reverse("admin:diagnosis_case_add"), data).status_code == 302
    case = Case.objects.get(accession_number="ACC-ADMIN")
    assert list(case.audit_events.values_list("action", flat=True)) == ["case_opened"]

"""Learning from review: the agreement dashboard, the export (command, view,
admin action) and the case report (HTML and PDF)."""
import csv
import io
import zipfile

import pytest
from django.core.management import call_command
from django.urls import reverse

from diagnosis import services
from tests.portal_testutils import exported_zip_names

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(classified, case, pathologist, patient, technician):
    """Signed-out case: Pre confirmed, Pro changed to Pre; plus an unsigned reviewed case."""
    from diagnosis.models import Case

    a, b = classified("Pre"), classified("Pro")
    services.review_smear(a, pathologist, "Pre")
    services.review_smear(b, pathologist, "Pre", "Cytology is Pre-B.")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL.")
    other = Case.objects.create(patient=patient, accession_number="ACC-UNSIGNED", created_by=technician)
    c = classified("Early", case_=other)
    services.review_smear(c, pathologist, "Early")
    return a, b, c


def test_agreement_and_confusion_matrix(reviewed, path_client):
    stats = services.agreement_stats()
    assert stats["n"] == 2 and stats["agree"] == 1 and stats["agreement"] == pytest.approx(0.5)
    matrix = dict(stats["matrix"])
    labels = stats["labels"]
    assert matrix["Pre"][labels.index("Pre")] == 1 and matrix["Pro"][labels.index("Pre")] == 1
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    assert "50 %" in page and "1 of 2 reviewed smears" in page
    # One case: nothing to resample, so no interval is shown.
    assert stats["cases"] == 1 and stats["agreement_interval"]["low"] is None
    assert "data-agreement-interval" not in page


def test_the_agreement_interval_resamples_cases(reviewed, classified, patient, technician, pathologist, path_client):
    from diagnosis.models import Case

    other = Case.objects.create(patient=patient, accession_number="ACC-SECOND", created_by=technician)
    for stage in ("Early", "Early"):
        services.review_smear(classified(stage, case_=other), pathologist, stage)
    services.sign_out(other, pathologist, "Early", "Early Pre-B ALL.")
    stats = services.agreement_stats()
    assert (stats["n"], stats["agree"], stats["cases"]) == (4, 3, 2)
    interval = stats["agreement_interval"]
    # Resampling the two cases: both the first (1 of 2), both the second (2 of 2), or one of each (3 of 4).
    assert interval["estimate"] == pytest.approx(0.75) and interval["low"] == 0.5 and interval["high"] == 1.0
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    assert "95% interval 50–100 % over 2 cases" in page


def test_export_command_writes_class_folders_and_csv(reviewed, tmp_path, case, pathologist):
    a, b, _ = reviewed
    dest = tmp_path / "export"
    call_command("export_reviewed", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["screening", "staging"]
    assert sorted(p.name for p in (dest / "screening").iterdir()) == ["blast", "labels.csv", "normal"]
    dest = dest / "staging"  # blood-smear fields: the staging model's layout
    assert sorted(p.name for p in dest.iterdir()) == ["Benign", "Early", "Pre", "Pro", "labels.csv"]
    assert sorted(p.name for p in (dest / "Pre").iterdir()) == [f"{case.accession_number}-{a.pk}.png", f"{case.accession_number}-{b.pk}.png"]
    assert not any((dest / "Early").iterdir())  # the unsigned case is not exported
    rows = list(csv.DictReader((dest / "labels.csv").open()))
    assert [r["file"] for r in rows] == [f"Pre/{case.accession_number}-{a.pk}.png", f"Pre/{case.accession_number}-{b.pk}.png"]
    assert [(r["final_label"], r["model_label"]) for r in rows] == [("Pre", "Pre"), ("Pre", "Pro")]
    assert {r["model_version"] for r in rows} == {"fake_model 0.0-test"}
    assert rows[1]["reviewer"] == pathologist.email and rows[1]["case_accession"] == case.accession_number
    assert rows[0]["sha256"] == a.sha256
    with a.image.open("rb") as fh:
        assert (dest / rows[0]["file"]).read_bytes() == fh.read()
    with pytest.raises(Exception, match="not empty"):
        call_command("export_reviewed", str(dest.parent))


def test_the_exported_images_and_folders_are_not_readable_by_other_local_users(reviewed, tmp_path):
    import stat

    dest = tmp_path / "export"
    call_command("export_reviewed", str(dest))
    written = [dest, *dest.rglob("*")]
    assert any(p.suffix == ".png" for p in written) and any(p.name == "labels.csv" for p in written)
    for path in written:  # patient images: the media's modes (640 / 750), never the umask's 644 / 755
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


def test_export_zip_and_admin_action(reviewed, path_client, client, make_user, case):
    names = exported_zip_names(path_client)
    assert "reviewed/staging/labels.csv" in names and "reviewed/screening/labels.csv" in names
    assert len([n for n in names if n.startswith("reviewed/staging/Pre/")]) == 2
    client.force_login(make_user("Admin", is_staff=True))
    response = client.post(
        reverse("admin:diagnosis_case_changelist"), {"action": "export_reviewed", "_selected_action": [case.pk]}
    )
    assert response["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert len([n for n in names if n.endswith(".png")]) == 2


def test_report_html_and_pdf(reviewed, path_client, case, pathologist):
    services.add_addendum(case, pathologist, "Flow cytometry confirms.", "")
    html = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    for text in (case.accession_number, case.patient.lab_id, "Pre-B", "Staging model v0.0-test", pathologist.email,
                 "decision support", "Flow cytometry confirms.", "data-print", "diagnosis/report.js"):
        assert text in html
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk]))
    assert response["Content-Type"] == "application/pdf" and response.content.startswith(b"%PDF")
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert sum(len(page.images) for page in reader.pages) >= 2  # the smears' thumbnails
    for expected in (case.accession_number, case.patient.lab_id, "Final stage", "Pre-B", "Staging model v0.0-test",
                     pathologist.email, "decision support", "Cytology is Pre-B.", "Flow cytometry confirms."):
        assert expected in text, expected

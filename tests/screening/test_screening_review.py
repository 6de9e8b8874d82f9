"""Pathologist review of single cells: confirm/override, audit trail, locking,
sign-out of a cells-only and of a mixed case, review queue, report (HTML and
PDF), export folders and the per-kind dashboard."""
import csv
import io

import pytest
from django.core.management import call_command
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case
from tests.portal_testutils import exported_zip_names

pytestmark = pytest.mark.django_db


def test_confirm_and_override_a_cell(cell, pathologist, path_client, case):
    blast, normal = cell(0.9), cell(0.1)
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    # The options are the pathologist's labels; the screen's call is named as a flag, not as a diagnosis.
    assert '<option value="blast" selected>Blast (flagged by the screen)</option>' in page
    assert '<option value="normal" selected>Normal (not flagged by the screen)</option>' in page
    assert "(model)" not in page
    assert "threshold 0.31" in page and "Early Pre-B" not in page  # a cell's choices are blast/normal only
    with pytest.raises(services.ReviewError, match="reason is required"):
        services.review_smear(normal, pathologist, "blast")
    with pytest.raises(services.ReviewError, match="not a label"):
        services.review_smear(normal, pathologist, "Pre")
    path_client.post(reverse("diagnosis:smear_review", args=[blast.pk]), {"label": "blast"})
    path_client.post(reverse("diagnosis:smear_review", args=[normal.pk]),
                     {"label": "blast", "reason": "Nucleoli visible; fine chromatin."})
    blast.refresh_from_db(), normal.refresh_from_db()
    assert blast.review_label == "blast" and not blast.is_overridden
    assert normal.review_label == "blast" and normal.is_overridden
    confirm = AuditEvent.objects.get(smear=blast, action="confirm")
    override = AuditEvent.objects.get(smear=normal, action="override")
    assert (confirm.new_value, confirm.actor) == ("blast", pathologist)
    assert (override.old_value, override.new_value, override.reason) == ("normal", "blast", "Nucleoli visible; fine chromatin.")
    assert override.model_version == "fake_screening 0.0-test"
    summary = case.screening_summary()
    assert (summary["flagged"], summary["reviewed"], summary["reviewed_blasts"]) == (1, 2, 2)


def test_audit_trail_names_the_screens_prediction_on_a_cell_as_a_flag(cell, field, path_client, case):
    cell(0.9), cell(0.1), field("Pre")
    page = path_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    trail = page.split("data-audit-trail")[1]
    predictions = [row for row in trail.split("<tr")[1:] if 'data-action="prediction"' in row]
    assert len(predictions) == 3
    assert sum("– → Flagged for review" in row for row in predictions) == 1
    assert sum("– → Not flagged" in row for row in predictions) == 1
    assert sum("– → Pre-B" in row for row in predictions) == 1  # a field's prediction is a stage
    assert "→ Blast" not in trail and "→ Normal" not in trail


def test_a_cells_heat_map_is_named_by_the_screens_probability(cell, path_client, case):
    from tests.portal_testutils import image_bytes

    flagged = cell(0.9)
    services.store_heatmap(flagged.prediction.pk, image_bytes("JPEG", seed=5))
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "Heat map: where blurring lowers P(blast)</label>" in page
    assert 'alt="Heat map overlay: where blurring the cell lowers P(blast) most"' in page
    assert "lowers Blast" not in page and "suggested stage" not in page


def test_cells_only_case_signs_out_without_a_stage(cell, pathologist, path_client, case):
    a, b = cell(0.9), cell(0.2)
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "data-screening-only" in page and 'id="final-stage"' not in page
    with pytest.raises(services.ReviewError, match="not yet confirmed"):
        services.sign_out(case, pathologist, "")
    services.review_smear(a, pathologist, "blast")
    services.review_smear(b, pathologist, "normal")
    with pytest.raises(services.ReviewError, match="no stage"):
        services.sign_out(case, pathologist, "Pre")
    response = path_client.post(reverse("diagnosis:case_finalize", args=[case.pk]),
                                {"action": "sign_out", "final_stage": "", "comment": "1 blast of 2 cells.",
                                 "case_version": Case.objects.get(pk=case.pk).review_version})
    assert response.status_code == 302
    case.refresh_from_db()
    assert case.is_signed_out and case.final_stage == "" and case.signed_out_stage == ""
    event = AuditEvent.objects.get(case=case, action="sign_out")
    assert event.detail == "Single-cell screening, pathologist: 1 of 2 reviewed cells blast (50%)."
    page = path_client.get(case.get_absolute_url()).content.decode()
    assert "Single-cell screening (no stage)" in page and "Screening: 1 of 2 reviewed cells blast" in page
    # Locked: a cell review after sign-out changes nothing.
    response = path_client.post(reverse("diagnosis:smear_review", args=[b.pk]),
                                {"label": "blast", "reason": "late"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 409
    b.refresh_from_db()
    assert b.review_label == "normal"
    with pytest.raises(services.CaseLocked):
        services.review_smear(b, pathologist, "blast", "late")
    # An addendum on a cells-only case is text only (no stage to change).
    with pytest.raises(services.ReviewError, match="not a label"):
        services.add_addendum(case, pathologist, "Flow cytometry pending.", "Pre")
    services.add_addendum(case, pathologist, "Flow cytometry pending.")


def test_mixed_case_needs_a_stage_from_the_fields(cell, field, pathologist, case):
    f, c = field("Pro", 0.9), cell(0.95)
    services.review_smear(f, pathologist, "Pro")
    services.review_smear(c, pathologist, "blast")
    with pytest.raises(services.ReviewError, match="Choose a final stage"):
        services.sign_out(case, pathologist, "")
    with pytest.raises(services.ReviewError, match="Choose a final stage"):
        services.sign_out(case, pathologist, "blast")  # a cell label is not a stage
    services.sign_out(case, pathologist, "Pro")
    case.refresh_from_db()
    assert case.signed_out_stage == "Pro"
    assert "1 of 1 reviewed cells blast" in AuditEvent.objects.get(case=case, action="sign_out").detail


def test_review_queue_counts_flagged_cells(cell, field, case, patient, technician, path_client):
    field("Pre", 0.9)
    cell(0.9), cell(0.1), cell(0.4)
    other = Case.objects.create(patient=patient, accession_number="CELLS-ONLY", created_by=technician)
    cell(0.05, case_=other)
    entries = {e.case.accession_number: e for e in services.review_queue()}
    mixed, only = entries[case.accession_number], entries["CELLS-ONLY"]
    assert (mixed.n_smears, mixed.n_cells, mixed.blasts_flagged) == (4, 3, 2)
    assert not mixed.low_confidence and not mixed.disagreement  # cells do not drive the staging flags
    assert (only.n_cells, only.blasts_flagged, only.min_confidence, only.flagged) == (1, 0, None, False)
    page = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert "2 of 3 cells flagged by the screen" in page


@pytest.fixture
def signed_mixed(cell, field, pathologist, case, patient, technician):
    """A signed-out mixed case (field Pre confirmed; cells: blast confirmed,
    normal changed to blast, normal confirmed) and an unsigned reviewed cell."""
    f = field("Pre", 0.8)
    c1, c2, c3 = cell(0.9), cell(0.2), cell(0.1)
    services.review_smear(f, pathologist, "Pre")
    services.review_smear(c1, pathologist, "blast")
    services.review_smear(c2, pathologist, "blast", "Blast morphology.")
    services.review_smear(c3, pathologist, "normal")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL; blasts on screening.")
    other = Case.objects.create(patient=patient, accession_number="ACC-UNSIGNED", created_by=technician)
    services.review_smear(cell(0.9, case_=other), pathologist, "blast")
    return f, (c1, c2, c3)


def test_report_has_the_screening_section(signed_mixed, path_client, case, pathologist):
    f, (c1, c2, c3) = signed_mixed
    html = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    section = html.split("data-report-screening>")[1].split("</section>")[0]
    for text in ("Single-cell screening, model: 1 of 3 cells flagged by the screen (33%).",
                 "Single-cell screening, pathologist: 2 of 3 reviewed cells blast (67%).",
                 c1.original_filename, "0.90", "0.31", "Blast morphology.", "sensitivity"):
        assert text in section, text
    assert f.original_filename not in section and f.original_filename in html
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk]))
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    for expected in ("Single-cell screening (blast vs normal)", "1 of 3 cells flagged by the screen",
                     "2 of 3 reviewed cells blast", "P(blast)", "Threshold", "0.31", "0.90", "flagged for review", "Blast",
                     "Normal", "Blast morphology.", "Pre-B", "Screening model v0.0-test"):
        assert expected in text, expected
    assert pathologist.email in text.replace(" ", "")  # a long address wraps inside its table cell


def test_report_pdf_of_a_cells_only_case(cell, pathologist, path_client, case):
    services.review_smear(cell(0.6), pathologist, "blast")
    services.sign_out(case, pathologist, "")
    html = path_client.get(reverse("diagnosis:case_report", args=[case.pk])).content.decode()
    assert "none (single cells only)" in html and "<h2 class=\"h5\">Smears</h2>" not in html
    from pypdf import PdfReader

    pdf = path_client.get(reverse("diagnosis:case_report_pdf", args=[case.pk])).content
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "none (single cells only)" in text and "pathologist: 1 of 1 reviewed cells blast" in text


def test_export_puts_cells_in_blast_and_normal_folders(signed_mixed, tmp_path, case, path_client):
    f, (c1, c2, c3) = signed_mixed
    dest = tmp_path / "export"
    call_command("export_reviewed", str(dest))
    screening, staging = dest / "screening", dest / "staging"
    assert sorted(p.name for p in screening.iterdir()) == ["blast", "labels.csv", "normal"]
    assert sorted(p.name for p in (screening / "blast").iterdir()) == [
        f"{case.accession_number}-{c1.pk}.png", f"{case.accession_number}-{c2.pk}.png"]  # not the unsigned case
    assert sorted(p.name for p in (screening / "normal").iterdir()) == [f"{case.accession_number}-{c3.pk}.png"]
    assert [p.name for p in (staging / "Pre").iterdir()] == [f"{case.accession_number}-{f.pk}.png"]
    assert not any((staging / "Benign").iterdir())
    rows = list(csv.DictReader((screening / "labels.csv").open()))
    assert [(r["file"], r["final_label"], r["model_label"]) for r in rows] == [
        (f"blast/{case.accession_number}-{c1.pk}.png", "blast", "blast"),
        (f"blast/{case.accession_number}-{c2.pk}.png", "blast", "normal"),
        (f"normal/{case.accession_number}-{c3.pk}.png", "normal", "normal"),
    ]
    with c2.image.open("rb") as fh:
        assert (screening / rows[1]["file"]).read_bytes() == fh.read()
    assert [r["file"] for r in csv.DictReader((staging / "labels.csv").open())] == [f"Pre/{case.accession_number}-{f.pk}.png"]
    # The training data loader of `ml` reads exactly these class folders.
    from ml.data import scan_folder

    assert scan_folder(screening).classes == ["blast", "normal"] and len(scan_folder(screening).samples) == 3
    names = exported_zip_names(path_client)
    assert len([n for n in names if n.startswith("reviewed/screening/blast/")]) == 2


def test_dashboard_is_per_model_kind(signed_mixed, path_client):
    by_kind = {kind: stats for kind, _, stats in services.agreement_by_kind()}
    staging, screening = by_kind["field"], by_kind["cell"]
    assert (staging["n"], staging["agree"], staging["labels"]) == (1, 1, ["Benign", "Early", "Pre", "Pro"])
    assert (screening["n"], screening["agree"], screening["labels"]) == (3, 2, ["blast", "normal"])
    assert dict(screening["matrix"]) == {"blast": [1, 0], "normal": [1, 1]}
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    cells = page.split('data-kind="cell"')[1]
    assert "2 of 3 reviewed cells" in cells and "67 %" in cells and "<th>Blast</th>" in cells
    # The rows are the screen's calls, the columns the pathologist's labels: only a pathologist calls a blast.
    assert "<tr><th>Flagged for review</th>" in cells and "<tr><th>Not flagged</th>" in cells
    assert "1 of 1 reviewed smears" in page.split('data-kind="field"')[1].split('data-kind="cell"')[0]

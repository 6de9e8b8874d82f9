"""Issue 15.6: the case report: lab header from settings, specimen type and
collection date, page numbers, the signer's name, readable model names,
wrapping long versions, and Unicode fonts that print any text."""
import datetime
import io

import pytest
from django.urls import reverse
from pypdf import PdfReader

from diagnosis import reports, services
from diagnosis.models import Case, Prediction

pytestmark = pytest.mark.django_db


@pytest.fixture
def lab_settings(settings):
    settings.LAB_NAME = "Haematology Lab, Hôpital Saint-Éloi"
    settings.LAB_ADDRESS = "1 Rue de l'Exemple, 34000 Montpellier"
    settings.LAB_ACCREDITATION = "ISO 15189 accredited, COFRAC n° 8-1234"
    return settings


@pytest.fixture
def signed_report_case(reviewed_case, pathologist, lab_settings):
    pathologist.full_name, pathologist.title = "Zoë Åberg-李", "Dr"
    pathologist.save()
    Case.objects.filter(pk=reviewed_case.pk).update(
        specimen_type=Case.Specimen.BONE_MARROW, collection_date=datetime.date(2026, 11, 20),
        clinical_note="WBC 45×10⁹/L; 患者 fatigué",
    )
    reviewed_case.refresh_from_db()
    services.sign_out(reviewed_case, pathologist, "Pre")
    reviewed_case.refresh_from_db()
    return reviewed_case


def pdf_text(case):
    reader = PdfReader(io.BytesIO(reports.case_report_pdf(case)))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def test_pdf_report_has_header_specimen_signer_model_and_page_numbers(signed_report_case):
    reader, text = pdf_text(signed_report_case)
    for expected in ("Hôpital Saint-Éloi", "Montpellier", "ISO 15189", "Bone marrow aspirate", "2026-11-20",
                     "Dr Zoë Åberg-李", "Staging model v0.0-test", f"Page 1 of {len(reader.pages)}"):
        assert expected in text, expected


def test_pdf_report_prints_superscripts_accents_and_cjk_in_embedded_unicode_fonts(signed_report_case):
    reader, text = pdf_text(signed_report_case)
    assert "45×10⁹/L" in text and "患者" in text and "fatigué" in text
    fonts = {str(font["/BaseFont"]) for page in reader.pages
             for font in page["/Resources"]["/Font"].get_object().values()}
    assert any("DejaVuSans" in f for f in fonts)
    assert any("DroidSansFallback" in f for f in fonts)
    # reportlab lists Helvetica as /F1 in every PDF; no text may be set in it.
    assert not any(b"/F1 " in page.get_contents().get_data() for page in reader.pages)


def test_a_long_version_string_wraps_inside_the_page(signed_report_case):
    Prediction.objects.filter(smear__case=signed_report_case).update(model_version="2026-11-23T12:00:00+" + "x" * 80)
    reader, text = pdf_text(signed_report_case)
    lines = [line for line in text.splitlines() if "xxxxxxxxxx" in line]
    assert len(lines) >= 2  # printed on several lines, not cut off or running off the page
    assert "".join(lines).count("x") >= 80


def test_pdf_download_view_returns_the_report(path_client, signed_report_case):
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[signed_report_case.pk]))
    assert response.status_code == 200 and response.content.startswith(b"%PDF")


def test_html_report_has_header_specimen_collection_date_signer_and_model_name(path_client, signed_report_case):
    html = path_client.get(reverse("diagnosis:case_report", args=[signed_report_case.pk])).content.decode()
    assert "Hôpital Saint-Éloi" in html and "ISO 15189" in html
    assert "Bone marrow aspirate" in html and "2026-11-20" in html
    assert "Dr Zoë Åberg-李" in html
    assert "Staging model v0.0-test" in html


def test_case_form_takes_specimen_type_and_collection_date_but_not_a_future_date(tech_client, patient):
    url = reverse("diagnosis:case_create")
    future = (datetime.date.today() + datetime.timedelta(days=3)).isoformat()
    response = tech_client.post(url, {"patient": patient.pk, "accession_number": "ACC-S", "specimen_type": "bone_marrow",
                                      "collection_date": future})
    assert "cannot be in the future" in response.content.decode()
    tech_client.post(url, {"patient": patient.pk, "accession_number": "ACC-S", "specimen_type": "bone_marrow",
                           "collection_date": "2026-11-01"})
    case = Case.objects.get(accession_number="ACC-S")
    assert (case.specimen_type, case.collection_date) == ("bone_marrow", datetime.date(2026, 11, 1))


@pytest.mark.parametrize("version, shown", [
    ("mobilenetv3_lstm-20261123-s0", "Staging model v2026-11-23 (mobilenetv3_lstm-20261123-s0)"),
    ("2026-11-23", "Staging model v2026-11-23"),
    ("0.0-test", "Staging model v0.0-test"),
])
def test_model_names_are_readable_and_keep_the_full_version(version, shown):
    assert Prediction(task="staging", model_version=version).model_display == shown


@pytest.mark.parametrize("reason", [
    "\n".join(f"observation {i}" for i in range(200))[:1000],  # the most line breaks the limit allows
    ("Nuclear contour irregular, chromatin fine, nucleoli visible; " * 20)[:1000],  # the longest reason
], ids=["many-lines", "longest"])
def test_a_review_reason_of_the_allowed_length_prints_shortened_in_the_table_and_whole_below(
        path_client, signed_report_case, reason):
    from diagnosis.models import REVIEW_REASON_MAX_LENGTH, Smear

    assert len(reason) == REVIEW_REASON_MAX_LENGTH
    Smear.objects.filter(case=signed_report_case).update(review_reason=reason)
    response = path_client.get(reverse("diagnosis:case_report_pdf", args=[signed_report_case.pk]))
    assert response.status_code == 200 and response.content.startswith(b"%PDF")
    _, text = pdf_text(signed_report_case)
    flat = "".join(text.split())  # the table wraps lines within words' boundaries; compare without spaces
    assert "(infullbelow)" in flat and "Reviewreasonsinfull" in flat
    assert "".join(reason.split()[-3:]) in flat  # the end of the reason is printed too


def test_a_short_review_reason_stays_whole_in_the_table(signed_report_case):
    from diagnosis.models import Smear

    Smear.objects.filter(case=signed_report_case).update(review_reason="Blast morphology clear.")
    _, text = pdf_text(signed_report_case)
    assert "Blastmorphologyclear." in "".join(text.split())  # whole, wrapped within its column
    assert "Review reasons in full" not in text

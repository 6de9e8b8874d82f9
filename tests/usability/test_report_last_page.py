"""The PDF case report never ends with a page that holds only its closing lines (the decision-support note and
"Generated ... by LeukPortal."): they go over to a new page only with the end of the report's content."""
import io

import pytest
from pypdf import PdfReader

from diagnosis import reports, services
from diagnosis.models import Case

pytestmark = pytest.mark.django_db


def flat(text):
    return " ".join(text.split())


def content_on_last_page(case):
    """The last page's text less the page footer, the note and the "Generated" line; and the page count."""
    reader = PdfReader(io.BytesIO(reports.case_report_pdf(case)))
    lines = reader.pages[-1].extract_text().splitlines()
    assert any(line.startswith("Generated ") and "by LeukPortal" in line for line in lines)
    kept = [line for line in lines
            if not line.startswith(("Generated ", "Page "))
            and f"case {case.accession_number}" not in line]
    rest = flat(" ".join(kept)).replace(flat(reports.DECISION_SUPPORT_NOTE), "")
    return rest.strip(), len(reader.pages)


def set_note(case, words):
    Case.objects.filter(pk=case.pk).update(clinical_note=" ".join(["word"] * words))
    case.refresh_from_db()


@pytest.mark.parametrize("fields", [2, 3])
def test_the_report_ending_with_the_smear_table_never_has_a_last_page_of_closing_lines_only(case, field, fields):
    # A longer clinical note pushes the table down a line at a time, over more than a table row's height, so the
    # page break falls at every place relative to the last row. Before the fix, 2 fields with a note of 312
    # words (3 fields: 210) gave a last page with only the "Generated" line, and others only the note's end.
    for _ in range(fields):
        field("Pre", 0.8)
    pages = set()
    for words in range(150, 400, 6):
        set_note(case, words)
        rest, n = content_on_last_page(case)
        pages.add(n)
        assert rest, f"{fields} fields, a note of {words} words: the last page holds only the closing lines"
    assert pages == {1, 2}  # the scan did cross a page break


def test_the_report_ending_with_an_addendum_never_has_a_last_page_of_closing_lines_only(case, field, pathologist):
    services.review_smear(field("Pre", 0.8), pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "Pre-B ALL.")
    case.refresh_from_db()
    services.add_addendum(case, pathologist, " ".join(["addendum"] * 40))
    pages = set()
    for words in range(0, 800, 8):  # the addendum (the last paragraph) ends a line lower at each step
        set_note(case, words)
        rest, n = content_on_last_page(case)
        pages.add(n)
        assert rest, f"a note of {words} words: the last page holds only the closing lines"
    assert len(pages) > 1

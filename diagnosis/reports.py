"""Case report (HTML context and PDF via reportlab) and the admin action's export zip."""
import io
import tempfile

from django.conf import settings
from django.http import FileResponse
from django.utils import timezone

from . import selectors, services
from .formatting import format_date, format_when, person_name, signer_name

DECISION_SUPPORT_NOTE = (
    "The model's classification is decision support only (a pre-classification). "
    "The diagnosis is what the pathologist signed out: the final stage and, for single cells, "
    "the pathologist's blast/normal labels."
)


def report_context(case):
    smears = list(selectors.case_smears(case))
    versions = sorted({s.prediction.model_display for s in smears if hasattr(s, "prediction")})
    # Smears marked not assessable are listed apart and count nowhere (tables, screening summary).
    assessable = [s for s in smears if not s.not_assessable]
    fields = [s for s in assessable if s.kind != s.Kind.CELL]
    cells = [s for s in assessable if s.kind == s.Kind.CELL]
    screening = case.screening_summary()
    return {
        "smears": fields,
        "cells": cells,
        "not_assessable": [s for s in smears if s.not_assessable],
        "outside_domain": sum(1 for s in assessable if s.outside_domain),
        "screening": screening,
        "screening_text": selectors.screening_summary_text(case, reviewed=False, summary=screening),
        "screening_reviewed_text": selectors.screening_summary_text(case, reviewed=True, summary=screening),
        "model_versions": versions,
        "addenda": list(case.addenda.select_related("author")),
        "final_stage_display": selectors.label_display(case.final_stage) if case.final_stage else "",
        "signed_out_stage_display": selectors.label_display(case.signed_out_stage) if case.signed_out_stage else "",
        "decision_support_note": DECISION_SUPPORT_NOTE,
        "generated_at": timezone.now(),
        "lab": lab_header(),
    }


def lab_header() -> dict:
    """The laboratory's header lines from settings (LAB_NAME, LAB_ADDRESS, LAB_ACCREDITATION)."""
    return {
        "name": settings.LAB_NAME,
        "address": settings.LAB_ADDRESS,
        "accreditation": settings.LAB_ACCREDITATION,
    }


def _image_flowable(field, width_cm):
    from reportlab.lib.units import cm
    from reportlab.platypus import Image as RLImage
    from reportlab.platypus import Paragraph

    try:
        with field.open("rb") as fh:
            data = io.BytesIO(fh.read())
        from PIL import Image

        with Image.open(data) as img:
            w, h = img.size
        data.seek(0)
        width = width_cm * cm
        return RLImage(data, width=width, height=width * h / w)
    except Exception:
        return Paragraph("(image unavailable)", _styles()["Normal"])


def _styles():
    """reportlab's sample styles, set in the bundled Unicode fonts."""
    from reportlab.lib.styles import getSampleStyleSheet

    from . import pdf_fonts

    pdf_fonts.register()
    styles = getSampleStyleSheet()
    for style in styles.byName.values():
        bold = "Bold" in getattr(style, "fontName", "") or style.name.startswith(("Heading", "Title"))
        italic = "Italic" in style.name or "Oblique" in getattr(style, "fontName", "")
        style.fontName = pdf_fonts.BOLD if bold else pdf_fonts.ITALIC if italic else pdf_fonts.REGULAR
    return styles


def _numbered_canvas(footer_text):
    """A canvas class that writes "Page n of N" and the footer on every page
    (the total is known only after the last page, so pages are kept until then)."""
    from reportlab.lib.units import cm
    from reportlab.pdfgen import canvas

    from . import pdf_fonts

    class NumberedCanvas(canvas.Canvas):
        def __init__(self, *args, **kwargs):
            kwargs["initialFontName"] = kwargs.get("initialFontName") or pdf_fonts.REGULAR  # no Latin-1 font at all
            super().__init__(*args, **kwargs)
            self._pages = []

        def showPage(self):
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self.setFont(pdf_fonts.REGULAR, 8)
                width = self._pagesize[0]
                self.drawString(1.8 * cm, 1 * cm, footer_text)
                self.drawRightString(width - 1.8 * cm, 1 * cm, f"Page {self._pageNumber} of {total}")
                super().showPage()
            super().save()

    return NumberedCanvas


def case_report_pdf(case):
    """The case report as PDF bytes (reportlab, bundled Unicode fonts, no system libraries)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    from . import pdf_fonts

    ctx = report_context(case)
    styles = _styles()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=A4, title=f"LeukPortal case report {case.accession_number}", author="LeukPortal",
        leftMargin=1.8 * cm, rightMargin=1.8 * cm, topMargin=1.5 * cm, bottomMargin=1.8 * cm,
        initialFontName=pdf_fonts.REGULAR,
    )
    p = lambda text, style="Normal": Paragraph(pdf_fonts.markup(text), styles[style])  # noqa: E731
    lab = ctx["lab"]
    story = [p(lab["name"], "Heading2")]
    story += [p(line) for line in (lab["address"], lab["accreditation"]) if line]
    story.append(p(f"Case report {case.accession_number}", "Title"))
    if case.is_cancelled:
        story.append(p(f"Cancelled on {format_when(case.cancelled_at)} by {person_name(case.cancelled_by)}; no "
                       f"result. Reason: {case.cancel_reason}", "Heading3"))
    elif not case.is_signed_out:
        story.append(p("Not signed out: this is a preliminary report.", "Heading3"))
    signer = signer_name(case)
    info = [
        ["Patient", case.report_patient_lab_id, "Accession", case.accession_number],
        ["Sex", case.report_patient_sex_display, "Birth year", str(case.report_patient_birth_year or "–")],
        ["Specimen", case.get_specimen_type_display(), "Collected", format_date(case.collection_date)],
        ["Case opened", format_when(case.created_at), "Opened by", person_name(case.created_by)],
        ["Final stage", ctx["final_stage_display"] or ("none (single cells only)" if ctx["cells"] and not ctx["smears"]
                                                      else "not set"), "Model", ", ".join(ctx["model_versions"]) or "–"],
        ["Signed out by", signer or "NOT SIGNED OUT", "Signed out at", format_when(case.signed_out_at)],
    ]
    if case.signed_out_stage and case.signed_out_stage != case.final_stage:
        info.append(["Stage at sign-out", ctx["signed_out_stage_display"], "Amended by", "addendum (below)"])
    cell = styles["BodyText"].clone("InfoCell", fontSize=9, leading=11)
    head = cell.clone("InfoHead", fontName=pdf_fonts.BOLD)
    rows = [[Paragraph(pdf_fonts.markup(v), head if i % 2 == 0 else cell) for i, v in enumerate(row)] for row in info]
    table = Table(rows, colWidths=[3.2 * cm, 5.3 * cm, 3.2 * cm, 5.3 * cm])
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("FONTNAME", (0, 0), (-1, -1), pdf_fonts.REGULAR),
    ]))
    story += [table, Spacer(1, 0.3 * cm)]
    if case.review_comment:
        story += [p("Pathologist's comment", "Heading3"), p(case.review_comment)]
    if case.clinical_note:
        story += [p("Clinical note", "Heading3"), p(case.clinical_note)]
    if ctx["smears"] or not ctx["cells"]:
        story += [p("Smears", "Heading2")]
        story.append(_smear_table(ctx["smears"], styles, p))
    if ctx["cells"]:
        story += [p("Single-cell screening (blast vs normal)", "Heading2"),
                  p(ctx["screening_text"]), p(ctx["screening_reviewed_text"]),
                  p("The screening model flags a cell for review when P(blast) is at least its threshold, which was "
                    "chosen for a sensitivity of at least 0.95: it prefers false alarms to missed blasts. The "
                    "pathologist's label is the one that calls a cell blast or normal.", "Italic"),
                  _cell_table(ctx["cells"], styles, p)]
    shortened = [smear for smear in (*ctx["smears"], *ctx["cells"]) if _shortened_reason(smear)]
    if shortened:
        story += [p("Review reasons in full", "Heading2")]
        for smear in shortened:
            story.append(_lines(f"{smear.original_filename}: {smear.review_reason.strip()}", styles))
    if ctx["not_assessable"]:
        story += [p("Not assessable (left out of every count)", "Heading2")]
        for smear in ctx["not_assessable"]:
            who = person_name(smear.not_assessable_by)
            story.append(p(f"{smear.original_filename}: {smear.not_assessable_reason} ({who})"))
    if ctx["addenda"]:
        story.append(p("Addenda", "Heading2"))
        for addendum in ctx["addenda"]:
            change = ""
            if addendum.new_final_stage:
                change = (f" Final stage changed from {selectors.label_display(addendum.previous_final_stage)} "
                          f"to {selectors.label_display(addendum.new_final_stage)}.")
            story.append(p(f"{format_when(addendum.created_at)} · {person_name(addendum.author)}: {addendum.text}{change}"))
    # The closing lines move to a new page only with the end of the report's content (a table's last row,
    # a paragraph's last lines), so that no page holds only the note and the "Generated" line.
    story.append(_keep_with_tail(story.pop(), [
        Spacer(1, 0.4 * cm), p(DECISION_SUPPORT_NOTE, "Italic"),
        p(f"Generated {format_when(ctx['generated_at'])} by LeukPortal.", "Italic")]))
    footer = f"{lab['name']} · case {case.accession_number}"
    doc.build(story, canvasmaker=_numbered_canvas(footer))
    return buf.getvalue()


def _keep_with_tail(body, tail):
    """`body` followed by the flowables `tail`, which are never split apart nor set on a page without (the end of)
    `body`: when they do not all fit, `body` is split so that its last row or line goes over with them."""
    from reportlab.platypus.flowables import _FUZZ, Flowable, _listWrapOn

    class KeepWithTail(Flowable):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def getSpaceBefore(self):
            return self.body.getSpaceBefore()

        def wrap(self, aW, aH):
            return aW, 0xffffff  # always asked to split (like KeepTogether), so never drawn itself

        def split(self, aW, aH):
            whole = [self.body, *tail]
            if _listWrapOn(whole, aW, self.canv)[1] <= aH + _FUZZ:
                return whole  # all of it fits here
            _, height = self.body.wrapOn(self.canv, aW, aH)
            # Leave at least the body's last row or line for the next page, where the tail goes.
            pieces = self.body.splitOn(self.canv, aW, min(aH, height - 1))
            if len(pieces) >= 2:
                return [*pieces[:-1], KeepWithTail(pieces[-1])]
            frame = getattr(self, "_frame", None)
            if frame is not None and getattr(frame, "_atTop", False):
                return whole  # an empty page cannot hold them together: let them flow as they are
            return []  # the body cannot be split: it goes to the next page with the tail

    return KeepWithTail(body)


OUTSIDE_DOMAIN = "Outside the model's domain: no suggestion"


def model_text(smear):
    """The model's answer for a report row: the suggestion, or why there is none."""
    pred = getattr(smear, "prediction", None)
    if pred is None:
        return smear.get_status_display()
    if not pred.in_domain:
        return f"{OUTSIDE_DOMAIN} ({pred.domain_reason})."
    if pred.is_screening:  # P(blast) and the threshold have their own columns in the cell table
        return selectors.screen_call_display(pred.label)
    return (f"{pred.label_display} ({pred.confidence:.2f})\n" +
            " ".join(f"{selectors.label_display(k)} {v:.2f}" for k, v in pred.ordered_probabilities()) +
            f"\n{pred.model_display}")


# A table row cannot break across pages: a reason of up to 1,000 characters (or 70 line breaks) in the 3 cm
# "Final label" column would be taller than a page and the PDF could not be built. The table shows the start;
# the section "Review reasons in full" below the tables (paragraphs, which do break) has the rest.
REASON_IN_TABLE = 120


def _shortened_reason(smear) -> str | None:
    """The reason as one line of at most REASON_IN_TABLE characters, or None when it is shown whole."""
    whole = (smear.review_reason or "").strip()
    if len(whole) <= REASON_IN_TABLE and whole.count("\n") < 3:
        return None
    reason = " ".join(whole.split())
    return reason[:REASON_IN_TABLE].rstrip() + "… (in full below)"


def _final_text(smear):
    final = selectors.label_display(smear.review_label) if smear.review_label else "not reviewed"
    if smear.review_reason:
        heading = "Note" if smear.review_state == "labelled" else "Reason"  # an own label has a note, not a reason
        final += f"\n{heading}: {_shortened_reason(smear) or smear.review_reason.strip()}"
    return final


def _lines(text, styles):
    """A table cell of several lines, in the Unicode fonts, wrapping long words."""
    from reportlab.platypus import Paragraph

    from . import pdf_fonts

    return Paragraph("<br/>".join(pdf_fonts.markup(line) for line in str(text).split("\n")), styles["BodyText"])


def _table_style(table):
    from reportlab.lib import colors
    from reportlab.platypus import TableStyle

    from . import pdf_fonts

    table.setStyle(TableStyle([
        ("FONTNAME", (0, 0), (-1, 0), pdf_fonts.BOLD), ("FONTNAME", (0, 1), (-1, -1), pdf_fonts.REGULAR), ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONTSIZE", (0, 0), (-1, -1), 8),
    ]))
    return table


def _cell_table(cells, styles, p):
    from reportlab.lib.units import cm
    from reportlab.platypus import Table

    rows = [["Image", "Heat map", "Cell", "Model label", "P(blast)", "Threshold", "Final label"]]
    for smear in cells:
        pred = getattr(smear, "prediction", None)
        heat = _heat_cell(pred, 2.2, p)
        rows.append([
            _image_flowable(smear.thumbnail, 2.2) if smear.thumbnail else p("–"), heat,
            p(smear.original_filename, "BodyText"),
            p(model_text(smear)),
            p(f"{pred.blast_probability:.2f}" if pred and pred.in_domain else "–"),
            p(f"{pred.threshold:.2f}" if pred and pred.threshold is not None else "–"),
            _lines(_final_text(smear), styles),
        ])
    return _table_style(Table(rows, colWidths=[2.5 * cm, 2.5 * cm, 3.2 * cm, 2.2 * cm, 1.8 * cm, 1.9 * cm, 3 * cm],
                              repeatRows=1))


def _heat_cell(pred, size, p):
    if pred is not None and pred.has_shown_heatmap:
        return _image_flowable(pred.heatmap, size)
    return p(pred.heatmap_note if pred is not None else "heat map unavailable")


def _smear_table(smears, styles, p):
    from reportlab.lib.units import cm
    from reportlab.platypus import Table

    rows = [["Thumbnail", "Heat map", "Smear", "Model", "Final label"]]
    for smear in smears:
        pred = getattr(smear, "prediction", None)
        model = model_text(smear)
        heat = _heat_cell(pred, 3.2, p)
        final = _final_text(smear)
        rows.append([
            _image_flowable(smear.thumbnail, 3.2) if smear.thumbnail else p("–"), heat,
            p(smear.original_filename, "BodyText"),
            _lines(model, styles),
            _lines(final, styles),
        ])
    return _table_style(Table(rows, colWidths=[3.5 * cm, 3.5 * cm, 3.3 * cm, 3.7 * cm, 3 * cm], repeatRows=1))


def export_zip_response(smears, user, cases):
    """The export of a few selected cases (the case admin's action) as a zip
    download made in the request, recorded as taken by ``user``
    (ExportDownload); the portal's export of every reviewed smear is built by a
    worker instead (ReviewedExport)."""
    out = tempfile.TemporaryFile()
    images = services.write_export_zip(out, smears)
    services.record_download(user, image_count=images, cases=cases)
    out.seek(0)
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    return FileResponse(out, as_attachment=True, filename=f"leukportal-reviewed-{stamp}.zip",
                        content_type="application/zip")

"""Accessibility of the portal's pages, checked without a browser: every page
each role uses all day, rendered by Django's test client with realistic data
(classified fields with heat maps, single cells, a case in review, a signed-out
case with an addendum, a failed smear, a rejected upload, an export,
notifications), then read with html.parser for the structural rules an axe-core
audit found broken (scripts/axe_audit.py runs axe itself, outside this suite):

* <html lang>, one <h1>, headings that never skip a level;
* every visible form control has a name: <label for>, a wrapping <label>,
  aria-label or aria-labelledby (a placeholder is not a label);
* every <img> has alt, every button and link has text or aria-label;
* every table has header cells, and no header cell is empty;
* one <main>, navigation landmarks that can be told apart, unique ids;
* the portal's own badge colours reach a WCAG contrast of 4.5:1 with their text.
"""
import datetime
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from diagnosis import services
from diagnosis.models import Case, Patient
from tests.portal_testutils import image_bytes
from tests.screening.conftest import screening_result, staging_result

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
NO_NAME_NEEDED = {"hidden", "submit", "button", "reset", "image"}


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.text = [], []

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def hidden(self):
        """Hidden from everyone: the element or an ancestor has `hidden` or aria-hidden="true"."""
        return any("hidden" in n.attrs or n.attrs.get("aria-hidden") == "true" for n in (self, *self.ancestors()))

    def all_text(self):
        parts = list(self.text)
        for child in self.children:
            parts.append(child.all_text())
            if child.tag == "img":
                parts.append(child.attrs.get("alt") or "")
        return " ".join(p for p in parts if p).strip()

    def __repr__(self):
        attrs = " ".join(k if v is None else f'{k}="{v}"' for k, v in self.attrs.items())
        return f"<{self.tag} {attrs}>"


class Page(HTMLParser):
    """The page as a tree of elements (enough of one for these rules)."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.current = self.root
        self.elements = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.current)
        self.current.children.append(element)
        self.elements.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.current = self.current.parent

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        if data.strip():
            self.current.text.append(data.strip())

    def find(self, *tags):
        return [e for e in self.elements if e.tag in tags]


def accessible_name(page, element):
    """The name a screen reader announces (simplified accname): aria-labelledby, aria-label, <label>, text."""
    ids = {e.attrs["id"]: e for e in page.elements if e.attrs.get("id")}
    labelledby = [ids[i] for i in (element.attrs.get("aria-labelledby") or "").split() if i in ids]
    if labelledby:
        return " ".join(e.all_text() for e in labelledby).strip()
    if (element.attrs.get("aria-label") or "").strip():
        return element.attrs["aria-label"].strip()
    if element.tag in ("input", "select", "textarea"):
        if element.attrs.get("id"):
            for label in page.find("label"):
                if label.attrs.get("for") == element.attrs["id"]:
                    return label.all_text()
        for ancestor in element.ancestors():
            if ancestor.tag == "label":
                return ancestor.all_text()
        return ""
    return element.all_text() or (element.attrs.get("title") or "").strip()


# ---- the pages -------------------------------------------------------------------------------------------------

@pytest.fixture
def portal(make_user, technician, pathologist, smear_factory):
    """The demo portal: {name: url} of its pages with ids filled in."""
    tech = technician

    def classify(case, results, kind="field", heatmaps=True):
        smears = []
        for result in results:
            smear = smear_factory(status="processing" if result else "queued", case_=case, kind=kind)
            if result == "fail":
                services.mark_failed(smear.pk, "The image could not be decoded.")
            elif result:
                services.record_prediction(smear.pk, result, 5)
                smear.refresh_from_db()
                if heatmaps and smear.prediction.in_domain:
                    services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", seed=smear.pk))
            smear.refresh_from_db()
            smears.append(smear)
        services.refresh_case(case)
        return smears

    def new_case(patient, accession, note=""):
        return Case.objects.create(patient=patient, accession_number=accession, clinical_note=note, created_by=tech,
                                   collection_date=datetime.date(2026, 11, 2))

    p1 = Patient.objects.create(lab_id="P-1042", sex="F", birth_year=1984, created_by=tech)
    p2 = Patient.objects.create(lab_id="P-4410", sex="M", birth_year=2011, created_by=tech)

    signed = new_case(p1, "ACC-2026-0101", "Follow-up after induction.")
    classify(signed, [staging_result("Benign", 0.9), staging_result("Early", 0.5)])
    services.confirm_remaining(signed, pathologist)
    signed.refresh_from_db()
    services.sign_out(signed, pathologist, "Benign", "Reactive lymphocytes; no blasts.")
    services.add_addendum(signed, pathologist, "Flow cytometry confirms: no blasts.", "Early")

    in_review = new_case(p1, "ACC-2026-0187", "Suspected relapse.")
    outside = {**staging_result("Pre", 0.3), "in_domain": False, "domain_score": 0.01}
    smears = classify(in_review, [staging_result("Pre"), staging_result("Pro", 0.45), staging_result("Early", 0.7),
                                  outside])
    services.review_smear(smears[0], pathologist, "Pre")
    services.review_smear(smears[1], pathologist, "Pre", "Blasts with fine chromatin.")
    services.mark_not_assessable(smears[2], pathologist, "Out of focus.")
    services.add_smears(in_review, [SimpleUploadedFile("lab-report.pdf", b"%PDF-1.4 not an image")], tech,
                        kind="field")

    cells = new_case(p2, "ACC-2026-0205")
    classify(cells, [screening_result(0.9), screening_result(0.1),
                     {**screening_result(0.2), "in_domain": False, "domain_score": 0.01}], kind="cell")

    pending = new_case(p2, "ACC-2026-0199")
    classify(pending, [None, "fail"], heatmaps=False)

    export, _ = services.request_export(pathologist)
    services.build_export(export.pk)

    return {
        "login": (None, "/accounts/login/"),
        "signup": (None, "/accounts/signup/"),
        "pending role": (make_user(None), "/accounts/pending/"),
        "case list": (tech, "/cases/"),
        "case list, no match": (tech, "/cases/?q=nothing&state=signed_out"),
        "new case": (tech, "/cases/new/"),
        "new patient": (tech, "/patients/new/"),
        "patient list": (tech, "/patients/"),
        "patient detail": (tech, p1.get_absolute_url()),
        "case detail, in review": (tech, in_review.get_absolute_url()),
        "case detail, pending": (tech, pending.get_absolute_url()),
        "case detail, cells": (tech, cells.get_absolute_url()),
        "case detail, signed out": (pathologist, signed.get_absolute_url()),
        "upload": (tech, f"/cases/{pending.pk}/upload/"),
        "my uploads": (tech, "/uploads/"),
        "notifications": (tech, "/notifications/"),
        "password change": (tech, "/accounts/password/change/"),
        "review queue": (pathologist, "/review/"),
        "review, fields": (pathologist, f"/cases/{in_review.pk}/review/"),
        "review, cells": (pathologist, f"/cases/{cells.pk}/review/"),
        "review, signed out": (pathologist, f"/cases/{signed.pk}/review/"),
        "gallery": (pathologist, f"/cases/{in_review.pk}/gallery/"),
        "report, signed out": (pathologist, f"/cases/{signed.pk}/report/"),
        "report, cells": (pathologist, f"/cases/{cells.pk}/report/"),
        "dashboard": (pathologist, "/review/dashboard/"),
        "exports": (pathologist, "/review/exports/"),
        "two-factor": (pathologist, "/accounts/2fa/"),
        "models": (tech, "/models/"),
        "model card, staging": (pathologist, "/models/staging/"),
        "model card, screening": (pathologist, "/models/screening/"),
    }


PAGES = ["login", "signup", "pending role", "case list", "case list, no match", "new case", "new patient",
         "patient list", "patient detail", "case detail, in review", "case detail, pending", "case detail, cells",
         "case detail, signed out", "upload", "my uploads", "notifications", "password change", "review queue",
         "review, fields", "review, cells", "review, signed out", "gallery", "report, signed out", "report, cells",
         "dashboard", "exports", "two-factor", "models", "model card, staging", "model card, screening"]


RENDERED = {}  # page name -> HTML: the portal is built and every page rendered once, by the first test that asks


@pytest.fixture
def rendered(request):
    if not RENDERED:
        for name, (user, url) in request.getfixturevalue("portal").items():
            client = Client()
            if user is not None:
                client.force_login(user)
            response = client.get(url)
            assert response.status_code == 200, (name, url, response.status_code)
            RENDERED[name] = response.content.decode()
    return RENDERED


@pytest.fixture(params=PAGES)
def page(request, rendered):
    return Page(rendered[request.param])


def test_every_page_is_listed(rendered):
    assert sorted(rendered) == sorted(PAGES)


# ---- the rules ---------------------------------------------------------------------------------------------------

def test_language_is_declared(page):
    assert page.find("html")[0].attrs.get("lang") == "en"


def test_one_h1_and_no_skipped_heading_level(page):
    headings = [e for e in page.find("h1", "h2", "h3", "h4", "h5", "h6") if not e.hidden()]
    assert [h.tag for h in headings].count("h1") == 1, [h.all_text() for h in headings if h.tag == "h1"]
    assert headings[0].tag == "h1", headings[0].all_text()
    level = 1
    for h in headings:
        assert int(h.tag[1]) <= level + 1, f"{h.tag} {h.all_text()!r} follows an h{level}"
        level = int(h.tag[1])
    assert all(h.all_text() for h in headings)


def test_every_form_control_has_a_label(page):
    unnamed = []
    for control in page.find("input", "select", "textarea"):
        if control.attrs.get("type", "text") in NO_NAME_NEEDED or control.hidden():
            continue
        if not accessible_name(page, control):
            unnamed.append(control)
    assert not unnamed, f"no label, aria-label or aria-labelledby: {unnamed}"


def test_every_image_has_alt_text(page):
    for img in page.find("img"):
        assert "alt" in img.attrs, img
        assert img.attrs["alt"].strip() or img.attrs.get("role") == "presentation", img


def test_every_button_and_link_has_a_name(page):
    for element in page.find("button", "a"):
        if element.tag == "a" and "href" not in element.attrs:
            continue
        assert accessible_name(page, element), element


def test_tables_have_header_cells_and_none_is_empty(page):
    for table in page.find("table"):
        cells = [e for e in page.elements if e.tag == "th" and table in e.ancestors()]
        assert cells, table
        for th in cells:
            assert accessible_name(page, th), f"empty header cell in {table}"


def test_landmarks_and_unique_ids(page):
    assert len(page.find("main")) == 1
    navs = page.find("nav")
    names = [accessible_name(page, n) if n.attrs.get("aria-label") or n.attrs.get("aria-labelledby") else ""
             for n in navs]
    assert len(set(names)) == len(names), f"navigation landmarks cannot be told apart: {names}"
    ids = [e.attrs["id"] for e in page.elements if e.attrs.get("id")]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_aria_references_point_to_elements_on_the_page(page):
    ids = {e.attrs["id"] for e in page.elements if e.attrs.get("id")}
    for element in page.elements:
        for attr in ("aria-labelledby", "aria-describedby", "aria-controls"):
            for ref in (element.attrs.get(attr) or "").split():
                assert ref in ids, f"{attr}={ref!r} on {element} points to nothing"


# ---- colour contrast ------------------------------------------------------------------------------------------

def relative_luminance(hex_colour):
    hex_colour = hex_colour.lstrip("#")
    if len(hex_colour) == 3:
        hex_colour = "".join(c * 2 for c in hex_colour)
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b):
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_contrast_formula():
    assert contrast("#000", "#fff") == pytest.approx(21)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def css_rules(path):
    """{selector: {property: value}} of a plain stylesheet (no nesting but @media/@page skipped)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    text = re.sub(r"@(media|page)[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", text)
    rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        declarations = dict((k.strip(), v.replace("!important", "").strip())
                            for k, v in (d.split(":", 1) for d in body.split(";") if ":" in d))
        for selector in selectors.split(","):
            rules.setdefault(selector.strip(), {}).update(declarations)
    return rules


def test_the_zoomable_image_viewer_can_be_scrolled_from_the_keyboard(rendered):
    """A zoomed smear scrolls inside its viewer: the viewer takes the focus (axe: scrollable-region-focusable)
    and says which image it holds."""
    for name in ("review, fields", "review, cells"):
        page = Page(rendered[name])
        viewers = [e for e in page.elements if "viewer" in (e.attrs.get("class") or "").split()]
        assert viewers
        for viewer in viewers:
            assert viewer.attrs.get("tabindex") == "0", viewer
            assert viewer.attrs.get("aria-label", "").startswith("Image "), viewer


# The backgrounds the portal's text sits on: the page (body.bg-light), cards and tables, a grey alert box.
PAGE_BG, CARD_BG, SECONDARY_ALERT_BG = "#f8f9fa", "#ffffff", "#e2e3e5"
BADGE_TEXT = "#ffffff"  # Bootstrap's .badge text colour, unless the portal's stylesheet sets another


def test_the_portal_stylesheet_comes_after_bootstrap():
    base = (REPO / "templates" / "base.html").read_text()
    assert base.index("bootstrap.min.css") < base.index("leukportal.css")


def test_badge_colours_reach_aa_contrast():
    rules = css_rules(REPO / "static" / "leukportal.css")
    badges = {selector: decl for selector, decl in rules.items()
              if "background-color" in decl
              and re.fullmatch(r"\.(stage|smear-status|case-status|case-state|flag)-[\w-]+", selector)
              and not selector.startswith(".stage-bg-")}
    assert {".stage-Pre", ".stage-Early", ".case-state-awaiting_review", ".smear-status-done",
            ".flag-low"} <= set(badges)
    for selector, decl in badges.items():
        text, background = decl.get("color", BADGE_TEXT), decl["background-color"]
        ratio = contrast(text, background)
        assert ratio >= 4.5, f"{selector}: {text} on {background} is {ratio:.2f}:1"


def test_link_code_and_outline_button_colours_reach_aa_contrast():
    rules = css_rules(REPO / "static" / "leukportal.css")
    root = rules[":root"]
    link = root["--bs-link-color"]
    assert tuple(int(link[i:i + 2], 16) for i in (1, 3, 5)) == tuple(
        int(c) for c in root["--bs-link-color-rgb"].split(","))  # Bootstrap colours links from the -rgb twin
    checks = [("links", link, (PAGE_BG, CARD_BG)), ("code", root["--bs-code-color"], (PAGE_BG, CARD_BG))]
    checks += [(f".btn-outline-{kind}", rules[f".btn-outline-{kind}"]["--bs-btn-color"], backgrounds)
               for kind, backgrounds in (("primary", (PAGE_BG, CARD_BG)),
                                         ("secondary", (PAGE_BG, CARD_BG, SECONDARY_ALERT_BG)),
                                         ("warning", (PAGE_BG, CARD_BG)))]
    for what, colour, backgrounds in checks:
        for background in backgrounds:
            ratio = contrast(colour, background)
            assert ratio >= 4.5, f"{what}: {colour} on {background} is {ratio:.2f}:1"

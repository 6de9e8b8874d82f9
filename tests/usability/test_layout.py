"""Layout: no page scrolls sideways, on a desktop (1366 px) or a phone (390 px), however long the names in it.

QA found, in headless Chromium, a 250-character file name without spaces stretching the review page to 2468 px
and the report to 2334 px; the audit trail breaking ordinary words ("Model predicti on"); tables on a phone
widening whole pages (the upload queue to 2319 px); and a 404 for /favicon.ico on every page. Fixed in
static/leukportal.css and the tables' markup:

* cells and boxes holding file names and model versions are marked .wrap-anywhere (they may break anywhere,
  so their table can shrink); no other cell breaks words, so the audit trail keeps "Model prediction" whole;
* every table of these pages sits in its own .table-responsive box, which scrolls if the table is still too
  wide: the page never does;
* on a phone the columns a technician or pathologist can do without are hidden (.hide-on-phone, a rule for
  screens only: a printed report keeps every column);
* base.html links an SVG favicon from static/ (the CSP's img-src 'self' allows it).

Most checks read the stylesheet and the rendered pages (no browser); one drives headless Chromium and measures
document.documentElement.scrollWidth, skipped where Chromium or Playwright is missing.
"""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.views import serve
from django.core.files.uploadedfile import SimpleUploadedFile
from django.templatetags.static import static
from django.test import Client, RequestFactory

from diagnosis import services
from diagnosis.models import Case, Patient, Smear
from tests.portal_testutils import browser_login
from tests.screening.conftest import staging_result
from tests.usability.test_accessibility import Page

pytestmark = pytest.mark.django_db  # (the browser test, below, asks for a transactional one)

REPO = Path(__file__).resolve().parents[2]
CSS = REPO / "static" / "leukportal.css"
LONG_NAME = "blood_smear_field_" + "x" * 190 + "_scanner_ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # 243 characters, no space
LONG_VERSION = "2026.11.02-efficientnet_b0-finetuned-taleqani-fold1-sha256-3f9a1c2be7d04a55"
PAGES = ["case list", "case detail", "review", "report", "review queue", "my uploads", "exports"]
# The columns each page keeps on a phone (header text): what a technician or pathologist works with there.
KEPT_ON_PHONE = {
    "case list": {"Accession", "Patient", "State · final stage"},
    "review queue": {"Accession", "Flags", "Action"},
    "my uploads": {"File", "Case", "Status", "Action", "Why it was rejected"},
    "exports": {"Asked for", "By", "Status", "Download"},
    "report": {"Image", "Smear", "Model", "Final label", "Cell", "Model label"},
    "case detail": {"When", "Event", "Who", "Change", "Reason / detail", "File", "Reason"},
}


def build_portal(technician, pathologist, smear_factory):
    """Cases whose smears carry 250-character file names and a long model version: one in review (a rejected
    upload with a long name, a smear not assessable), one signed out with a smear not assessable, an export.
    Returns {page name: (user, url)}."""
    patient = Patient.objects.create(lab_id="P-1042", sex="F", birth_year=1984, created_by=technician)

    def case_with_smears(accession, stages):
        case = Case.objects.create(patient=patient, accession_number=accession, created_by=technician,
                                   clinical_note="Suspected relapse.")
        smears = []
        for n, stage in enumerate(stages):
            smear = smear_factory(status="processing", case_=case)
            Smear.objects.filter(pk=smear.pk).update(original_filename=f"{LONG_NAME}-{n}.png")
            services.record_prediction(smear.pk, staging_result(stage, 0.7, version=LONG_VERSION), 5)
            smear.refresh_from_db()
            smears.append(smear)
        services.refresh_case(case)
        return case, smears

    in_review, smears = case_with_smears("ACC-2026-0187", ["Pre", "Pro", "Early"])
    services.review_smear(smears[0], pathologist, "Pre")
    services.mark_not_assessable(smears[1], pathologist, "Out of focus.")
    services.add_smears(in_review, [SimpleUploadedFile(f"{LONG_NAME}.pdf", b"%PDF-1.4 not an image")], technician,
                        kind="field")
    signed, smears = case_with_smears("ACC-2026-0101", ["Benign", "Early"])
    services.mark_not_assessable(smears[1], pathologist, "Smudged.")
    signed.refresh_from_db()
    services.confirm_remaining(signed, pathologist)
    signed.refresh_from_db()
    services.sign_out(signed, pathologist, "Benign", "Reactive lymphocytes; no blasts.")
    export, _ = services.request_export(pathologist)
    services.build_export(export.pk)
    return {
        "case list": (technician, "/cases/"),
        "case detail": (pathologist, in_review.get_absolute_url()),
        "review": (pathologist, f"/cases/{in_review.pk}/review/"),
        "report": (pathologist, f"/cases/{signed.pk}/report/"),
        "review queue": (pathologist, "/review/"),
        "my uploads": (technician, "/uploads/"),
        "exports": (pathologist, "/review/exports/"),
    }


RENDERED = {}  # page name -> HTML, rendered once by the first test that asks


@pytest.fixture
def rendered(request):
    if not RENDERED:
        for name, (user, url) in request.getfixturevalue("portal").items():
            client = Client()
            client.force_login(user)
            response = client.get(url)
            assert response.status_code == 200, (name, url, response.status_code)
            RENDERED[name] = response.content.decode()
    return RENDERED


@pytest.fixture
def portal(db, technician, pathologist, smear_factory):
    return build_portal(technician, pathologist, smear_factory)


def classes(element):
    return set((element.attrs.get("class") or "").split())


# ---- the stylesheet -------------------------------------------------------------------------------------------

def css_blocks():
    """[(at-rule or "", selector, {property: value})] of leukportal.css, one level of @media/@page nesting."""
    text = re.sub(r"/\*.*?\*/", "", CSS.read_text(), flags=re.S)
    blocks = []
    for match in re.finditer(r"(@[^{]+)\{((?:[^{}]*\{[^{}]*\})*[^{}]*)\}|([^{}@]+)\{([^{}]*)\}", text):
        at, inner, selectors, body = match.groups()
        rules = re.findall(r"([^{}]+)\{([^{}]*)\}", inner) if at else [(selectors, body)]
        for sel, decl in rules:
            declarations = {k.strip(): v.replace("!important", "").strip()
                            for k, v in (d.split(":", 1) for d in decl.split(";") if ":" in d)}
            for selector in sel.split(","):
                blocks.append(((at or "").strip(), selector.strip(), declarations))
    return blocks


def declarations(selector, at=""):
    found = {}
    for rule_at, rule_selector, decl in css_blocks():
        if rule_selector == selector and rule_at == at:
            found.update(decl)
    return found


def test_names_and_versions_may_break_anywhere_but_ordinary_words_do_not():
    assert declarations(".wrap-anywhere").get("overflow-wrap") == "anywhere"
    assert declarations("td.wrap-anywhere").get("min-width")  # a column of names keeps a readable width
    for at, selector, decl in css_blocks():
        if decl.get("overflow-wrap") == "anywhere" or decl.get("word-break") in ("break-all", "break-word"):
            # Only name cells and rendered markdown may break anywhere: never whole tables such as the audit
            # trail, where it broke "Model prediction" and "worker" mid-word.
            assert "wrap-anywhere" in selector or selector.startswith(".model-card"), selector
    assert declarations("main").get("overflow-wrap") == "break-word"  # a single over-long word still breaks


def test_model_card_tables_keep_numbers_whole_and_the_two_factor_secret_shows_whole():
    assert declarations(".model-card td").get("white-space") == "nowrap"  # "0.0156", never "0.015 / 6"
    assert declarations(".model-card td").get("overflow-wrap") == "normal"
    assert declarations("#authenticator_secret").get("width") == "100%"  # allauth's input cut the key at 20


def test_wide_tables_scroll_in_their_own_box_and_print_whole():
    assert declarations(".table-responsive").get("position") == "relative"  # holds its visually hidden labels
    assert declarations(".table-responsive", "@media print").get("overflow") == "visible"
    hiding = [(at, decl) for at, selector, decl in css_blocks() if selector == ".hide-on-phone"]
    assert hiding == [("@media screen and (max-width: 767.98px)", {"display": "none"})]  # screens only, not print


# ---- the pages --------------------------------------------------------------------------------------------------

@pytest.fixture(params=PAGES)
def page(request, rendered):
    return request.param, Page(rendered[request.param])


def test_every_table_sits_in_its_own_scrolling_box(page):
    name, page = page
    tables = page.find("table")
    assert tables, name
    for table in tables:
        if "report-info" in classes(table):
            continue  # the report's key-value table reflows into one column on a phone instead
        assert any("table-responsive" in classes(a) for a in table.ancestors()), f"{name}: {table}"


def test_long_file_names_and_model_versions_may_wrap(page, rendered):
    """Every element that shows a long name or version either may break it (.wrap-anywhere) or cuts it short
    (.text-truncate), where a table cell or a flex item would otherwise grow to fit it."""
    name, page = page
    shown = [e for e in page.elements if any(LONG_NAME in t or LONG_VERSION in t for t in e.text)]
    assert shown or name in ("case list", "review queue", "exports"), name
    for element in shown:
        for node in (element, *element.ancestors()):
            if node.tag == "main":
                break
            in_flex_row = node.parent is not None and "d-flex" in classes(node.parent)
            if node.tag == "td" or in_flex_row:
                assert classes(node) & {"wrap-anywhere", "text-truncate", "overflow-hidden"}, f"{name}: {node}"
                break


def test_columns_hidden_on_a_phone_line_up_and_keep_what_is_needed(page):
    name, page = page
    for table in page.find("table"):
        header_rows = [e for e in page.elements
                       if e.tag == "tr" and e.parent.tag == "thead" and e.parent.parent is table]
        if not header_rows:
            continue
        headers = [c for c in header_rows[0].children if c.tag in ("th", "td")]
        hidden = [i for i, c in enumerate(headers) if "hide-on-phone" in classes(c)]
        body_rows = [e for e in page.elements if e.tag == "tr" and e.parent.tag == "tbody" and e.parent.parent is table]
        for row in body_rows:
            cells = [c for c in row.children if c.tag in ("th", "td")]
            if any("colspan" in c.attrs for c in cells):
                continue  # an empty-table message spans every column
            assert [i for i, c in enumerate(cells) if "hide-on-phone" in classes(c)] == hidden, f"{name}: {row}"
        kept = {(c.all_text() or "").strip() for c in headers if "hide-on-phone" not in classes(c)}
        must_keep = {h.all_text().strip() for h in headers} & KEPT_ON_PHONE.get(name, set())
        assert must_keep <= kept, f"{name}: {must_keep - kept} hidden on a phone"


def test_the_case_header_buttons_wrap_on_a_phone(rendered):
    """The title and the row of buttons beside it: on a phone the buttons go below the title, and onto as many
    lines as they need; from 768 px on they stay beside it, as before."""
    for name in ("case detail", "review"):
        h1 = Page(rendered[name]).find("h1")[0]
        row = h1.parent.parent  # <div class="d-flex ..."><div><h1>
        assert {"d-flex", "flex-wrap", "flex-md-nowrap"} <= classes(row), (name, row)
        buttons = [c for c in row.children if c is not h1.parent]
        assert buttons and all("flex-wrap" in classes(b) for b in buttons), (name, buttons)


# ---- the favicon ------------------------------------------------------------------------------------------------

def test_every_page_links_a_favicon_that_is_served_and_allowed(rendered):
    href = static("favicon.svg")
    for name, html in rendered.items():
        icons = [e for e in Page(html).find("link") if e.attrs.get("rel") == "icon"]
        assert [(e.attrs.get("href"), e.attrs.get("type")) for e in icons] == [(href, "image/svg+xml")], name
    path = finders.find("favicon.svg")
    assert path, "static/favicon.svg is missing"
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
    assert Path(path).stat().st_size < 2048
    # What runserver and the live server send (insecure: the tests run with DEBUG off, which refuses otherwise).
    response = serve(RequestFactory().get(href), "favicon.svg", insecure=True)
    assert response.status_code == 200 and response["Content-Type"] == "image/svg+xml"
    # Same origin, which the Content-Security-Policy's img-src allows ('self').
    assert href.startswith("/") and "'self'" in settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]["img-src"]


# ---- in a browser -----------------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_no_page_scrolls_sideways_on_a_phone_or_a_desktop(browser, live_server, technician, pathologist,
                                                         smear_factory):
    pages = build_portal(technician, pathologist, smear_factory)
    base = live_server.url
    too_wide, failed = [], []
    for width in (390, 1366):
        tabs = {}
        for user in (technician, pathologist):
            tab = browser.new_context(viewport={"width": width, "height": 900}).new_page()
            tab.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
            browser_login(tab, base, user)
            tabs[user.pk] = tab
        for name, (user, url) in pages.items():
            tab = tabs[user.pk]
            tab.goto(base + url)
            scroll_width = tab.evaluate("document.documentElement.scrollWidth")
            if scroll_width > width:
                too_wide.append((name, width, scroll_width))
            if name == "report" and width == 390:
                # On paper every column is back: the phone's hidden columns are hidden on screens only.
                tab.emulate_media(media="print")
                shown = tab.eval_on_selector_all(".report-sheet th", "ths => ths.map(th => getComputedStyle(th).display)")
                assert "none" not in shown, shown
                tab.emulate_media(media="screen")
    assert not too_wide, f"pages wider than the window (page, window, scrollWidth): {too_wide}"
    assert not failed, failed  # no /favicon.ico 404 among them

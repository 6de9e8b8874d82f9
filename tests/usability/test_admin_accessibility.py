"""Accessibility of the Django admin, checked without a browser (scripts/axe_audit.py --only admin runs axe-core on
it, outside this suite): what the audit found and the portal fixed, kept fixed.

* every admin page loads the portal's admin stylesheet and script (templates/admin/base_site.html extends Django's);
* breadcrumb links are told apart from the text between them by more than colour (underlined);
* the highlighted option of an autocomplete list (the case form's patient) reaches 4.5:1, light and dark theme;
* the cases' "final stage" filter names every link (Django's filter of field values had an empty one);
* an add form shows no empty read-only inline table (empty header cells);
* on the admin's lists and forms every link and button has a name and every form control a label;
* the hooks static/leukportal_admin.js relies on in Django's Select2 and SelectFilter2 scripts are still there.
"""
import re
from pathlib import Path

import django
import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case
from tests.usability.test_accessibility import NO_NAME_NEEDED, Page, accessible_name, contrast, css_rules

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
ADMIN_STATIC = Path(django.__file__).parent / "contrib" / "admin" / "static" / "admin"
ADMIN_CSS, ADMIN_JS = REPO / "static" / "leukportal_admin.css", REPO / "static" / "leukportal_admin.js"


def admin_colours(theme):
    """Django's admin colour variables of a theme, var() references resolved: {"--primary": "#79aec8", ...}."""
    def block(path, selector):
        return re.search(re.escape(selector) + r"\s*\{(.*?)\}", (ADMIN_STATIC / "css" / path).read_text(), re.S)[1]

    colours = dict(re.findall(r"(--[\w-]+):\s*([^;]+);", block("base.css", 'html[data-theme="light"],\n:root')))
    if theme == "dark":
        colours.update(re.findall(r"(--[\w-]+):\s*([^;]+);", block("dark_mode.css", 'html[data-theme="dark"]')))

    def resolve(value):
        reference = re.fullmatch(r"var\((--[\w-]+)\)", value.strip())
        return resolve(colours[reference[1]]) if reference else value.strip()

    return {name: resolve(value) for name, value in colours.items() if name.startswith("--")}


@pytest.fixture
def admin_client_(make_user):
    client = Client()
    client.force_login(make_user("Admin", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def demo(field, case, pathologist, technician, patient):
    """A signed-out case (final stage Pre) and an open one (none), with smears, predictions and audit events."""
    services.review_smear(field("Pre", 0.8), pathologist, "Pre")
    case.refresh_from_db()
    services.sign_out(case, pathologist, "Pre")
    open_case = Case.objects.create(patient=patient, accession_number="ACC-OPEN", created_by=technician)
    smear = case.smears.get()
    return {"signed": case, "open": open_case, "smear": smear, "event": AuditEvent.objects.filter(case=case).first()}


def admin_pages(demo, technician):
    """{page name: address}: the lists of every registered model, a search, a filtered list, change and view forms,
    add forms, a delete confirmation, the password change."""
    d, signed, open_, smear = "/admin/diagnosis", demo["signed"], demo["open"], demo["smear"]
    pages = {"index": "/admin/", "app index": f"{d}/"}
    pages.update({f"{model} list": f"{d}/{model}/" for model in (
        "patient", "case", "smear", "prediction", "auditevent", "caseaddendum", "rejectedupload", "reviewedexport")})
    pages.update({
        "user list": "/admin/accounts/user/", "group list": "/admin/auth/group/",
        "email address list": "/admin/account/emailaddress/", "authenticator list": "/admin/mfa/authenticator/",
        "case search": f"{d}/case/?q=ACC", "cases filtered": f"{d}/case/?final_stage=none",
        "patient change": f"{d}/patient/{signed.patient_id}/change/", "patient add": f"{d}/patient/add/",
        "case change": f"{d}/case/{open_.pk}/change/", "case view (signed out)": f"{d}/case/{signed.pk}/change/",
        "case add": f"{d}/case/add/", "case delete": f"{d}/case/{open_.pk}/delete/",
        "smear view": f"{d}/smear/{smear.pk}/change/",
        "prediction view": f"{d}/prediction/{smear.prediction.pk}/change/",
        "audit event view": f"{d}/auditevent/{demo['event'].pk}/change/",
        "user change": f"/admin/accounts/user/{technician.pk}/change/", "user add": "/admin/accounts/user/add/",
        "password change": "/admin/password_change/",
    })
    return pages


RENDERED = {}  # page name -> HTML: the admin's pages are rendered once, by the first test that asks


@pytest.fixture
def rendered(request):
    if not RENDERED:
        client = request.getfixturevalue("admin_client_")
        pages = admin_pages(request.getfixturevalue("demo"), request.getfixturevalue("technician"))
        for name, url in pages.items():
            response = client.get(url)
            assert response.status_code == 200, (name, url, response.status_code)
            RENDERED[name] = response.content.decode()
    return RENDERED


def header_named(page, th):
    """A header cell's name: its text, or the name of the control it holds (the select-all checkbox)."""
    return accessible_name(page, th) or any(accessible_name(page, c) for c in page.find("input") if th in c.ancestors())


# ---- the stylesheet and the script ----------------------------------------------------------------------------

def test_every_admin_page_loads_the_portal_admin_stylesheet_after_django_s_and_its_script(rendered):
    for name, html in rendered.items():
        head = html[:html.index("</head>")]
        assert head.index("admin/css/base.css") < head.index("leukportal_admin.css"), name
        assert re.search(r'<script src="[^"]*leukportal_admin\.js" defer>', head), name
        assert "LeukPortal administration" in html, name  # Django's base_site.html (branding) still extended
    assert finders.find("leukportal_admin.css") and finders.find("leukportal_admin.js")


def test_every_admin_page_links_the_portal_favicon(rendered):
    for name, html in rendered.items():
        assert re.search(r'<link rel="icon" type="image/svg\+xml" href="[^"]*favicon\.svg">', html), name
    assert finders.find("favicon.svg")


def test_the_admin_template_adds_no_inline_script_or_style():
    """The portal's CSP allows scripts and stylesheets from its own static files only."""
    template = (REPO / "templates" / "admin" / "base_site.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", template) and "<style" not in template and "style=" not in template


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_breadcrumb_links_are_told_apart_from_the_text_between_them(theme):
    colours = admin_colours(theme)
    link, text, background = colours["--breadcrumbs-link-fg"], colours["--breadcrumbs-fg"], colours["--breadcrumbs-bg"]
    underlined = css_rules(ADMIN_CSS).get(".breadcrumbs a", {}).get("text-decoration") == "underline"
    assert underlined or contrast(link, text) >= 3, f"{link} beside {text} is {contrast(link, text):.2f}:1"
    for colour in (link, text):
        assert contrast(colour, background) >= 4.5, f"{colour} on {background}"


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_highlighted_autocomplete_option_reaches_aa_contrast(theme):
    colours = admin_colours(theme)
    highlighted = ".select2-container--admin-autocomplete .select2-results__option--highlighted[aria-selected]"
    primary = css_rules(ADMIN_CSS).get(highlighted, {}).get("--primary", "var(--primary)")
    background = colours[re.fullmatch(r"var\((--[\w-]+)\)", primary)[1]] if primary.startswith("var(") else primary
    ratio = contrast(colours["--primary-fg"], background)
    assert ratio >= 4.5, f"{colours['--primary-fg']} on {background} is {ratio:.2f}:1"


def test_the_admin_script_s_hooks_are_still_in_django_s_scripts():
    """static/leukportal_admin.js names Select2's box and search field, sets its list's parent and gives
    SelectFilter2's search icons a role: it relies on these names and attributes of Django's vendored scripts."""
    script = ADMIN_JS.read_text()
    select2 = (ADMIN_STATIC / "js" / "vendor" / "select2" / "select2.full.js").read_text()
    for hook in (".select2-selection__rendered", ".select2-search__field", ".select2-selection"):
        assert hook in script and hook.lstrip(".") in select2, hook
    for hook in ("aria-owns", "aria-controls", "'select2:' + name", "options.get('dropdownParent')"):
        assert hook in select2, hook
    assert "dataset.dropdownParent" in script and "select2:open" in script and "select2:close" in script
    assert "admin-autocomplete" in (ADMIN_STATIC / "js" / "autocomplete.js").read_text()
    selectfilter = (ADMIN_STATIC / "js" / "SelectFilter2.js").read_text()
    for hook in ("search-label-icon", "'aria-label'", "window.addEventListener('load'"):
        assert hook in selectfilter, hook
    assert ".search-label-icon[aria-label]:not([role])" in script


# ---- the pages ---------------------------------------------------------------------------------------------------

def test_the_final_stage_filter_names_every_link(admin_client_, demo):
    url = reverse("admin:diagnosis_case_changelist")
    page = Page(admin_client_.get(url).content.decode())
    details = next(e for e in page.find("details") if e.attrs.get("data-filter-title") == "final stage")
    links = [e for e in page.find("a") if details in e.ancestors()]
    assert [link.all_text() for link in links] == ["All", "None", "Pre-B"]

    def listed(value):
        return [c.accession_number for c in admin_client_.get(url, {"final_stage": value}).context["cl"].result_list]

    assert (listed("none"), listed("Pre")) == (["ACC-OPEN"], ["ACC-0001"])


def test_an_add_form_has_no_empty_inline_table_and_a_change_form_lists_the_related_rows(rendered):
    for name in ("patient add", "case add"):
        assert "inline-group" not in rendered[name], name
        page = Page(rendered[name])
        main = page.find("main")[0]
        assert all(header_named(page, th) for th in page.find("th") if main in th.ancestors()), name
    assert "ACC-OPEN" in rendered["patient change"] and "inline-group" in rendered["patient change"]
    assert "smear-1.png" in rendered["case view (signed out)"] and "inline-group" in rendered["case view (signed out)"]


def test_every_admin_link_and_button_has_a_name_and_every_control_a_label(rendered):
    for name, html in rendered.items():
        page = Page(html)
        for element in page.find("button", "a"):
            if element.tag == "a" and "href" not in element.attrs:
                continue
            assert accessible_name(page, element), (name, element)
        for control in page.find("input", "select", "textarea"):
            if control.attrs.get("type", "text") in NO_NAME_NEEDED or control.hidden():
                continue
            assert accessible_name(page, control), (name, control)


def test_the_admin_lists_have_named_header_cells(rendered):
    for name, html in rendered.items():
        if "inline-group" in html:
            continue  # Django's tabular inline leaves two header cells empty (scripts/axe_audit.py: remaining)
        page = Page(html)
        for th in page.find("th"):
            assert header_named(page, th), (name, th)

"""The case page's live polling in headless Chromium for both kinds: a queued
cell and a queued field update in place (label, P(blast), threshold, stage
bars) and the screening summary follows, without a reload; the dashboard's
check of the screen against the laboratory's reviews fits a phone and a desktop."""
import os
import tempfile
from pathlib import Path

import pytest

from diagnosis import services
from tests.portal_testutils import browser_login

from .conftest import screening_result, staging_result

SHOTS = Path(os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "leukportal-screenshots")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_case_page_follows_cells_and_fields(browser_page, live_server, technician, smear_factory, case):
    page = browser_page
    cell, field = smear_factory(kind="cell"), smear_factory(kind="field")
    services.refresh_case(case)
    browser_login(page, live_server.url, technician)
    page.goto(live_server.url + case.get_absolute_url())
    page.evaluate("window.__noReload = true")

    for smear, result in ((cell, screening_result(0.42)), (field, staging_result("Pro", 0.6))):
        assert services.claim_smear(smear.pk)
        services.record_prediction(smear.pk, result, 5)

    cell_card, field_card = f'[data-smear="{cell.pk}"]', f'[data-smear="{field.pk}"]'
    page.wait_for_selector(f"{cell_card} .smear-status-done", timeout=20_000)
    page.wait_for_selector(f"{field_card} .smear-status-done", timeout=20_000)
    assert page.evaluate("window.__noReload") is True
    assert page.inner_text(f'{cell_card} [data-field="stage"]') == "flagged for review"  # the pathologist calls blasts
    assert page.inner_text(f'{cell_card} [data-prob-text="blast"]') == "0.42"
    assert page.inner_text(f'{cell_card} [data-field="threshold"]') == "0.31"
    assert page.inner_text(f'{field_card} [data-prob-text="Pro"]') == "0.60"
    assert "1 of 1 cell flagged by the screen (100 %)" in page.inner_text("[data-screening-summary]")
    assert "Pro-B" in page.inner_text("[data-case-suggestion]")


def test_the_screen_check_on_the_dashboard_fits_a_phone_and_a_desktop(browser_page, live_server, pathologist,
                                                                       screened_case):
    page = browser_page
    screened_case([(0.9, "blast", True)] * 3 + [(0.1, "blast", True)] + [(0.1, "normal", True), (0.9, "normal", True)])
    screened_case([(0.9, "blast", True)] * 2 + [(0.1, "normal", True)] * 2)
    browser_login(page, live_server.url, pathologist)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, name in ((390, "dashboard_screen_check_phone.png"), (1280, "dashboard_screen_check.png")):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(live_server.url + "/review/dashboard/")
        check = page.locator("[data-screen-check]")
        assert "5 of 6" in check.inner_text() and "3 of 4" in check.inner_text()
        # Nothing wider than the window: the table scrolls inside its own box on a phone.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        check.screenshot(path=str(SHOTS / name))

"""The review queue on a phone: the columns that do not fit are hidden, and each row says under its accession
number what they held (patient, how many smears are reviewed, since when the case waits, the suggested stage);
on a desktop that line is hidden and the columns say it."""
import os
import tempfile
from pathlib import Path

import pytest

from diagnosis import services
from tests.portal_testutils import browser_login

SHOTS = Path(os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "leukportal-screenshots")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.mark.parametrize("width,summary_shown", [(390, True), (1280, False)])
def test_a_queue_row_on_a_phone_says_what_its_hidden_columns_hold(
        browser, live_server, pathologist, classified, case, width, summary_shown):
    first = classified("Pre", 0.9)
    classified("Pre", 0.85)
    services.review_smear(first, pathologist, "Pre")
    page = browser.new_context(viewport={"width": width, "height": 800}).new_page()
    browser_login(page, live_server.url, pathologist)
    page.goto(live_server.url + "/review/")
    row = page.locator(f'[data-review-queue] tr[data-case="{case.pk}"]')
    summary = row.locator("[data-phone-summary]")
    assert summary.is_visible() is summary_shown
    assert row.locator("td").nth(1).is_visible() is not summary_shown  # the patient column
    if summary_shown:
        text = " ".join(summary.inner_text().split())
        assert text.startswith(f"{case.patient.lab_id} · 1/2 reviewed · ready ")
        assert "suggested Pre-B" in text
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "review_queue_phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

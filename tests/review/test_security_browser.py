"""In headless Chromium, the Content-Security-Policy blocks nothing the portal
itself needs: no violation is reported on the case, review and report pages,
and the review screen's script still works (heat-map toggle, zoom)."""
import pytest

from diagnosis import services
from tests.portal_testutils import browser_login, image_bytes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_portal_pages_run_under_the_csp_without_violations(browser_page, live_server, pathologist, classified, case):
    page = browser_page
    smear = classified("Pre")
    services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", size=(96, 64)))
    violations = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    browser_login(page, live_server.url, pathologist)
    for url in (case.get_absolute_url(), f"/cases/{case.pk}/review/", f"/cases/{case.pk}/report/", "/review/"):
        response = page.goto(live_server.url + url)
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle")
    assert violations == []
    # Bootstrap's bundle ran, and the report's print button works without an inline handler.
    assert page.evaluate("typeof bootstrap") == "object"
    page.goto(live_server.url + f"/cases/{case.pk}/report/")
    page.evaluate("window.__printed = false; window.print = () => { window.__printed = true; }")
    page.click("[data-print]")
    assert page.evaluate("window.__printed") is True
    assert violations == []

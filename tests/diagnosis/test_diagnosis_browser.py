"""The case page updates itself in real headless Chromium while a smear is
classified: no reload, driven by the JSON status endpoint."""
import pytest

from diagnosis import services
from tests.portal_testutils import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_case_page_follows_classification_without_reload(browser_page, live_server, technician, smear_factory, case):
    page = browser_page
    smear = smear_factory()
    services.refresh_case(case)
    browser_login(page, live_server.url, technician)
    page.goto(live_server.url + case.get_absolute_url())
    card = f'[data-smear="{smear.pk}"]'
    assert page.inner_text(f'{card} [data-field="status"]') == "Queued"
    assert page.inner_text("[data-case-state]") == "Awaiting classification"
    page.evaluate("window.__noReload = true")

    assert services.claim_smear(smear.pk)
    probabilities = {"Benign": 0.1, "Early": 0.2, "Pre": 0.3, "Pro": 0.4}
    services.record_prediction(
        smear.pk, {"stage": "Pro", "probabilities": probabilities, "model": "demo", "model_version": "1",
                    "in_domain": True, "domain_score": 0.5}, 5
    )

    page.wait_for_selector(f"{card} .smear-status-done", timeout=20_000)
    assert page.evaluate("window.__noReload") is True  # updated in place
    assert page.inner_text(f'{card} [data-field="stage"]') == "Pro-B"
    assert page.inner_text(f'{card} [data-prob-text="Pro"]') == "0.40"
    assert page.is_visible(f'{card} [data-field="probs"]')
    assert "Pro-B" in page.inner_text("[data-case-suggestion]")
    assert page.inner_text("[data-case-status]") == "All smears classified"
    assert page.inner_text("[data-case-state]") == "Awaiting review"  # the workflow state follows too

"""The screen checked against the laboratory's own reviews (selectors.screen_check and the agreement dashboard):
sensitivity and specificity of the screen's flags against the pathologists' final labels on signed-out cases,
with an interval over cases, a verdict against each target, and only the newest model version counted."""
import pytest
from django.urls import reverse

from diagnosis import selectors

pytestmark = pytest.mark.django_db


def blasts(flagged, missed):
    return [(0.9, "blast", True)] * flagged + [(0.1, "blast", True)] * missed


def normals(spared, flagged):
    return [(0.1, "normal", True)] * spared + [(0.9, "normal", True)] * flagged


def rates(check):
    return {rate["name"]: rate for rate in check["rates"]}


def test_no_reviewed_cell_gives_no_check_and_the_dashboard_shows_none(path_client):
    assert selectors.screen_check() is None
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    assert "data-screen-check" not in page


def test_counts_are_pooled_over_signed_out_cases_and_judged_against_the_targets(screened_case, path_client):
    for _ in range(5):
        screened_case(blasts(2, 0) + normals(0, 1))
    screened_case(blasts(0, 3) + normals(3, 0), sign=False)  # not signed out: labels not final, not counted
    check = selectors.screen_check()
    assert (check["cells"], check["cases"], check["earlier_versions_cells"]) == (15, 5, 0)
    sensitivity, specificity = rates(check)["sensitivity"], rates(check)["specificity"]
    assert (sensitivity["right"], sensitivity["cells"], sensitivity["cases"]) == (10, 10, 5)
    assert sensitivity["estimate"] == 1.0 and sensitivity["low"] == sensitivity["high"] == 1.0
    assert sensitivity["verdict"] == "met"
    assert (specificity["right"], specificity["cells"], specificity["estimate"]) == (0, 5, 0.0)
    assert specificity["verdict"] == "missed"
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    block = page.split('data-kind="cell"')[1].split("data-screen-check")[1].split("Confusion matrix")[0]
    assert "15 reviewed cells from 5 cases" in block
    sens_card, spec_card = block.split('data-rate="sensitivity"')[1].split('data-rate="specificity"')
    assert 'data-verdict="met"' in sens_card and "meets the target" in sens_card and "at least 95 %" in sens_card
    assert "100 %" in sens_card and "95% interval 100–100 % over 5 cases" in sens_card and "10 of 10 cells" in sens_card
    assert 'data-verdict="missed"' in spec_card and "below the target" in spec_card and "at least 50 %" in spec_card
    assert "0 of 5 cells the pathologist called normal were not flagged" in spec_card


def test_a_verdict_needs_five_cases_and_one_case_has_no_interval(screened_case, path_client):
    screened_case(blasts(4, 0) + normals(1, 1))
    one = rates(selectors.screen_check())
    assert one["specificity"]["verdict"] == "too_few" and one["specificity"]["low"] is None
    assert one["specificity"]["estimate"] == 0.5
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    assert "one case: no interval" in page and "too few cases to tell" in page
    for _ in range(3):
        screened_case(blasts(4, 0) + normals(0, 1))
    four = rates(selectors.screen_check())
    # Every blast flagged, but four cases are not enough to say the target is met.
    assert four["sensitivity"]["low"] == 1.0 and four["sensitivity"]["verdict"] == "too_few"
    screened_case(blasts(1, 3) + normals(2, 0))
    five = rates(selectors.screen_check())
    assert five["sensitivity"]["estimate"] == pytest.approx(17 / 20)
    assert five["sensitivity"]["low"] < 0.95 <= five["sensitivity"]["high"]
    assert five["sensitivity"]["verdict"] == "too_few"  # the interval holds the target: cannot tell yet


def test_cells_outside_the_domain_and_cells_of_an_earlier_model_are_not_counted(screened_case, path_client):
    screened_case(blasts(0, 2) + normals(2, 0), version="2026-11-01-old")
    screened_case(blasts(2, 0) + [(0.9, "normal", False)])
    check = selectors.screen_check()
    assert check["model_version"] == "0.0-test"
    assert (check["cells"], check["earlier_versions_cells"]) == (2, 4)
    assert rates(check)["specificity"]["verdict"] == "none" and rates(check)["specificity"]["cells"] == 0
    page = path_client.get(reverse("diagnosis:dashboard")).content.decode()
    assert "4 reviewed cells screened by an earlier model version" in page
    assert "No reviewed cell called normal yet." in page


def test_the_targets_come_from_the_settings(screened_case, settings):
    settings.SCREEN_TARGET_SPECIFICITY = 0.0
    for _ in range(5):
        screened_case(blasts(1, 0) + normals(0, 1))
    assert rates(selectors.screen_check())["specificity"]["verdict"] == "met"

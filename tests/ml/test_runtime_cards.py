"""ml.runtime.cards: the shipped cards, read for the portal's model pages. A card states the version of the
weights beside it; only PNG figures under ml/reports are served, by position, and repository links become text."""
import json

import pytest

from ml.runtime.cards import REPORTS_DIR, ModelCard, read_card, shipped_cards
from ml.runtime.loader import SHIPPED, WEIGHTS_DIR


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_card_states_the_version_of_the_weights_beside_it(name):
    card = read_card(name)
    runtime = json.loads((WEIGHTS_DIR / f"{name}.runtime.json").read_text())
    assert card.version == runtime["payload"]["model_version"]
    assert card.sha256 == runtime["runtime"]["model_sha256"]
    assert card.purpose and "**" not in card.title
    assert card.section("Limitations").startswith("- ")


def test_shipped_cards_come_in_the_order_of_the_shipped_models():
    assert [card.name for card in shipped_cards()] == list(SHIPPED)


def test_an_unknown_name_or_a_missing_card_has_none(tmp_path):
    assert read_card("../weights/staging") is None and read_card("nope") is None
    assert read_card("staging", weights_dir=tmp_path) is None


def card(markdown):
    return ModelCard(name="screening", markdown=markdown, path=WEIGHTS_DIR / "screening.md")


def test_only_png_figures_under_the_reports_folder_are_served_and_by_position():
    text = ("![roc](../reports/screening/roc.png) ![again](../reports/screening/roc.png)\n"
            "![outside](../../../../etc/shadow.png) ![readme](../README.md) ![gone](../reports/screening/none.png)\n"
            "![absolute](/etc/x.png) ![remote](https://example.org/x.png) ![subjects](../reports/screening/subjects.png)")
    shown = card(text)
    assert shown.figures == ((REPORTS_DIR / "screening" / "roc.png").resolve(),
                             (REPORTS_DIR / "screening" / "subjects.png").resolve())
    web = shown.for_web(lambda i: f"/fig/{i}.png")
    assert "![roc](/fig/0.png) ![again](/fig/0.png)" in web and "![subjects](/fig/1.png)" in web
    for caption in ("outside", "readme", "gone", "absolute", "remote"):
        assert f"*{caption}*" in web  # a figure that is not served is its caption
    assert "shadow" not in web and "etc/" not in web and "example.org" not in web


def test_a_card_in_another_folder_serves_no_figure_of_the_reports(tmp_path):
    (tmp_path / "screening.md").write_text("Version `v1`\n\n![roc](../reports/screening/roc.png)\n")
    assert read_card("screening", weights_dir=tmp_path).figures == ()


def test_repository_links_become_their_text_and_https_links_stay():
    web = card("See [`report.md`](../reports/screening/report.md) and [the paper](https://doi.org/10.1/x).").for_web(
        lambda i: "")
    assert web == "See `report.md` and [the paper](https://doi.org/10.1/x)."


def test_a_section_ends_at_the_next_heading_and_the_purpose_is_the_paragraph_after_the_version():
    shown = card("# Model card: `x`\n\nVersion `v1` · sha256 `" + "a" * 64 + "`\n\nScreens one cell.\nFor review.\n\n"
                 "## Limitations\n- one\n- two\n\n## Speed\nfast\n")
    assert shown.version == "v1" and shown.sha256 == "a" * 64 and shown.title == "Model card: `x`"
    assert shown.purpose == "Screens one cell. For review."
    assert shown.section("Limitations") == "- one\n- two" and shown.section("Speed") == "fast"
    assert shown.section("Nothing") == ""

"""The models' pages: every role reads what each shipped model is for, its version, its limitations and its whole
card with figures; the page says which versions made this portal's predictions and warns when the newest is not
the one the card describes; a card's markup can run nothing."""
import pytest
from django.urls import reverse

from diagnosis import card_views
from ml.runtime.cards import ModelCard, read_card
from ml.runtime.loader import WEIGHTS_DIR
from tests.review.conftest import result

pytestmark = pytest.mark.django_db


def test_the_models_page_shows_each_models_purpose_version_and_limitations(path_client):
    page = path_client.get(reverse("diagnosis:model_cards")).content.decode()
    for name in ("staging", "screening"):
        shipped = read_card(name)
        assert f'data-model-card="{name}"' in page and shipped.version in page
        assert reverse("diagnosis:model_card", args=[name]) in page
    assert "Not a medical device" in page  # the staging card's limitations
    assert "Three normal subjects in all" in page  # the screening card's
    assert "No prediction of this kind in this portal yet" in page


def test_the_models_page_is_in_the_navigation(tech_client):
    assert f'href="{reverse("diagnosis:model_cards")}"' in tech_client.get(reverse("diagnosis:case_list")).content.decode()


def test_a_whole_card_has_its_tables_contents_and_served_figures(path_client):
    page = path_client.get(reverse("diagnosis:model_card", args=["screening"])).content.decode()
    assert '<table class="table table-sm">' in page and 'href="#limitations"' in page and 'id="limitations"' in page
    figure = reverse("diagnosis:model_card_figure", args=["screening", 0])
    assert f'src="{figure}"' in page
    assert "../reports/" not in page  # repository links are text, not dead links
    response = path_client.get(figure)
    assert response["Content-Type"] == "image/png" and b"".join(response.streaming_content).startswith(b"\x89PNG")


def test_an_unknown_model_or_figure_is_not_found(path_client):
    assert path_client.get(reverse("diagnosis:model_card", args=["nope"])).status_code == 404
    assert path_client.get(reverse("diagnosis:model_card_figure", args=["screening", 99])).status_code == 404
    assert path_client.get("/models/screening/figures/..%2F..%2Fsettings.png").status_code == 404


def test_the_versions_in_use_are_listed_and_a_card_not_describing_the_newest_is_flagged(path_client, smear_factory):
    shipped = read_card("staging")
    _predict(smear_factory(status="processing"), shipped.version)
    page = path_client.get(reverse("diagnosis:model_card", args=["staging"])).content.decode()
    assert f'data-version="{shipped.version}"' in page and "this card" in page
    assert "data-card-not-current" not in page
    _predict(smear_factory(status="processing"), "retrained-elsewhere-v9")
    page = path_client.get(reverse("diagnosis:model_card", args=["staging"])).content.decode()
    assert "data-card-not-current" in page and "retrained-elsewhere-v9" in page
    assert page.index('data-version="retrained-elsewhere-v9"') < page.index(f'data-version="{shipped.version}"')


def _predict(smear, version):
    from diagnosis import services

    return services.record_prediction(smear.pk, result("Pre", version=version), 5)


def test_markup_in_a_card_runs_nothing(path_client, monkeypatch):
    hostile = ModelCard(name="staging", path=WEIGHTS_DIR / "staging.md", markdown=(
        "# Model card\n\nVersion `v1`\n\n<script>alert(1)</script> [click](javascript:alert(2)) "
        '<img src="x" onerror="alert(3)"> <a href="https://example.org" onclick="alert(4)">x</a> '
        '<span style="color:red">styled</span>\n\n## Limitations\n- <iframe src="https://example.org"></iframe>\n'))
    monkeypatch.setattr(card_views, "read_card", lambda name: hostile if name == "staging" else None)
    monkeypatch.setattr(card_views, "shipped_cards", lambda: [hostile])
    for url in (reverse("diagnosis:model_cards"), reverse("diagnosis:model_card", args=["staging"])):
        page = path_client.get(url).content.decode()
        body = page[page.index("<main") if "<main" in page else 0:]
        for active in ("<script>alert", "javascript:", "onerror", "onclick", "<iframe", 'style="color'):
            assert active not in body, (url, active)


def test_the_review_screen_links_each_prediction_to_its_models_card(path_client, smear_factory, case):
    _predict(smear_factory(status="processing"), "v1")
    page = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert f'href="{reverse("diagnosis:model_card", args=["staging"])}" data-model-card-link' in page

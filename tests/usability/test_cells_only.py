"""Issue 15.9: a case of single cells only is shown as cells: no suggested
stage card, no stage column, never "0 of 0 reviewed cells"."""
import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_cells_only_case_page_has_no_suggested_stage_card_and_lists_cells(path_client, case, cell):
    cell(0.9)
    html = path_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    assert "data-suggestion-card" not in html
    assert "Suggested case stage" not in html
    assert '<h2 class="h5" data-smears-heading>Cells</h2>' in html


def test_case_with_fields_keeps_the_suggested_stage_card(path_client, case, field):
    field("Pre")
    html = path_client.get(reverse("diagnosis:case_detail", args=[case.pk])).content.decode()
    assert "data-suggestion-card" in html
    assert '<h2 class="h5" data-smears-heading>Smears</h2>' in html


def test_review_header_of_unreviewed_cells_never_says_0_of_0(path_client, case, cell):
    cell(0.9)
    html = path_client.get(reverse("diagnosis:case_review", args=[case.pk])).content.decode()
    assert "0 of 0" not in html
    assert "no cell reviewed yet" in html
    assert "suggested" not in html.split("data-screening-summary")[0].split("<h1")[1]


def test_review_queue_lists_a_cells_only_case_as_cells_without_a_stage(path_client, case, cell):
    cell(0.9)
    cell(0.1)
    html = path_client.get(reverse("diagnosis:review_queue")).content.decode()
    assert "2 cells" in html
    assert "single cells: no stage" in html

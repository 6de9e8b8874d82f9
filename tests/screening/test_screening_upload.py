"""Upload kind, the model per kind, the stored screening prediction, its
validation, the case page, the status JSON, the screening summary and the
staging suggestion that ignores cells."""
import pytest
from django.urls import reverse

from diagnosis import services
from diagnosis.models import AuditEvent, Case, Prediction, Smear
from diagnosis.tasks import classify_smear
from tests.portal_testutils import image_bytes, upload

from .conftest import THRESHOLD, screening_result

pytestmark = pytest.mark.django_db


def post_upload(client, case, kind, *names):
    data = {"images": [upload(name, image_bytes(seed=i + 1)) for i, name in enumerate(names)]}
    if kind is not None:
        data["kind"] = kind
    return client.post(reverse("diagnosis:smear_upload", args=[case.pk]), data)


def test_upload_kind_is_required(tech_client, case, sent_messages):
    page = tech_client.get(reverse("diagnosis:smear_upload", args=[case.pk])).content.decode()
    assert 'name="kind"' in page and 'value="field"' in page and 'value="cell"' in page
    response = post_upload(tech_client, case, None, "a.png")
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    response = post_upload(tech_client, case, "tissue", "a.png")
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not case.smears.exists() and sent_messages == []


@pytest.mark.parametrize("kind", ["field", "cell"])
def test_upload_stores_the_kind(tech_client, case, sent_messages, kind, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post_upload(tech_client, case, kind, "a.png", "b.png")
    assert response.status_code == 302
    assert list(case.smears.values_list("kind", flat=True)) == [kind, kind]
    assert len(sent_messages) == 2
    detail = AuditEvent.objects.filter(case=case, action="upload").first().detail
    assert Smear.Kind(kind).label in detail


def test_add_smears_refuses_an_unknown_kind(case, technician):
    with pytest.raises(ValueError, match="Unknown smear kind"):
        services.add_smears(case, [upload("a.png", image_bytes())], technician, kind="tissue")
    assert not case.smears.exists()


def test_each_kind_runs_its_model(fake_ml, smear_factory):
    field, cell = smear_factory(kind="field"), smear_factory(kind="cell")
    assert classify_smear(field.pk) == "done" and classify_smear(cell.pk) == "done"
    assert fake_ml.loads == [None, "screening"]  # ml.load_predictor() and ml.load_predictor("screening")
    assert fake_ml.staging.calls == [[field.image.path]] and fake_ml.screening.calls == [[cell.image.path]]
    field.refresh_from_db(), cell.refresh_from_db()
    assert (field.prediction.task, field.prediction.label, field.prediction.threshold) == ("staging", "Pre", None)
    p = cell.prediction
    assert (p.task, p.label, p.threshold) == ("screening", "blast", pytest.approx(THRESHOLD))
    assert p.probabilities == pytest.approx({"blast": 0.9, "normal": 0.1})
    assert p.blast_probability == pytest.approx(0.9) and p.labels == ("blast", "normal")
    assert (p.model_name, p.model_version) == ("fake_screening", "0.0-test")
    event = AuditEvent.objects.get(smear=cell, action="prediction")
    assert event.new_value == "blast" and "threshold on P(blast) 0.310" in event.detail
    assert event.model_version == "fake_screening 0.0-test"


def test_label_follows_the_threshold(fake_ml, smear_factory):
    fake_ml.screening.p_blast = 0.2  # below the threshold: normal
    cell = smear_factory(kind="cell")
    assert classify_smear(cell.pk) == "done"
    assert Prediction.objects.get(smear=cell).label == "normal"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**screening_result(0.9), "label": "normal"}, "does not follow from P(blast)"),
        ({**screening_result(0.9), "label": "maybe"}, "unknown label"),
        ({k: v for k, v in screening_result(0.9).items() if k != "threshold"}, "no usable threshold"),
        ({**screening_result(0.9), "threshold": 1.5}, "outside [0, 1]"),
        ({**screening_result(0.9), "probabilities": {"blast": 0.9, "normal": 0.3}}, "sum to"),
        ({**screening_result(0.9), "probabilities": {"blast": 0.9}}, "unexpected result"),
        ({"stage": "Pre", "probabilities": {"Benign": 0.1, "Early": 0.1, "Pre": 0.7, "Pro": 0.1}}, "staging model"),
    ],
)
def test_invalid_screening_output_fails_the_smear(fake_ml, smear_factory, bad, message):
    fake_ml.screening.result = bad
    cell = smear_factory(kind="cell")
    assert classify_smear(cell.pk) == "failed"
    cell.refresh_from_db()
    assert cell.status == Smear.Status.FAILED and message in cell.error
    assert not Prediction.objects.filter(smear=cell).exists()


def test_label_at_the_threshold_within_rounding_is_accepted():
    result = {**screening_result(0.31), "probabilities": {"blast": 0.3099999999, "normal": 0.6900000001}}
    assert services.validate_result(result, "cell")[:2] == ("screening", "blast")


def test_a_screening_result_for_a_field_is_refused(fake_ml, smear_factory):
    fake_ml.staging.result = screening_result(0.9)
    field = smear_factory(kind="field")
    assert classify_smear(field.pk) == "failed"
    field.refresh_from_db()
    assert "screening model instead of the staging model" in field.error


def test_summary_counts_and_suggestion_ignores_cells(cell, field, case):
    field("Early", 0.7)
    cell(0.9), cell(0.5), cell(0.1), cell(0.05)
    case.refresh_from_db()
    # The suggestion is the field's alone: cells are not averaged into the stage.
    assert case.suggested_stage == "Early" and case.suggested_confidence == pytest.approx(0.7)
    assert case.compute_suggestion()[2] == 1
    summary = case.screening_summary()
    assert (summary["cells"], summary["screened"], summary["flagged"]) == (4, 4, 2)
    assert summary["flagged_fraction"] == pytest.approx(0.5) and summary["thresholds"] == [pytest.approx(THRESHOLD)]
    assert services.labels_for_case(case) == ("Benign", "Early", "Pre", "Pro")  # final stage: staging labels only


def test_cells_only_case_has_no_suggested_stage(cell, case):
    cell(0.9)
    case.refresh_from_db()
    assert case.status == Case.Status.DONE and case.suggested_stage == "" and case.suggested_confidence is None
    assert services.labels_for_case(case) == ()


def test_case_page_shows_cells_and_summary(cell, field, smear_factory, case, tech_client):
    field("Pro", 0.9)
    blast, _normal = cell(0.8), cell(0.1)
    smear_factory(kind="cell")  # still queued
    page = tech_client.get(case.get_absolute_url()).content.decode()
    assert f'data-smear="{blast.pk}" data-kind="cell"' in page
    assert 'data-prob-text="blast">0.80<' in page and 'data-prob-text="blast">0.10<' in page
    # A cell above the threshold is "flagged for review", not a bare "Blast": the pathologist calls blasts.
    assert 'data-field="threshold">0.31<' in page and ">flagged for review<" in page and ">not flagged<" in page
    assert ">Blast<" not in page
    assert 'data-prob-text="Pro">0.90<' in page  # the field keeps its four bars
    summary = page.split("data-screening-summary>")[1].split("</div>")[0]
    assert "<strong>1</strong> of 2 cells flagged by the screen (50 %)" in summary


def test_status_json_for_polling(cell, field, case, tech_client):
    field("Pre")
    c = cell(0.7)
    data = tech_client.get(reverse("diagnosis:case_status", args=[case.pk])).json()
    item = next(i for i in data["smears"] if i["id"] == c.pk)
    assert item["kind"] == "cell" and item["stage"] == "blast" and item["stage_display"] == "Blast"
    assert item["probabilities"] == pytest.approx({"blast": 0.7, "normal": 0.3})
    assert item["threshold"] == pytest.approx(THRESHOLD)
    assert data["screening"]["screened"] == 1 and data["screening"]["flagged"] == 1
    assert data["suggested_stage"] == "Pre"

"""End to end with the real screening model: a single-cell image posted
through the upload view (kind "cell") is classified by the task with the real
`ml.load_predictor("screening")` (run in this process, as the browser test
does; tests/diagnosis/test_diagnosis_e2e.py covers the broker and a real
worker). Skips when the weights or the cell images are absent."""
from pathlib import Path

import pytest
from django.urls import reverse

from diagnosis.models import Prediction
from diagnosis.tasks import classify_smear
from tests.portal_testutils import upload

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "ml" / "weights" / "screening.pt"
CELLS = REPO.parent / "shared" / "data" / "cnmc-fold1" / "all"

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="screening weights not shipped"),
    pytest.mark.skipif(not CELLS.is_dir(), reason=f"no single-cell images at {CELLS}"),
]


def test_uploaded_cell_gets_a_screening_prediction(tech_client, case, sent_messages, queued_heatmaps,
                                                   django_capture_on_commit_callbacks):
    import ml

    image = sorted(CELLS.glob("*.png")) or sorted(CELLS.iterdir())
    path = image[0]
    with django_capture_on_commit_callbacks(execute=True):
        response = tech_client.post(reverse("diagnosis:smear_upload", args=[case.pk]),
                                    {"kind": "cell", "images": [upload(path.name, path.read_bytes())]})
    assert response.status_code == 302 and len(sent_messages) == 1
    assert classify_smear(sent_messages[0]) == "done"

    prediction = Prediction.objects.select_related("smear").get(smear_id=sent_messages[0])
    predictor = ml.load_predictor("screening")
    assert prediction.smear.kind == "cell" and prediction.task == "screening"
    assert set(prediction.probabilities) == {"blast", "normal"} == set(predictor.classes)
    assert prediction.threshold == pytest.approx(predictor.threshold)
    expected = "blast" if prediction.probabilities["blast"] >= prediction.threshold else "normal"
    assert prediction.label == expected
    if prediction.in_domain:  # its heat map is queued once the prediction is stored, and made by its own task
        assert queued_heatmaps == [prediction.pk]
        assert classify_smear.app.tasks["diagnosis.compute_heatmap"](prediction.pk) in ("done", "failed")
        prediction.refresh_from_db()
        assert prediction.heatmap or prediction.heatmap_error  # explains the decided label, or says why not
    case.refresh_from_db()
    assert case.suggested_stage == "" and case.screening_summary()["screened"] == 1

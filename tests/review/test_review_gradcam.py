"""Heat maps with the real predictor: Grad-CAM's shape (kept for comparison),
the worker storing the occlusion map's overlay beside the prediction, and a
heat map failure keeping the prediction with "heat map unavailable"."""
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from diagnosis import tasks
from diagnosis.models import Prediction

pytestmark = pytest.mark.django_db

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "taleqani-all" / "Pre"


@pytest.fixture(scope="module")
def predictor():
    ml = pytest.importorskip("ml")
    try:
        return ml.load_predictor()
    except Exception as exc:  # no weights in this checkout
        pytest.skip(f"no predictor: {exc}")


def smear_image_bytes():
    files = sorted(DATA.glob("*.jpg"))[:1] if DATA.is_dir() else []
    if files:
        return files[0].read_bytes(), (Image.open(files[0]).size)
    img = Image.new("RGB", (300, 260), (230, 215, 225))
    ImageDraw.Draw(img).ellipse([80, 70, 200, 190], fill=(120, 60, 150))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), img.size


def test_gradcam_shape_and_overlay_size(predictor):
    from ml.explain import gradcam, overlay

    data, size = smear_image_bytes()
    image = Image.open(io.BytesIO(data))
    heatmap, explained = gradcam(predictor, image)
    assert heatmap.shape == (224, 224) and heatmap.dtype.name == "float32"
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert explained in predictor.classes
    assert overlay(image, heatmap).size == size


def test_task_stores_prediction_and_heatmap(predictor, smear_factory, queued_heatmaps):
    from django.core.files.base import ContentFile

    data, size = smear_image_bytes()
    smear = smear_factory()
    smear.image.save("real.jpg", ContentFile(data), save=True)
    assert tasks.classify_smear(smear.pk) == "done"
    prediction = Prediction.objects.get(smear=smear)
    assert queued_heatmaps == [prediction.pk] and not prediction.heatmap  # queued after the prediction, made apart
    assert tasks.compute_heatmap(prediction.pk) == "done"
    prediction.refresh_from_db()
    assert prediction.label in predictor.classes and prediction.heatmap and prediction.heatmap_error == ""
    with prediction.heatmap.open("rb") as fh:
        assert Image.open(fh).size == size


def test_worker_explains_the_stored_label_with_the_occlusion_map(predictor, smear_factory, monkeypatch, queued_heatmaps):
    import numpy as np

    import ml.explain

    calls = []

    def recording(predictor_, image, target=None, **kwargs):
        calls.append(target)
        return np.zeros((predictor_.input_size, predictor_.input_size), dtype=np.float32)

    monkeypatch.setattr(ml.explain, "heatmap", recording)
    monkeypatch.setattr(ml.explain, "gradcam", lambda *a, **k: pytest.fail("the worker must not use Grad-CAM"))
    from django.core.files.base import ContentFile

    smear = smear_factory()
    smear.image.save("real.jpg", ContentFile(smear_image_bytes()[0]), save=True)  # in the model's domain
    assert tasks.classify_smear(smear.pk) == "done"
    assert tasks.compute_heatmap(queued_heatmaps[0]) == "done"
    prediction = Prediction.objects.get(smear=smear)
    assert calls == [prediction.label] and prediction.heatmap and prediction.heatmap_error == ""


def test_heatmap_failure_keeps_the_prediction(predictor, smear_factory, monkeypatch, queued_heatmaps):
    import ml.explain

    def broken(*args, **kwargs):
        raise RuntimeError("no gradients today")

    monkeypatch.setattr(ml.explain, "heatmap", broken)
    from django.core.files.base import ContentFile

    smear = smear_factory()
    smear.image.save("real.jpg", ContentFile(smear_image_bytes()[0]), save=True)  # in the model's domain
    assert tasks.classify_smear(smear.pk) == "done"
    assert tasks.compute_heatmap(queued_heatmaps[0]) == "failed"
    prediction = Prediction.objects.get(smear=smear)
    smear.refresh_from_db()
    assert smear.status == "done" and not prediction.heatmap
    assert prediction.heatmap_error == "Heat map unavailable: unexpected error (RuntimeError)."  # its text is logged
    assert smear.audit_events.filter(action="prediction").exists()


def test_no_heat_map_for_an_image_outside_the_models_domain(predictor, smear_factory, queued_heatmaps):
    """A blank field is classified (stored with its verdict) but gets no heat map: there is no suggestion to explain."""
    smear = smear_factory()  # a nearly uniform generated image
    assert tasks.classify_smear(smear.pk) == "done"
    prediction = Prediction.objects.get(smear=smear)
    assert prediction.in_domain is False and prediction.domain_reason == "blank or nearly uniform image"
    assert not prediction.heatmap and queued_heatmaps == []

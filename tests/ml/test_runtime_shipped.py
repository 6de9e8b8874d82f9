"""The shipped models' ONNX exports: they belong to the shipped model files, and on real test images
they give PyTorch's logits, labels and domain verdicts at batch sizes 1, 5 and 32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import data as mldata
from ml.runtime.export_files import ExportFiles, check
from ml.runtime.loader import SHIPPED, WEIGHTS_DIR

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHIPPED_FILES = sorted(set(SHIPPED.values()))


@pytest.mark.parametrize("filename", SHIPPED_FILES)
def test_every_shipped_model_file_has_its_own_current_export(filename):
    record = check(ExportFiles.beside(WEIGHTS_DIR / filename))  # raises with the reason when stale
    assert record["model_sha256"] == mldata.sha256_file(WEIGHTS_DIR / filename)


@pytest.mark.parametrize("filename", SHIPPED_FILES)
def test_shipped_export_gives_the_pytorch_results_on_real_test_images(filename):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from ml.checkpoint import held_out_splits
    from ml.onnx_export import TOLERANCE
    from ml.predict import Predictor
    from ml.runtime.onnx_predictor import OnnxPredictor

    model_file = WEIGHTS_DIR / filename
    torch_predictor = Predictor(model_file)
    config = torch_predictor.payload["training"]["config"]
    data = DATA / Path(config["data"]).name
    if not data.is_dir():
        pytest.skip(f"real images not present at {data}")
    # A model trained on every subject (the screening ensemble) has no test split: its validation split serves.
    every = mldata.read_manifest(config["manifest"])
    split = "test" if any(s.split == "test" for s in every) else held_out_splits(torch_predictor.payload)[0]
    test = [s for s in every if s.split == split]
    images = [mldata.load_image(data / s.path) for s in test[::max(1, len(test) // 12)][:12]]
    onnx_predictor = OnnxPredictor(model_file, threads=1)
    logits, embeddings, stats = torch_predictor.predict_outputs(images)
    expected = torch_predictor.predict(images)
    for batch_size in (1, 5, 32):
        ours_logits, ours_embeddings, _ = onnx_predictor.predict_outputs(images, batch_size)
        # The export's own acceptance bound: a probe's logit sums 1280 features, so float rounding reaches 1e-4.
        np.testing.assert_allclose(ours_logits, logits, atol=TOLERANCE)
        np.testing.assert_allclose(ours_embeddings, embeddings, atol=1e-3)
        results = onnx_predictor.predict(images, batch_size)
        key = "label" if onnx_predictor.task == "screening" else "stage"
        assert [r[key] for r in results] == [r[key] for r in expected]
        assert [r["in_domain"] for r in results] == [r["in_domain"] for r in expected]


def test_the_staging_cards_robustness_table_was_measured_on_the_shipped_file_with_its_domain_check():
    """The flagged column is what the portal would refuse only when the suite ran on the shipped file itself: a run
    file scored before ``fit-domain`` has the blank rule alone and showed 0.0% under every change (session 10)."""
    import json

    report = json.loads((WEIGHTS_DIR.parent / "reports" / "staging" / "robustness.json").read_text())
    assert report["model_sha256"] == mldata.sha256_file(WEIGHTS_DIR / "staging.pt")
    assert report["domain_check"] is True

"""Prediction: the Python and CLI contract the portal and outside checks rely on."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ml
from ml.predict import Predictor, resolve_model_path

from .conftest import draw_smear

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"Benign", "Early", "Pre", "Pro"}


@pytest.fixture(scope="module")
def predictor(tiny_model_file):
    return Predictor(tiny_model_file)


def test_predict_accepts_paths_and_pil_images_of_any_mode_and_size(predictor, tmp_path):
    path = tmp_path / "smear.png"
    draw_smear("Pre", 5, 300).save(path)
    inputs = [str(path), path, draw_smear("Pro", 1, 50).convert("L"), draw_smear("Early", 2, 500).convert("RGBA"),
              Image.fromarray((np.random.default_rng(0).random((90, 70)) * 60000).astype(np.uint16))]
    results = predictor.predict(inputs)
    assert len(results) == len(inputs)
    for result in results:
        assert result["stage"] in STAGES
        assert set(result["probabilities"]) == STAGES
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert result["stage"] == max(result["probabilities"], key=result["probabilities"].get)
        assert result["model"] == "mobilenetv3_lstm" and result["model_version"]


def test_predict_raises_a_readable_image_error_for_garbage(predictor, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ml.ImageError):
        predictor.predict([bad])


def test_load_predictor_loads_once_and_reuses(tiny_model_file):
    assert ml.load_predictor(tiny_model_file) is ml.load_predictor(str(tiny_model_file))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no shipped model 'nonesuch'"):
        resolve_model_path("nonesuch")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ml", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_predict_json_prints_one_object_per_file_and_fails_at_the_end_on_a_corrupt_file(tiny_model_file, tmp_path):
    good = tmp_path / "good.jpg"
    draw_smear("Benign", 3).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not pixels")
    after = tmp_path / "after.png"
    draw_smear("Pro", 4).save(after)
    result = run_cli("predict", "--model", tiny_model_file, "--json", good, corrupt, after)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(good), str(corrupt), str(after)]
    for line in (lines[0], lines[2]):
        assert set(line) - {"reason"} == {"path", "stage", "probabilities", "model", "model_version", "in_domain",
                                          "domain_score"}
        assert line["stage"] in STAGES and set(line["probabilities"]) == STAGES
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert set(lines[1]) == {"path", "error"} and lines[1]["error"]
    assert result.returncode != 0


def test_cli_predict_exits_zero_when_every_file_is_read(tiny_model_file, tmp_path):
    good = tmp_path / "good.jpg"
    draw_smear("Early", 9).save(good)
    result = run_cli("predict", "--model", tiny_model_file, "--json", good)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stage"] in STAGES


def test_shipped_staging_model_loads_with_no_name_and_classifies_a_real_smear(real_data):
    if not (Path(ml.__file__).parent / "weights" / "staging.pt").is_file():
        pytest.fail("the deployed model ml/weights/staging.pt is missing")
    predictor = ml.load_predictor()
    assert predictor.classes == ("Benign", "Early", "Pre", "Pro")
    result = predictor.predict([real_data / "Pre" / sorted(p.name for p in (real_data / "Pre").iterdir())[0]])[0]
    assert result["stage"] in STAGES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)

"""Evaluation: calibration error, metrics and the written report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ml.evaluate import classification_metrics, evaluate, expected_calibration_error


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 predictions at 0.8 confidence, 8 right: perfectly calibrated.
    probabilities = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


def test_ece_measures_overconfidence():
    probabilities = np.tile([0.99, 0.01], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.49)


def test_classification_metrics_per_class_and_confusion():
    probabilities = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    labels = np.array([0, 1, 1, 2, 2, 2])
    m = classification_metrics(probabilities, labels, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 3]]


def test_evaluate_scores_the_manifest_test_split_and_writes_the_report(tiny_model_file, smear_folder, tmp_path):
    report = evaluate(str(tiny_model_file), smear_folder, out=tmp_path / "eval")
    manifest_test = [line for line in (tiny_model_file.parent / "manifest.csv").read_text().splitlines() if ",test," in line]
    assert report["n"] == len(manifest_test)
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["ece"] <= 1.0
    assert sum(map(sum, report["confusion_matrix"])) == report["n"]
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["macro_f1"] == report["macro_f1"]
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro-F1" in (tmp_path / "eval" / "report.md").read_text()
    # Intervals over the split's groups of neighbouring images, the estimate being the plain accuracy.
    intervals = written["intervals"]
    assert intervals["groups"] == len({line.split(",")[3] for line in manifest_test})
    assert intervals["metrics"]["accuracy"]["estimate"] == pytest.approx(report["accuracy"])
    assert "groups of neighbouring images" in (tmp_path / "eval" / "report.md").read_text()

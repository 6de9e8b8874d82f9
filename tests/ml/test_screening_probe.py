"""Screening probe: a logistic regression on frozen backbone features, written into the model file as its
classifier, with subject-balanced weights, C and the cut chosen on out-of-fold predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml import data as mldata
from ml import models, screening, screening_probe
from ml.checkpoint import read_payload
from ml.predict import Predictor

from .test_screening import cell_folder, subject_kfold_manifest  # noqa: F401  (generated C-NMC-layout cells)


def test_a_linear_probe_model_classifies_the_pooled_features_it_returns_as_its_embedding():
    torch.manual_seed(0)
    model = models.create("efficientnet_lite0_probe", num_classes=2, input_size=64).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, embedding = model.forward_with_embedding(x)
        pooled = model.features(x).mean(dim=(2, 3))
    assert embedding.shape == pooled.shape == (3, model.classifier.in_features)
    assert torch.allclose(embedding, pooled, atol=1e-6)
    assert torch.allclose(logits, model.classifier(pooled), atol=1e-5)


def test_every_subject_weighs_the_same_within_its_class_and_the_classes_weigh_the_same():
    subjects = np.array(["a"] * 30 + ["b"] * 10 + ["H1"] * 5)
    is_blast = np.array([True] * 40 + [False] * 5)
    w = screening_probe.subject_balanced_weights(subjects, is_blast)
    assert w[subjects == "a"].sum() == pytest.approx(w[subjects == "b"].sum())
    assert w[is_blast].sum() == pytest.approx(w[~is_blast].sum())
    assert w.mean() == pytest.approx(1.0)


def test_the_folded_probe_gives_the_regressions_own_probabilities():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 6)) * [1, 5, 0.2, 3, 1, 10] + [0, 4, -1, 2, 0, 50]
    is_blast = features[:, 0] + 0.3 * rng.normal(size=80) > 0
    subjects = np.array([f"s{i % 4}" if b else f"H{i % 2}" for i, b in enumerate(is_blast)])
    w, b = screening_probe.fit_probe(features, is_blast, subjects, c=0.5)
    mean, std = features.mean(0), features.std(0)
    reference = LogisticRegression(C=0.5, max_iter=5000).fit(
        (features - mean) / std, is_blast, sample_weight=screening_probe.subject_balanced_weights(subjects, is_blast))
    expected = reference.predict_proba((features - mean) / std)[:, 1]
    assert np.allclose(screening_probe.probe_probability(features, w, b), expected, atol=1e-9)


def test_a_constant_feature_does_not_break_the_fit():
    features = np.column_stack([np.linspace(-1, 1, 40), np.ones(40)])
    is_blast = features[:, 0] > 0
    subjects = np.array(["a", "b", "H1", "H2"] * 10)
    w, b = screening_probe.fit_probe(features, is_blast, subjects, c=1.0)
    assert np.isfinite(w).all() and np.isfinite(b)
    p = screening_probe.probe_probability(features, w, b)
    assert p[is_blast].min() > p[~is_blast].max()


@pytest.fixture(scope="module")
def probe_run(cell_folder, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("probe-run")
    manifest = subject_kfold_manifest(cell_folder, out, folds=2)
    # A random backbone keeps the test off the ImageNet weights; the generated cells separate anyway.
    report = screening_probe.run(str(cell_folder), out / "run", manifest, img_size=64, grid=(0.01, 1.0),
                                 pretrained=None)
    return out, report


def test_the_model_file_scores_cells_as_the_fitted_probe_does(probe_run, cell_folder):  # noqa: F811
    out, report = probe_run
    predictor = Predictor(out / "run" / "model.pt", with_domain=False)
    samples = [s for s in mldata.read_manifest(out / "manifest.csv") if s.split.startswith("fold")]
    paths = [cell_folder / s.path for s in samples]
    features = predictor.predict_outputs(paths)[1]
    is_blast = np.array([s.label == "all" for s in samples])
    subjects = np.array([screening.subject_of(s.path) for s in samples])
    w, b = screening_probe.fit_probe(features, is_blast, subjects, report["probe"]["C"])
    p_file = screening.blast_probability(predictor, cell_folder, samples)
    assert np.allclose(p_file, screening_probe.probe_probability(features, w, b), atol=1e-5)
    payload = read_payload(out / "run" / "model.pt")
    assert payload["threshold"] == pytest.approx(report["threshold"])
    assert payload["arch"] == "efficientnet_lite0_probe" and payload["task"] == "screening"
    assert payload["state_dict"]["classifier.weight"].dtype == torch.float32  # float16 would move the cut


def test_the_cut_keeps_the_target_on_the_out_of_fold_predictions_and_the_test_subjects_are_reported(probe_run):
    out, report = probe_run
    assert report["oof"]["sensitivity"] >= report["sensitivity_target"]
    assert report["probe"]["C"] in (0.01, 1.0) and len(report["probe"]["grid"]) == 2
    assert report["test"] is not None and {r["source"] for r in report["test_per_subject"]} == {"test"}
    assert {r["subject"] for r in report["oof_per_subject"]} == {
        s for k, v in report["subjects"].items() if k != "test" for s in v}
    written = json.loads((out / "run" / "report.json").read_text())
    assert written["model_sha256"] == mldata.sha256_file(out / "run" / "model.pt")
    for name in ("report.md", "roc.png", "subjects.png"):
        assert (out / "run" / name).stat().st_size > 0
    assert "| C | target | cut |" in (out / "run" / "report.md").read_text()


@pytest.fixture
def card_dirs(cell_folder, tmp_path, monkeypatch):  # noqa: F811
    """The card's weights and reports folders moved into tmp_path; a cell to time the latency on."""
    from ml import screening_card

    monkeypatch.setattr(screening_card, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(screening_card, "REPORTS_DIR", tmp_path / "reports")
    monkeypatch.setattr(screening_card, "PREVIOUS_ENSEMBLE", tmp_path / "reports" / "none")
    (tmp_path / "weights").mkdir()
    return next((cell_folder / "all").iterdir())


def test_the_card_gives_every_subject_the_grid_and_the_targets(probe_run, card_dirs, tmp_path):
    from ml import screening_card

    out, report = probe_run
    card = screening_card.ship_probe(out / "run", None, card_dirs).read_text()
    assert "flagged for review" in card and f"**{report['threshold']:.4f}**" in card
    for row in report["oof_per_subject"] + report["test_per_subject"]:
        assert f"| {row['subject']} | {row['truth']} | {row['source']} | {row['cells']} | {row['flagged']} |" in card
    assert "| C | target | cut |" in card and "specificity >= 0.50" in card
    assert "whole subjects resampled with replacement" in card and "Out-of-fold, estimate run: sensitivity" in card
    assert (tmp_path / "weights" / "screening.pt").is_file()
    assert (tmp_path / "reports" / "screening" / "estimate-subjects.png").is_file()


def test_the_domain_check_of_a_probe_is_fitted_on_the_folds_it_names(probe_run, cell_folder, tmp_path):  # noqa: F811
    from PIL import Image

    from ml.domain_fit import fit_model_domain

    out, _ = probe_run
    payload = read_payload(out / "run" / "model.pt")
    assert payload["domain_splits"] == {"fit": ["fold1"], "calibrate": ["fold0"]}
    rng = np.random.default_rng(0)
    others = []
    for i in range(12):  # smear-field-like images of the other kind: no black surround
        path = tmp_path / f"field{i}.png"
        Image.fromarray(rng.integers(120, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        others.append(path)
    check = fit_model_domain(out / "run" / "model.pt", cell_folder, None, progress=False, write=False,
                             other_paths=others)
    assert check.fit_record["train_splits"] == ["fold1"] and check.fit_record["val_splits"] == ["fold0"]


def test_the_card_shows_the_estimate_probes_robustness_at_its_cut(probe_run, card_dirs, cell_folder, tmp_path):  # noqa: F811
    from ml import robustness, screening_card

    out, _ = probe_run
    cell = card_dirs
    assert "## Robustness" not in screening_card.ship_probe(out / "run", None, cell).read_text()
    robustness.run(out / "run" / "model.pt", cell_folder, out / "manifest.csv", out=tmp_path / "reports" / "screening",
                   which="stain")
    card = screening_card.ship_probe(out / "run", None, cell).read_text()
    assert "## Robustness to acquisition changes" in card and "| stain | bluer |" in card
    assert "sensitivity >= 0.95 and specificity >= 0.5 at the stored cut" in card
    assert "the suite ran on the estimate run's probe" in card
    assert card.index("## Robustness") < card.index("## Why a probe")
    suite = json.loads((tmp_path / "reports" / "screening" / "robustness.json").read_text())
    missed = [r["name"] for r in suite["perturbations"] if r["mild"] and not r["meets_target"]]
    limitations = card[card.index("## Limitations"):]
    assert ("missed a target" in limitations) == bool(missed)
    assert all(f"{name} (sensitivity" in limitations for name in missed)

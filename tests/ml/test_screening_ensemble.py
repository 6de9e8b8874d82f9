"""Screening ensemble: fold members read as one model, a cut chosen on out-of-fold predictions that carries
over to new subjects, per-subject reporting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml import data as mldata
from ml import models, screening, screening_ensemble
from ml.predict import Predictor
from ml.train import TrainConfig

from .test_screening import cell_folder, subject_kfold_manifest  # noqa: F401  (generated C-NMC-layout cells)


def test_the_ensemble_probability_is_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [models.create("mobilenetv3_screen", num_classes=2, input_size=48).eval() for _ in range(3)]
    ensemble = models.EnsembleClassifier(members).eval()
    x = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        logits, embedding = ensemble.forward_with_embedding(x)
        expected = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
        member_dims = sum(m.forward_with_embedding(x)[1].shape[1] for m in members)
    assert torch.allclose(torch.softmax(logits, dim=1), expected, atol=1e-6)
    assert embedding.shape == (5, member_dims)  # the members' embeddings side by side, for the domain check


def simulated_subject_scores(rng, subjects: int, blast: bool, cells: int = 60):
    """P(blast) of cells: each subject has its own shift (its slide), cells spread around it."""
    centre = 2.0 if blast else -1.5
    rows = []
    for _ in range(subjects):
        shift = rng.normal(0, 0.6)
        rows.append(1 / (1 + np.exp(-(centre + shift + rng.normal(0, 1.2, cells)))))
    return rows


def test_a_cut_chosen_by_leave_one_subject_out_keeps_the_sensitivity_on_new_subjects():
    rng = np.random.default_rng(7)
    blasts, normals = simulated_subject_scores(rng, 8, True), simulated_subject_scores(rng, 2, False)
    subjects = np.concatenate([[f"b{i}"] * len(s) for i, s in enumerate(blasts)] + [[f"h{i}"] * len(s) for i, s in enumerate(normals)])
    is_blast = np.concatenate([np.ones(sum(map(len, blasts)), bool), np.zeros(sum(map(len, normals)), bool)])
    p_blast = np.concatenate(blasts + normals)
    target = screening.choose_sensitivity_target(screening.subject_transfer([(subjects, is_blast, p_blast)]))
    cut = screening.choose_threshold(p_blast, is_blast, target)
    new_subjects = np.concatenate(simulated_subject_scores(rng, 40, True))
    naive_cut = screening.choose_threshold(p_blast, is_blast, screening.MIN_SENSITIVITY)
    assert target > screening.MIN_SENSITIVITY  # subjects differ, so the cut needs a margin...
    assert (new_subjects >= cut).mean() >= screening.MIN_SENSITIVITY  # ...and with it new subjects keep 0.95
    assert cut <= naive_cut


@pytest.fixture(scope="module")
def ensemble_run(cell_folder, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ensemble-run")
    manifest = subject_kfold_manifest(cell_folder, out, folds=3)
    base = TrainConfig(data=str(cell_folder), arch="mobilenetv3_screen", out="", epochs=2, img_size=48,
                       batch_size=16, progress=False)
    return out, screening_ensemble.run(str(cell_folder), out / "run", manifest, base)


def test_the_kfold_manifest_keeps_subjects_whole_and_normals_apart(ensemble_run):
    out, _ = ensemble_run
    samples = mldata.read_manifest(out / "manifest.csv")
    split_of = {}
    for s in samples:
        assert split_of.setdefault(screening.subject_of(s.path), s.split) == s.split
    base = {screening.subject_of(s.path): s.split for s in mldata.read_manifest(out / "base.csv")}
    assert {s for s, split in base.items() if split == "test"} == {s for s, split in split_of.items() if split == "test"}
    normal_folds = [split_of[s] for s in split_of if s.startswith("H") and split_of[s] != "test"]
    assert len(normal_folds) == len(set(normal_folds)) == 2
    assert {"test", "fold0", "fold1", "fold2"} == set(split_of.values())


def test_without_test_subjects_every_subject_joins_a_fold(ensemble_run):
    out, _ = ensemble_run
    every = screening_ensemble.make_kfold_manifest(out / "base.csv", out / "all.csv", folds=3, with_test=False)
    splits = {s.split for s in mldata.read_manifest(every)}
    assert splits == {"fold0", "fold1", "fold2"}


def test_the_ensemble_file_scores_the_mean_of_its_fold_models_at_the_out_of_fold_cut(ensemble_run, cell_folder):  # noqa: F811
    _, report = ensemble_run
    ensemble = Predictor(report["model_file"])
    members = [Predictor(f["model_file"]) for f in report["folds"]]
    assert ensemble.payload["arch"] == "ensemble" and len(ensemble.payload["members"]) == 3
    assert ensemble.threshold == pytest.approx(report["threshold"])
    images = sorted(Path(cell_folder).glob("*/*.png"))[:6]
    stored = [screening_ensemble.member_predictor(ensemble, i) for i in range(3)]
    assert np.allclose(ensemble.predict_proba(images),
                       np.mean([m.predict_proba(images, temperature=1.0) for m in stored], axis=0), atol=1e-6)
    mean = np.mean([m.predict_proba(images, temperature=1.0) for m in members], axis=0)
    assert np.allclose(ensemble.predict_proba(images), mean, atol=0.05)  # the fold models before int8 storage
    result = ensemble.predict(images[:1])[0]
    assert result["label"] in ("blast", "normal") and result["threshold"] == pytest.approx(report["threshold"])
    # The cut is the one chosen on the members' pooled out-of-fold predictions.
    assert report["oof"]["sensitivity"] >= report["sensitivity_target"]


def test_the_cut_is_chosen_on_the_stored_int8_members_out_of_fold(ensemble_run, cell_folder):  # noqa: F811
    out, report = ensemble_run
    ensemble = Predictor(report["model_file"])
    assert ensemble.payload["weights_dtype"] == "int8" and report["storage"]["weights"] == "int8"
    samples = mldata.read_manifest(report["manifest"])
    p_oof, y_oof = [], []
    for i, fold in enumerate(report["folds"]):
        cells = [s for s in samples if s.split == fold["fold"]]
        p_oof.append(screening.blast_probability(screening_ensemble.member_predictor(ensemble, i), cell_folder, cells))
        y_oof.append([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in cells])
    p_oof, y_oof = np.concatenate(p_oof), np.concatenate(y_oof)
    cut = screening.choose_threshold(p_oof, y_oof, report["sensitivity_target"])
    assert ensemble.threshold == pytest.approx(cut) == pytest.approx(report["threshold"])
    assert report["oof"] == screening.screening_metrics(p_oof, y_oof, cut)


def test_the_card_says_how_int8_storage_moved_the_numbers_and_the_cut(ensemble_run):
    from ml.screening_card import storage_section

    _, report = ensemble_run
    lines = storage_section(report, Path(report["model_file"]))
    assert lines[0] == "### Stored in int8"
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| float32 fold models (as trained)", "| int8, the float32 cut",
                                                 "| **int8, cut re-chosen (shipped)**"]
    assert f"{report['threshold']:.4f}" in rows[2] and f"{report['storage']['float32_threshold']:.4f}" in rows[0]


def test_the_report_gives_every_subject_with_its_numbers_and_plots(ensemble_run):
    out, report = ensemble_run
    rows = report["oof_per_subject"] + report["test_per_subject"]
    assert {r["source"] for r in rows} == {"out-of-fold", "test"}
    assert len(rows) == sum(len(v) for v in report["subjects"].values())
    for row in rows:
        assert ("sensitivity" in row) == (row["truth"] == "blast") and row["cells"] > 0
    text = (out / "run" / "report.md").read_text()
    assert "| subject | truth | where scored | cells | flagged | sensitivity | specificity |" in text
    assert "Worst blast subject" in text and "test subjects, ensemble" in text
    for plot in ("roc.png", "subjects.png"):
        assert (out / "run" / plot).read_bytes()[:4] == b"\x89PNG"

"""Single-cell screening as a linear probe on frozen ImageNet features, with a cut that carries over.

Why a probe: C-NMC fold 1 has 14 subjects, 3 of them normal, and every subject is one slide. Fine-tuning a
CNN on so few subjects teaches it which slide a cell came from (stain, cell size, focus) as much as what a
blast looks like, and how much of each depends on which normal subjects a model happens to see: the fine-tuned
ensemble's out-of-fold specificity moved by 0.1 with the seed alone (ml/reports/screening/seed1-estimate/).
Here the backbone keeps its ImageNet weights and only one linear layer is fitted, as an L2-regularised
logistic regression (scikit-learn) on the pooled features of each cell, with every subject weighing the same
within its class and both classes the same in all. It is convex: one answer per setting, no seed, and the
regularisation strength ``C`` is the one setting, chosen by subject-grouped cross-validation.

Protocol (``run``), on the folds of a subject manifest (``screening_ensemble.make_kfold_manifest``):

1. The backbone is written to the model file first and stored in float16 (``store_float16``); every
   feature is computed by that stored file through ``Predictor`` (the serving preprocessing), so the probe is
   fitted on exactly what the portal computes.
2. For each ``C``: one probe per fold fitted on the other folds' cells scores its own fold (out-of-fold, OOF).
   Leave-one-subject-out checks within the folds (``screening.subject_transfer``) give the sensitivity target
   a cut needs for a new subject; the cut is the highest P(blast) keeping that target on the pooled OOF
   predictions. The ``C`` with the best OOF specificity at its cut is kept (ties: the stronger regularisation).
3. The shipped probe is refitted with that ``C`` on every fold cell; the standardisation is folded into the
   linear layer, which becomes the model's classifier (logit(blast) = w . x + b, logit(normal) = 0, so the
   softmax is exactly the regression's probability). The cut is the OOF cut of step 2: the refitted probe is
   the same recipe on more subjects, and ``test`` subjects, when the manifest has them, show whether the cut
   carries over; they are read once, after everything above is fixed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import data as mldata
from . import models, screening
from .checkpoint import read_payload, save_model, store_float16, update_payload
from .predict import Predictor
from .screening_ensemble import subject_rows, subject_table, worst, write_run
from .screening import fmt
from .train import TrainConfig, hardware

ARCH = "efficientnet_lite0_probe"
C_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


def subject_balanced_weights(subjects: np.ndarray, is_blast: np.ndarray) -> np.ndarray:
    """One weight per cell: within each class every subject weighs the same, the two classes weigh the same,
    and the weights average 1. A subject with 750 cells must not teach the probe 750 times what its slide
    looks like; with 3 normal subjects against 11 blast ones the classes are balanced too."""
    subjects, is_blast = np.asarray(subjects), np.asarray(is_blast, dtype=bool)
    weights = np.zeros(len(subjects))
    for label in (True, False):
        mine = is_blast == label
        present = sorted(set(subjects[mine]))
        for subject in present:
            cells = mine & (subjects == subject)
            weights[cells] = 1.0 / (len(present) * cells.sum())
    return weights * len(subjects) / weights.sum()


def fit_probe(features: np.ndarray, is_blast: np.ndarray, subjects: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """(w, b) with P(blast) = sigmoid(w . x + b) on the raw features: a logistic regression on standardised
    features (strength ``c``, subject-balanced weights), its standardisation folded into w and b."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype=np.float64)
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    regression = LogisticRegression(C=c, max_iter=5000)
    regression.fit((features - mean) / std, np.asarray(is_blast, dtype=int),
                   sample_weight=subject_balanced_weights(subjects, is_blast))
    w = regression.coef_[0] / std
    return w, float(regression.intercept_[0] - w @ mean)


def probe_probability(features: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(np.asarray(features, dtype=np.float64) @ w + b)))


def oof_scores(score, features, is_blast, subjects, folds) -> tuple[np.ndarray, list]:
    """OOF scores (in the order of the cells) and, per fold, (subjects, is_blast, score) for ``subject_transfer``.
    ``score(train_features, train_is_blast, train_subjects, held_features)`` fits on one fold's training cells
    and scores its held-out ones."""
    p = np.zeros(len(is_blast))
    fold_data = []
    for fold in sorted(set(folds)):
        held = folds == fold
        p[held] = score(features[~held], is_blast[~held], subjects[~held], features[held])
        fold_data.append((subjects[held], is_blast[held], p[held]))
    return p, fold_data


def cross_validate(features, is_blast, subjects, folds, c: float) -> tuple[np.ndarray, list]:
    """OOF P(blast) of the probe with strength ``c`` (``oof_scores``)."""
    def score(x, y, groups, held):
        w, b = fit_probe(x, y, groups, c)
        return probe_probability(held, w, b)

    return oof_scores(score, features, is_blast, subjects, folds)


def oof_cut(p, is_blast, fold_data) -> tuple[dict, float, float, dict]:
    """(transfer table, sensitivity target, cut, metrics at the cut) of OOF scores ``p`` (any score that ranks
    cells) and their folds' (subjects, is_blast, score), as ``cross_validate`` returns them."""
    transfer = screening.subject_transfer(fold_data)
    target = screening.choose_sensitivity_target(transfer)
    cut = screening.choose_threshold(p, is_blast, target)
    return transfer, target, cut, screening.screening_metrics(p, is_blast, cut)


def choose_c(features, is_blast, subjects, folds, grid=C_GRID) -> tuple[float, list[dict], dict]:
    """The ``C`` whose OOF specificity at its own cut is best (ties: the smaller ``C``), every setting's
    numbers, and the chosen setting's OOF predictions, transfer table, target and cut."""
    rows, best = [], None
    for c in sorted(grid):
        p, fold_data = cross_validate(features, is_blast, subjects, folds, c)
        transfer, target, cut, metrics = oof_cut(p, is_blast, fold_data)
        rows.append({"C": c, "sensitivity_target": target, "threshold": cut, **{k: metrics[k] for k in (
            "sensitivity", "specificity", "weighted_f1", "roc_auc")}})
        if best is None or metrics["specificity"] > best["metrics"]["specificity"] + 1e-12:
            best = {"C": c, "p": p, "transfer": transfer, "target": target, "threshold": cut, "metrics": metrics}
    return best["C"], rows, best


def write_backbone(path: Path, config: TrainConfig, pretrained: str | Path | None) -> Path:
    """The model file with the backbone only (classifier zero), stored in float16: the features come from it."""
    model = models.create(config.arch, num_classes=2, input_size=config.img_size, pretrained_weights=pretrained)
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    save_model(path, model, config, config.classes, 1.0, [], 0.0, 0)
    return store_float16(path)


def write_classifier(path: Path, w: np.ndarray, b: float, extra: dict) -> Path:
    """Put the probe into the model file as its classifier: logit(blast) = w . x + b, logit(normal) = 0.
    The classifier stays float32 (5 KB): rounding w to float16 would move the cut."""
    payload = read_payload(path)
    classes, state = payload["classes"], dict(payload["state_dict"])
    blast = classes.index(screening.POSITIVE)
    weight = torch.zeros(len(classes), len(w))
    bias = torch.zeros(len(classes))
    weight[blast] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    bias[blast] = float(b)
    state.update({"classifier.weight": weight, "classifier.bias": bias})
    update_payload(path, state_dict=state, **extra)
    return Path(path)


def run(data: str, out: str | Path, manifest: str | Path, img_size: int = 224, input_norm: str = "image",
        grid=C_GRID, pretrained: str | Path | None = "imagenet", arch: str = ARCH, seed: int = 0,
        batch_size: int = 32) -> dict:
    """Fit, choose and store the probe; score the test subjects when the manifest has them.
    Writes OUT/model.pt, report.json, report.md, roc.png and subjects.png."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = screening.load_subject_manifest(data, manifest, seed)
    fold_samples = [s for s in samples if s.split.startswith("fold")]
    test = [s for s in samples if s.split == "test"]
    if len({s.split for s in fold_samples}) < 2:
        raise ValueError("the manifest needs at least two subject folds (fold0, fold1, ...)")
    if pretrained == "imagenet":
        pretrained = models.efficientnet_lite0_imagenet_file()
    config = TrainConfig(**screening.common_config(data, manifest, seed), arch=arch, out=str(out), epochs=0,
                         img_size=img_size, input_norm=input_norm, balance="subject-weighted",
                         pretrained_weights=str(pretrained) if pretrained else None,
                         train_splits=sorted({s.split for s in fold_samples}), val_splits=[])
    model_file = write_backbone(out / "model.pt", config, pretrained)
    extractor = Predictor(model_file, with_domain=False)
    root = Path(data)
    features = extractor.predict_outputs([root / s.path for s in fold_samples], batch_size)[1]
    is_blast = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in fold_samples])
    subjects = np.array([screening.subject_of(s.path) for s in fold_samples])
    folds = np.array([s.split for s in fold_samples])
    c, grid_rows, best = choose_c(features, is_blast, subjects, folds, grid)
    w, b = fit_probe(features, is_blast, subjects, c)
    threshold = best["threshold"]
    wall = time.perf_counter() - started
    payload = read_payload(model_file)
    training = {**payload["training"], "wall_time_s": round(wall, 1), "hardware": hardware()}
    write_classifier(model_file, w, b, {
        "threshold": float(threshold), "positive_class": screening.POSITIVE, "training": training,
        # The domain check is fitted on all folds but the first and sets its cut on the first (ml.domain_fit).
        "domain_splits": {"fit": [str(f) for f in sorted(set(folds))[1:]], "calibrate": [str(sorted(set(folds))[0])]},
        "probe": {"C": c, "features": int(features.shape[1]), "cells": len(fold_samples),
                  "subjects": sorted({str(s) for s in subjects}), "weights": "subject-balanced"},
        "screening": {"balance": "subject-balanced weights", "min_sensitivity": screening.MIN_SENSITIVITY,
                      "validation_sensitivity_target": float(best["target"]),
                      "threshold_from": "pooled out-of-fold P(blast) of the fold probes"}})
    predictor = Predictor(model_file, with_domain=False)
    report = {
        "model": "screening", "kind": "probe", "model_version": predictor.version, "model_file": str(model_file),
        "model_sha256": mldata.sha256_file(model_file), "manifest": str(manifest),
        "manifest_sha256": mldata.sha256_file(manifest), "arch": arch, "img_size": img_size,
        "threshold": threshold, "sensitivity_target": best["target"],
        "subjects": {split: sorted({screening.subject_of(s.path) for s in samples if s.split == split})
                     for split in sorted({s.split for s in samples})},
        "probe": {"C": c, "grid": grid_rows, "features": int(features.shape[1])},
        "oof": best["metrics"],
        "oof_per_subject": subject_rows(fold_samples, best["p"], threshold, "out-of-fold"),
        "transfer": best["transfer"],
        "train_wall_s": round(wall, 1), "hardware": hardware(),
        "config": {"arch": arch, "img_size": img_size, "input_norm": input_norm, "framing": "none",
                   "pretrained_weights": config.pretrained_weights, "balance": "subject-weighted",
                   "C_grid": list(grid)},
        "test": None,
    }
    curves = {"out-of-fold (fold probes on their own fold)": (is_blast, best["p"])}
    points = {"out-of-fold at the cut": (1 - report["oof"]["specificity"], report["oof"]["sensitivity"])}
    if test:
        y_test = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in test])
        p_test = screening.blast_probability(predictor, data, test)
        report["test"] = screening.screening_metrics(p_test, y_test, threshold)
        report["test_per_subject"] = subject_rows(test, p_test, threshold, "test")
        curves["test subjects, shipped probe"] = (y_test, p_test)
        points["test at the cut"] = (1 - report["test"]["specificity"], report["test"]["sensitivity"])
    return write_run(report, out, curves, points, f"{arch}: blast vs normal cell", markdown)


def markdown(report: dict) -> str:
    subjects = report["subjects"]
    oof_subjects = sum(len(v) for k, v in subjects.items() if k != "test")
    lines = [
        f"# Screening probe ({report['model_version']})",
        "",
        f"`{report['arch']}` at {report['img_size']} px: frozen ImageNet features, one logistic regression (C "
        f"{report['probe']['C']:g}, chosen by subject-grouped CV). A cell is flagged when P(blast) >= "
        f"**{report['threshold']:.4f}**, the highest cut keeping sensitivity >= {report['sensitivity_target']:.2f} on the "
        "fold probes' pooled out-of-fold predictions.",
        "",
        "- Folds: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in subjects.items() if k != "test") + ".",
        f"- Test subjects (read once, after C and the cut were fixed): "
        f"{', '.join(subjects.get('test', [])) or 'none (every subject fits the probe)'}.",
        "",
        "| evaluation | subjects | cells (blast/normal) | sensitivity | specificity | F1 (blast) | weighted F1 | "
        "balanced acc. | ROC AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if report["test"]:
        lines.append(screening.metrics_rows("**test subjects**", report["test"], str(len(subjects["test"]))))
    lines.append(screening.metrics_rows("out-of-fold (each fold probe on its own fold)", report["oof"], str(oof_subjects)))
    rows = report["oof_per_subject"] + report.get("test_per_subject", [])
    lines += ["", f"Worst blast subject: sensitivity {fmt(worst(rows, 'sensitivity'))}; worst normal subject: "
              f"specificity {fmt(worst(rows, 'specificity'))}.", "", *subject_table(rows), "",
              "Regularisation chosen on the out-of-fold predictions (each C with its own transfer-checked target and cut):",
              "", *grid_table(report), "", "![ROC curves](roc.png)", "", "![per subject](subjects.png)", ""]
    return "\n".join(lines)


def grid_table(report: dict) -> list[str]:
    lines = ["| C | target | cut | OOF sensitivity | OOF specificity | weighted F1 | ROC AUC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["probe"]["grid"]:
        mark = "**" if r["C"] == report["probe"]["C"] else ""
        lines.append(f"| {mark}{r['C']:g}{mark} | {r['sensitivity_target']:.2f} | {r['threshold']:.4f} | "
                     f"{fmt(r['sensitivity'])} | {fmt(r['specificity'])} | {fmt(r['weighted_f1'])} | {fmt(r['roc_auc'])} |")
    return lines


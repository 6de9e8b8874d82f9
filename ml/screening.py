"""Single-cell screening (C-NMC 2019): ALL blast vs normal cell, sensitivity first.

Subjects, not cells, are the unit of generalisation: every cell of a subject stays on one side.
With only a few normal subjects, settings are chosen by subject-grouped cross-validation:

1. ``test``: a few subjects of each class held out, untouched until the final evaluation.
2. The other subjects are dealt into folds (``fold0``, ``fold1``, ...), one normal subject per fold
   where possible. For each balancing mode, one model per fold is trained on the other folds and
   predicts its own fold: these out-of-fold (OOF) probabilities choose the balancing mode.
3. Leave-one-subject-out checks within each fold's validation subjects choose the sensitivity
   target a cut needs so that a new subject still gets >= 0.95 of its blasts flagged.
4. The deployed model is the chosen mode's fold model with the best validation AUC; its cut is the
   highest P(blast) that keeps that target on its own validation subjects. It is scored once on the
   test subjects. Optionally, for comparison, a model retrained on every CV subject is scored too.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from . import data as mldata
from .checkpoint import update_payload
from .predict import Predictor
from .train import TrainConfig, train

FOLDER_TO_LABEL = {"all": "blast", "hem": "normal"}
POSITIVE = "blast"
SUBJECT = re.compile(r"UID_(H?\d+)_")
MIN_SENSITIVITY = 0.95


def subject_of(path: str) -> str:
    match = SUBJECT.search(Path(path).name)
    if not match:
        raise ValueError(f"no C-NMC subject id in {path!r} (expected UID_<subject>_...)")
    return match.group(1)


def make_subject_split(root: str | Path, test_subjects: dict[str, int] | None = None, folds: int = 2,
                       seed: int = 0) -> mldata.ScanResult:
    """Subject-grouped split: ``test`` subjects, the rest dealt into ``fold0..fold{k-1}``.

    Within each class, subjects are shuffled with the seed; the first ones go to test, the rest to
    the fold with the fewest cells of that class so far (largest subjects first).
    """
    test_subjects = test_subjects or {"all": 3, "hem": 1}
    scan = mldata.scan_folder(root)
    mldata.assign_groups(scan.samples, group_of=lambda s: f"subject:{subject_of(s.path)}")
    members: dict[str, list] = defaultdict(list)
    for sample in scan.samples:
        members[sample.group].append(sample)
    rng = random.Random(seed)
    for label in scan.classes:
        groups = sorted(g for g, items in members.items() if Counter(s.label for s in items).most_common(1)[0][0] == label)
        rng.shuffle(groups)
        n_test = min(test_subjects.get(label, 1), max(len(groups) - folds, 0))
        assignment = {g: "test" for g in groups[:n_test]}
        filled = [0] * folds
        for group in sorted(groups[n_test:], key=lambda g: -len(members[g])):
            k = filled.index(min(filled))
            filled[k] += len(members[group])
            assignment[group] = f"fold{k}"
        for group, split in assignment.items():
            for sample in members[group]:
                sample.split = split
    return scan


def choose_threshold(p_blast: np.ndarray, is_blast: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY) -> float:
    """The highest cut on P(blast) whose sensitivity is still >= ``min_sensitivity`` (best specificity)."""
    p_blast, is_blast = np.asarray(p_blast, dtype=float), np.asarray(is_blast, dtype=bool)
    if not is_blast.any():
        raise ValueError("no blast among the cells: sensitivity is undefined")
    positives = np.sort(p_blast[is_blast])[::-1]
    needed = int(np.ceil(min_sensitivity * len(positives)))  # blasts that must score >= threshold
    return float(positives[needed - 1])


# Pooled validation sensitivities a cut may be chosen for: 0.95 itself, then margins above it, because a
# cut chosen on a few subjects loses sensitivity on a new subject whose blasts score lower.
SENSITIVITY_TARGETS = (0.95, 0.97, 0.98, 0.99)


def subject_transfer(folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]], targets=SENSITIVITY_TARGETS) -> dict:
    """How a threshold carries over to a subject it was not chosen on, for each target sensitivity.

    ``folds`` holds, per fold model, its validation cells as (subject ids, is_blast, P(blast)). Within each
    fold, every blast subject in turn is left out, the cut is chosen on the fold's other blast subjects and
    scored on the one left out; normal subjects are scored at the cut chosen on all of the fold's blasts.
    Only cross-validation subjects are used.
    """
    result = {}
    for target in targets:
        flagged = total = 0
        per_subject, specificities = [], []
        for subjects, is_blast, p_blast in folds:
            blast_subjects = sorted(set(subjects[is_blast]))
            for left_out in blast_subjects if len(blast_subjects) > 1 else []:
                others = is_blast & (subjects != left_out)
                cut = choose_threshold(p_blast[others], np.ones(int(others.sum()), bool), target)
                mine = p_blast[is_blast & (subjects == left_out)]
                flagged, total = flagged + int((mine >= cut).sum()), total + len(mine)
                per_subject.append({"subject": str(left_out), "sensitivity": float((mine >= cut).mean())})
            cut = choose_threshold(p_blast, is_blast, target)
            for normal in sorted(set(subjects[~is_blast])):
                specificities.append(float((p_blast[~is_blast & (subjects == normal)] < cut).mean()))
        result[f"{target:.2f}"] = {
            "target": target, "left_out_sensitivity": flagged / total if total else float("nan"),
            "worst_subject_sensitivity": min((r["sensitivity"] for r in per_subject), default=float("nan")),
            "subjects_at_or_above_0.95": sum(r["sensitivity"] >= MIN_SENSITIVITY for r in per_subject),
            "subjects": len(per_subject), "per_subject": per_subject,
            "normal_specificity": float(np.mean(specificities)) if specificities else float("nan")}
    return result


def choose_sensitivity_target(transfer: dict) -> float:
    """The smallest target whose cut, chosen without a subject, still kept >= 0.95 of that subject's blasts
    (pooled over the left-out subjects); the largest target if none did."""
    rows = sorted(transfer.values(), key=lambda r: r["target"])
    return next((r["target"] for r in rows if r["left_out_sensitivity"] >= MIN_SENSITIVITY), rows[-1]["target"])


def screening_metrics(p_blast: np.ndarray, is_blast: np.ndarray, threshold: float) -> dict:
    p_blast, is_blast = np.asarray(p_blast, dtype=float), np.asarray(is_blast, dtype=bool)
    flagged = p_blast >= threshold
    tp, fn = int((flagged & is_blast).sum()), int((~flagged & is_blast).sum())
    tn, fp = int((~flagged & ~is_blast).sum()), int((flagged & ~is_blast).sum())
    both = is_blast.any() and (~is_blast).any()
    return {
        "n": int(len(is_blast)), "blasts": int(is_blast.sum()), "normals": int((~is_blast).sum()),
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "f1": float(f1_score(is_blast, flagged, zero_division=0)),
        "weighted_f1": float(f1_score(is_blast, flagged, average="weighted", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(is_blast, flagged)) if both else float("nan"),
        "roc_auc": float(roc_auc_score(is_blast, p_blast)) if both else float("nan"),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def per_subject(samples, p_blast, threshold) -> list[dict]:
    rows: dict[str, dict] = {}
    for sample, p in zip(samples, p_blast):
        subject = subject_of(sample.path)
        row = rows.setdefault(subject, {"subject": subject, "truth": FOLDER_TO_LABEL[sample.label], "cells": 0, "flagged": 0})
        row["cells"] += 1
        row["flagged"] += int(p >= threshold)
    for row in rows.values():
        row["flagged_fraction"] = row["flagged"] / row["cells"]
    return sorted(rows.values(), key=lambda r: r["subject"])


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], points: dict[str, tuple[float, float]], path: Path,
             title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
    for name, (is_blast, p_blast) in curves.items():
        fpr, tpr, _ = roc_curve(is_blast, p_blast)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(is_blast, p_blast):.3f})")
    for name, (fpr, tpr) in points.items():
        ax.plot([fpr], [tpr], "o", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.axhline(MIN_SENSITIVITY, color="red", lw=0.6, ls="--")
    ax.set_xlabel("1 - specificity (normal cells flagged)")
    ax.set_ylabel("sensitivity (blasts flagged)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def blast_probability(predictor: Predictor, root, samples) -> np.ndarray:
    """Uncalibrated P(blast) (temperature 1): fold models and the final model are compared on one scale."""
    probs = predictor.predict_proba([Path(root) / s.path for s in samples], temperature=1.0)
    return probs[:, predictor.classes.index(POSITIVE)]


def load_subject_manifest(data: str, manifest: str | Path, seed: int = 0) -> list:
    manifest = Path(manifest)
    if not manifest.is_file():
        mldata.write_manifest(make_subject_split(data, seed=seed), manifest)
    samples = mldata.read_manifest(manifest)
    problems = mldata.check_manifest(samples, data)
    if problems:
        raise ValueError("manifest problems: " + "; ".join(problems[:5]))
    return samples


def common_config(data: str, manifest: str | Path, seed: int) -> dict:
    return dict(data=str(data), manifest=str(manifest), task="screening", class_names=[FOLDER_TO_LABEL[c] for c in
                sorted(FOLDER_TO_LABEL)], classes=sorted(FOLDER_TO_LABEL), seed=seed)


def cross_validate(data: str, out: Path, manifest: str | Path, samples: list, base: TrainConfig,
                   balance_modes=("undersample", "oversample"), seed: int = 0) -> dict:
    """Subject-grouped CV per balancing mode: out-of-fold P(blast), pooled threshold and metrics.

    Touches only the fold subjects; the test subjects are not read.
    """
    folds = sorted({s.split for s in samples if s.split.startswith("fold")})
    common = common_config(data, manifest, seed)
    cv: dict[str, dict] = {}
    for mode in balance_modes:
        oof_p, oof_y, best_epochs, fold_rows, fold_data = [], [], [], [], []
        for fold in folds:
            config = replace(base, **common, balance=mode, out=str(out / f"cv-{mode}-{fold}"),
                             train_splits=[f for f in folds if f != fold], val_splits=[fold])
            model_file = Path(config.out) / "model.pt"
            if not model_file.exists():
                train(config, resume=True)
            predictor = Predictor(model_file)
            held = [s for s in samples if s.split == fold]
            p = blast_probability(predictor, data, held)
            y = np.array([FOLDER_TO_LABEL[s.label] == POSITIVE for s in held])
            oof_p.append(p)
            oof_y.append(y)
            fold_data.append((np.array([subject_of(s.path) for s in held]), y, p))
            best_epochs.append(predictor.payload["training"]["best_epoch"] + 1)
            own = choose_threshold(p, y)
            fold_rows.append({"fold": fold, "model_file": str(model_file),
                              "subjects": sorted({subject_of(s.path) for s in held}),
                              "own_threshold": own, "metrics": screening_metrics(p, y, own),
                              "train_wall_s": predictor.payload["training"]["wall_time_s"]})
        p, y = np.concatenate(oof_p), np.concatenate(oof_y)
        threshold = choose_threshold(p, y)
        transfer = subject_transfer(fold_data)
        cv[mode] = {"threshold": threshold, "oof": screening_metrics(p, y, threshold), "folds": fold_rows,
                    "best_epochs": best_epochs, "transfer": transfer,
                    "sensitivity_target": choose_sensitivity_target(transfer), "curve": (y, p), "fold_data": fold_data}
    return cv


PRIVATE = ("curve", "fold_data")  # arrays kept in memory for plots and thresholds, not written to JSON


def cv_summary(cv: dict, base: TrainConfig) -> dict:
    """What a CV-only comparison records: per mode, pooled OOF metrics and per-fold metrics (no test data)."""
    return {"arch": base.arch, "img_size": base.img_size, "epochs": base.epochs,
            "pretrained_weights": bool(base.pretrained_weights),
            "cv": {m: {k: v for k, v in r.items() if k not in PRIVATE} for m, r in cv.items()}}


def run(data: str, out: str | Path, manifest: str | Path, base: TrainConfig, balance_modes=("undersample", "oversample"),
        seed: int = 0, cv_only: bool = False, all_subjects_model: bool = True) -> dict:
    """The whole protocol; resumable (finished runs are reused). Writes OUT/report.json, report.md, roc.png.

    With ``cv_only`` it stops after cross-validation and writes OUT/cv.json: settings are compared
    on the fold subjects only, so the test subjects are read once, for the configuration chosen.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Path(manifest)
    samples = load_subject_manifest(data, manifest, seed)
    folds = sorted({s.split for s in samples if s.split.startswith("fold")})
    common = common_config(data, manifest, seed)
    cv = cross_validate(data, out, manifest, samples, base, balance_modes, seed)
    if cv_only:
        summary = cv_summary(cv, base)
        (out / "cv.json").write_text(json.dumps(summary, indent=1))
        return summary
    chosen = max(cv, key=lambda m: (cv[m]["oof"]["specificity"], cv[m]["oof"]["roc_auc"]))
    # The deployed model is the chosen mode's fold model with the best validation AUC, with the threshold
    # chosen on its own validation subjects: a cut only means something on the scale of the model it was
    # chosen for (a model retrained on all subjects scores on another scale; see "all_subjects" below).
    # Its cut is chosen for the sensitivity target that, in leave-one-subject-out checks on the CV
    # subjects, still gave a new subject >= 0.95 of its blasts (see subject_transfer).
    best_index = max(range(len(cv[chosen]["folds"])), key=lambda i: cv[chosen]["folds"][i]["metrics"]["roc_auc"])
    best_fold = cv[chosen]["folds"][best_index]
    target = cv[chosen]["sensitivity_target"]
    _, fold_y, fold_p = cv[chosen]["fold_data"][best_index]
    deployed_file, threshold = Path(best_fold["model_file"]), choose_threshold(fold_p, fold_y, target)
    update_payload(deployed_file, threshold=threshold, positive_class=POSITIVE, temperature=1.0,
                   screening={"chosen_balance": chosen, "validation_fold": best_fold["fold"],
                              "min_sensitivity": MIN_SENSITIVITY, "validation_sensitivity_target": target})
    test = [s for s in samples if s.split == "test"]
    y_test = np.array([FOLDER_TO_LABEL[s.label] == POSITIVE for s in test])
    predictor = Predictor(deployed_file)
    p_test = blast_probability(predictor, data, test)

    # For comparison only: a model trained on every CV subject, with the pooled out-of-fold threshold.
    all_subjects, p_all = None, None
    if all_subjects_model:
        epochs = max(1, round(float(np.mean(cv[chosen]["best_epochs"]))))
        final = replace(base, **common, balance=chosen, out=str(out / "final"), train_splits=folds, val_splits=[],
                        epochs=epochs, min_epochs=epochs, stop_patience=10**6)
        final_file = Path(final.out) / "model.pt"
        if not final_file.exists():
            train(final, resume=True)
        p_all = blast_probability(Predictor(final_file), data, test)
        all_subjects = {"epochs": epochs, "pooled_oof_threshold": cv[chosen]["threshold"],
                        "test": screening_metrics(p_all, y_test, cv[chosen]["threshold"]),
                        "test_at_own_scale_for_reference_auc": float(roc_auc_score(y_test, p_all))}

    report = {
        "model": predictor.name, "model_version": predictor.version, "model_file": str(deployed_file),
        "model_sha256": mldata.sha256_file(deployed_file), "manifest": str(manifest),
        "manifest_sha256": mldata.sha256_file(manifest), "arch": base.arch, "img_size": base.img_size,
        "threshold": threshold, "sensitivity_target": target, "chosen_balance": chosen,
        "deployed_fold_model": best_fold["fold"],
        "deployed_validation": screening_metrics(fold_p, fold_y, threshold),
        "deployed_training_subjects": sorted({subject_of(s.path) for s in samples
                                              if s.split.startswith("fold") and s.split != best_fold["fold"]}),
        "subjects": {split: sorted({subject_of(s.path) for s in samples if s.split == split})
                     for split in ["test", *folds]},
        "cv": {m: {k: v for k, v in r.items() if k not in PRIVATE} for m, r in cv.items()},
        "test": screening_metrics(p_test, y_test, threshold),
        "test_per_subject": per_subject(test, p_test, threshold),
        "all_subjects": all_subjects,
        "train_wall_s": predictor.payload["training"]["wall_time_s"],
        "hardware": predictor.payload["training"]["hardware"],
        "config": {k: v for k, v in asdict(base).items() if k in ("arch", "img_size", "lr", "batch_size", "epochs",
                                                                  "augment_strength", "pretrained_weights")},
    }
    curves = {f"CV out-of-fold, {m}": cv[m]["curve"] for m in cv}
    curves["test subjects, deployed model"] = (y_test, p_test)
    if p_all is not None:
        curves["test subjects, all-subjects model"] = (y_test, p_all)
    plot_roc(curves, {"test at threshold": (1 - report["test"]["specificity"], report["test"]["sensitivity"])},
             out / "roc.png", f"{base.arch}: blast vs normal cell, subject-level")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    return report


def fmt(value) -> str:
    return "n/a" if value != value else f"{value:.4f}"  # NaN-safe


def metrics_rows(name: str, m: dict, subjects: str) -> str:
    return (f"| {name} | {subjects} | {m['n']} ({m['blasts']}/{m['normals']}) | {fmt(m['sensitivity'])} | "
            f"{fmt(m['specificity'])} | {fmt(m['f1'])} | {fmt(m['weighted_f1'])} | {fmt(m['balanced_accuracy'])} | "
            f"{fmt(m['roc_auc'])} |")


def markdown(report: dict) -> str:
    subjects = report["subjects"]
    n_cv = sum(len(v) for k, v in subjects.items() if k != "test")
    lines = [
        f"# Screening model `{report['model']}` ({report['model_version']})",
        "",
        f"Blast vs normal single cells (C-NMC 2019 fold 1), subject-level protocol, input {report['img_size']} px. "
        f"Decision: blast when P(blast) >= **{report['threshold']:.4f}**, the highest cut that keeps blast sensitivity "
        f">= {report['sensitivity_target']:.2f} on the deployed model's own validation subjects. The target "
        f"{report['sensitivity_target']:.2f} (not simply {MIN_SENSITIVITY}) is the smallest that, in leave-one-subject-out "
        f"checks on the cross-validation subjects, still flagged >= {MIN_SENSITIVITY} of a new subject's blasts "
        "(table below).",
        "",
        f"- Test subjects (untouched): {', '.join(subjects['test'])} — {len(subjects['test'])} subjects.",
        "- Cross-validation subjects: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in subjects.items() if k != "test")
        + f" — {n_cv} subjects.",
        "- Balancing compared by CV: " + ", ".join(
            f"{m} (OOF specificity {fmt(r['oof']['specificity'])}, AUC {fmt(r['oof']['roc_auc'])})" for m, r in report["cv"].items())
        + f"; chosen: **{report['chosen_balance']}**.",
        f"- Deployed: the {report['chosen_balance']} model of fold `{report['deployed_fold_model']}` (best validation AUC), "
        f"trained on subjects {', '.join(report['deployed_training_subjects'])}; its threshold was chosen on its own "
        "validation subjects.",
        "",
        "| evaluation | subjects | cells (blast/normal) | sensitivity | specificity | F1 (blast) | weighted F1 | balanced acc. | ROC AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        metrics_rows("**test, deployed model**", report["test"], f"{len(subjects['test'])}"),
        metrics_rows(f"validation subjects of the deployed model ({report['deployed_fold_model']})",
                     report["deployed_validation"], f"{len(subjects[report['deployed_fold_model']])}"),
    ]
    if report["all_subjects"]:
        lines.append(metrics_rows(f"test, model on all CV subjects ({report['all_subjects']['epochs']} epochs) at the "
                                  "pooled OOF threshold — not deployed", report["all_subjects"]["test"],
                                  f"{len(subjects['test'])}"))
    for mode, r in report["cv"].items():
        lines.append(metrics_rows(f"CV out-of-fold, {mode}", r["oof"], f"{n_cv}"))
    if report["all_subjects"]:
        lines += ["", "The model retrained on all CV subjects ranks cells differently from the fold models and its "
                  "probabilities sit on another scale, so the threshold chosen on the fold models does not carry "
                  "over to it: that is why the deployed model is a fold model with a threshold of its own."]
    lines += ["", f"How a cut carries over to a new subject ({report['chosen_balance']} fold models; leave one blast "
              "subject out of a fold's validation subjects, choose the cut on the others, score the one left out; "
              "normal subjects scored at the cut from all of the fold's blasts):", "",
              "| target sensitivity | left-out blast subjects | pooled sensitivity on them | worst subject | subjects >= 0.95 "
              "| normal-subject specificity |", "| --- | --- | --- | --- | --- | --- |"]
    transfer = report["cv"][report["chosen_balance"]]["transfer"]
    lines += [f"| {r['target']:.2f}{' (chosen)' if r['target'] == report['sensitivity_target'] else ''} | "
              f"{r['subjects']} | {fmt(r['left_out_sensitivity'])} | {fmt(r['worst_subject_sensitivity'])} | "
              f"{r['subjects_at_or_above_0.95']}/{r['subjects']} | {fmt(r['normal_specificity'])} |"
              for r in transfer.values()]
    lines += ["", "Per fold (threshold for 0.95 chosen on the fold's own validation subjects):", "",
              "| balance | fold | validation subjects | threshold | sensitivity | specificity | AUC |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode, r in report["cv"].items():
        lines += [f"| {mode} | {f['fold']} | {', '.join(f['subjects'])} | {f['own_threshold']:.4f} | "
                  f"{fmt(f['metrics']['sensitivity'])} | {fmt(f['metrics']['specificity'])} | {fmt(f['metrics']['roc_auc'])} |"
                  for f in r["folds"]]
    lines += ["", "Per test subject (all cells of a subject share its diagnosis):", "",
              "| subject | truth | cells | flagged as blast | fraction |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['subject']} | {r['truth']} | {r['cells']} | {r['flagged']} | {r['flagged_fraction']:.3f} |"
              for r in report["test_per_subject"]]
    lines += ["", "![ROC curves](roc.png)", ""]
    return "\n".join(lines)

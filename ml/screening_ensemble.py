"""Single-cell screening as an ensemble of cross-validation fold models, with a threshold that carries over.

Why an ensemble: every subject is a different slide, and with 14 subjects (3 of them normal) a model
trained on a few subjects learns their stain, not the cell. Each fold model is trained on all subjects
but its own fold's; together the members have seen every development subject, and each member's
out-of-fold (OOF) predictions are honest predictions for subjects it never saw.

Why the threshold carries over: the cut is chosen on those OOF predictions, i.e. on the scale of models
of exactly this recipe scoring new subjects, for the sensitivity target that leave-one-subject-out
checks (``screening.subject_transfer``) showed a new subject needs. The shipped score is the members'
mean P(blast): averaging models that each score a new subject on that scale narrows the spread of the
score but keeps its centre, so the cut keeps its meaning. Whether it does is measured, not assumed: the
ensemble is scored once on the untouched test subjects.

Protocol (``run``): subject-grouped folds (``make_kfold_manifest``), one member per fold
(``screening.cross_validate``), the OOF cut, the ensemble file (``build_ensemble``, float16 weights,
then ``store_int8``: convolution and linear weights int8 per output channel, so four members ship in
under 20 MB), the OOF predictions measured again on the stored file and the cut re-chosen on them
(int8 is not lossless), then the test subjects. With a manifest without test subjects (every subject in a fold) it builds the
model to ship on all subjects and reports the OOF results only.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import data as mldata
from . import screening
from .checkpoint import read_payload, store_int8, update_payload
from .screening import fmt
from .predict import Predictor
from .train import TrainConfig

ENSEMBLE_FORMAT_NOTE = "members' mean P(blast); int8 weights (store_int8), cut chosen on the stored file"


def make_kfold_manifest(base_manifest: str | Path, path: str | Path, folds: int, with_test: bool = True) -> Path:
    """Re-deal the subjects of ``base_manifest`` into ``folds`` subject-grouped folds.

    The base manifest's test subjects stay the test subjects (so results compare with earlier models), or
    join the folds when ``with_test`` is false (the model to ship on every subject). Normal subjects are
    dealt first, one per fold while they last; then blast subjects, largest first, each to the fold with
    the fewest blast cells so far."""
    samples = mldata.read_manifest(base_manifest)
    cells: dict[tuple[str, str], int] = {}
    for s in samples:
        if with_test and s.split == "test":
            continue
        key = (s.label, screening.subject_of(s.path))
        cells[key] = cells.get(key, 0) + 1
    fold_of: dict[str, str] = {}
    for label in sorted({label for label, _ in cells}, key=lambda l: screening.FOLDER_TO_LABEL[l] == screening.POSITIVE):
        filled = [0] * folds
        subjects = sorted((k for k in cells if k[0] == label), key=lambda k: (-cells[k], k[1]))
        for key in subjects:
            k = filled.index(min(filled))
            filled[k] += cells[key] if screening.FOLDER_TO_LABEL[label] == screening.POSITIVE else 10**9
            fold_of[key[1]] = f"fold{k}"
    for s in samples:
        s.split = "test" if with_test and s.split == "test" else fold_of[screening.subject_of(s.path)]
    return mldata.write_manifest(mldata.ScanResult(mldata.manifest_classes(samples), samples), path)


def build_ensemble(member_files: list[str | Path], path: str | Path, threshold: float, extra: dict | None = None) -> Path:
    """One model file from fold models of one recipe: ``arch`` "ensemble", the members' weights as float16
    under ``members.<i>.``, the screening threshold on the mean P(blast)."""
    payloads = [read_payload(f) for f in member_files]
    first = payloads[0]
    for key in ("classes", "input_size", "task"):
        if any(p.get(key) != first.get(key) for p in payloads):
            raise ValueError(f"ensemble members disagree on {key}")
    for key, default in (("input_norm", "imagenet"), ("framing", "none")):
        if any(p.get(key, default) != first.get(key, default) for p in payloads):
            raise ValueError(f"ensemble members disagree on {key}")
    state = {f"members.{i}.{k}": v.detach().half() if v.is_floating_point() else v.detach()
             for i, p in enumerate(payloads) for k, v in p["state_dict"].items()}
    stamp = datetime.now(timezone.utc)
    payload = {
        "format": first["format"], "task": first["task"], "arch": "ensemble",
        "name": "screening", "classes": first["classes"], "folder_classes": first.get("folder_classes"),
        "input_size": first["input_size"], "input_norm": first.get("input_norm", "imagenet"),
        "framing": first.get("framing", "none"), "mean": first.get("mean"), "std": first.get("std"), "temperature": 1.0,
        "state_dict": state,
        "model_version": f"ensemble{len(payloads)}-{first['arch']}-{stamp:%Y%m%d-%H%M%S}",
        "members": [{"arch": p["arch"], "model_version": p["model_version"],
                     "train_splits": p["training"]["config"].get("train_splits"),
                     "val_splits": p["training"]["config"].get("val_splits"),
                     "epochs_run": p["training"]["epochs_run"], "best_epoch": p["training"]["best_epoch"],
                     "wall_time_s": p["training"]["wall_time_s"]} for p in payloads],
        "training": {**{k: v for k, v in first["training"].items() if k != "history"},
                     "wall_time_s": round(sum(p["training"]["wall_time_s"] for p in payloads), 1),
                     "ensemble": ENSEMBLE_FORMAT_NOTE},
        "threshold": float(threshold), "positive_class": screening.POSITIVE,
        **(extra or {}),
    }
    torch.save(payload, path)
    return Path(path)


def member_predictor(predictor: Predictor, index: int) -> Predictor:
    """The ensemble file's member ``index`` alone, as stored (for its own fold's out-of-fold predictions)."""
    import copy

    from .models import EnsembleClassifier

    alone = copy.copy(predictor)
    alone.model = EnsembleClassifier([predictor.model.members[index]]).eval()
    return alone


def subject_rows(samples, p_blast, threshold, source: str) -> list[dict]:
    rows = screening.per_subject(samples, p_blast, threshold)
    for row in rows:
        row["source"] = source
        blast = row["truth"] == screening.POSITIVE
        row["sensitivity" if blast else "specificity"] = row["flagged_fraction"] if blast else 1 - row["flagged_fraction"]
    return rows


def worst(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return min(values) if values else float("nan")


def run(data: str, out: str | Path, manifest: str | Path, base: TrainConfig, balance: str = "undersample",
        seed: int = 0) -> dict:
    """Train (or reuse) the fold members, choose the cut on their OOF predictions, build the ensemble and
    score it on the test subjects when the manifest has them. Writes OUT/report.json, report.md and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = screening.load_subject_manifest(data, manifest, seed)
    folds = sorted({s.split for s in samples if s.split.startswith("fold")})
    cv = screening.cross_validate(data, out, manifest, samples, base, (balance,), seed)[balance]
    y_oof, p_float = cv["curve"]
    target = cv["sensitivity_target"]
    float_threshold = screening.choose_threshold(p_float, y_oof, target)
    ensemble_file = build_ensemble([f["model_file"] for f in cv["folds"]], out / "model.pt", float_threshold,
                                   extra={"screening": {"balance": balance, "min_sensitivity": screening.MIN_SENSITIVITY,
                                                        "validation_sensitivity_target": target,
                                                        "threshold_from": "pooled out-of-fold P(blast) of the members "
                                                                          "as stored (int8)"}})
    store_int8(ensemble_file)
    predictor = Predictor(ensemble_file, with_domain=False)
    fold_samples = [[s for s in samples if s.split == fold["fold"]] for fold in cv["folds"]]
    oof_samples = [s for cells in fold_samples for s in cells]  # the order cross_validate pooled them in
    p_oof = np.concatenate([screening.blast_probability(member_predictor(predictor, i), data, cells)
                            for i, cells in enumerate(fold_samples)])
    threshold = screening.choose_threshold(p_oof, y_oof, target)
    update_payload(ensemble_file, threshold=threshold)
    predictor = Predictor(ensemble_file, with_domain=False)
    report = {
        "model": "screening", "model_version": predictor.version, "model_file": str(ensemble_file),
        "model_sha256": mldata.sha256_file(ensemble_file), "manifest": str(manifest),
        "manifest_sha256": mldata.sha256_file(manifest), "arch": base.arch, "img_size": base.img_size,
        "members": len(folds), "balance": balance, "threshold": threshold, "sensitivity_target": target,
        "subjects": {split: sorted({screening.subject_of(s.path) for s in samples if s.split == split})
                     for split in sorted({s.split for s in samples})},
        "oof": screening.screening_metrics(p_oof, y_oof, threshold),
        "storage": {"weights": "int8", "float32_threshold": float_threshold,
                    "oof_float32": screening.screening_metrics(p_float, y_oof, float_threshold),
                    "oof_int8_at_float32_cut": screening.screening_metrics(p_oof, y_oof, float_threshold),
                    "p_blast_change_median": float(np.median(np.abs(p_oof - p_float))),
                    "p_blast_change_max": float(np.abs(p_oof - p_float).max())},
        "oof_per_subject": subject_rows(oof_samples, p_oof, threshold, "out-of-fold"),
        "transfer": cv["transfer"],
        "folds": cv["folds"],
        "train_wall_s": predictor.payload["training"]["wall_time_s"],
        "hardware": predictor.payload["training"]["hardware"],
        "config": {k: v for k, v in asdict(base).items() if k in (
            "arch", "img_size", "lr", "batch_size", "epochs", "augment_strength", "pretrained_weights", "input_norm",
            "stain_augment", "stain_strength", "rgb_gain", "illumination", "blur_prob", "blur_sigma", "scale_jitter",
            "framing")},
        "test": None,
    }
    curves = {"out-of-fold (members on their own fold)": (y_oof, p_oof)}
    test = [s for s in samples if s.split == "test"]
    if test:
        y_test = np.array([screening.FOLDER_TO_LABEL[s.label] == screening.POSITIVE for s in test])
        p_test = screening.blast_probability(predictor, data, test)
        report["test"] = screening.screening_metrics(p_test, y_test, threshold)
        report["test_per_subject"] = subject_rows(test, p_test, threshold, "test")
        members = []
        for fold in cv["folds"]:
            p_member = screening.blast_probability(Predictor(fold["model_file"], with_domain=False), data, test)
            members.append({"fold": fold["fold"], **screening.screening_metrics(p_member, y_test, threshold)})
        report["test_members"] = members
        curves["test subjects, ensemble"] = (y_test, p_test)
    points = {"out-of-fold at the cut": (1 - report["oof"]["specificity"], report["oof"]["sensitivity"])}
    if report["test"]:
        points["test at the cut"] = (1 - report["test"]["specificity"], report["test"]["sensitivity"])
    return write_run(report, out, curves, points, f"ensemble of {len(folds)} {base.arch}: blast vs normal cell",
                     markdown)


def write_run(report: dict, out: Path, curves: dict, points: dict, title: str, render) -> dict:
    """A screening run's outputs: roc.png, subjects.png, report.json and report.md (``render(report)``)."""
    screening.plot_roc(curves, points, out / "roc.png", title)
    plot_subjects(report["oof_per_subject"] + report.get("test_per_subject", []), out / "subjects.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render(report))
    return report


def plot_subjects(rows: list[dict], path: Path) -> Path:
    """Per subject: blasts flagged (sensitivity) for blast subjects, normals passed (specificity) for normal ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=120)
    labels, values, colours = [], [], []
    for row in rows:
        blast = "sensitivity" in row
        labels.append(f"{row['subject']}\n{'test' if row['source'] == 'test' else 'OOF'}")
        values.append(row["sensitivity"] if blast else row["specificity"])
        colours.append(("#c0392b" if blast else "#2471a3") if row["source"] == "test" else ("#e6b0aa" if blast else "#a9cce3"))
    ax.bar(range(len(values)), values, color=colours)
    ax.axhline(0.95, color="#c0392b", lw=0.8, ls="--", label="sensitivity target 0.95")
    ax.axhline(0.50, color="#2471a3", lw=0.8, ls=":", label="specificity target 0.50")
    ax.set_xticks(range(len(values)), labels, fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("blast subjects: sensitivity\nnormal subjects: specificity", fontsize=7)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def subject_table(rows: list[dict]) -> list[str]:
    lines = ["| subject | truth | where scored | cells | flagged | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['truth']} | {r['source']} | {r['cells']} | {r['flagged']} | "
                     f"{fmt(r['sensitivity']) if 'sensitivity' in r else ''} | "
                     f"{fmt(r['specificity']) if 'specificity' in r else ''} |")
    return lines


def markdown(report: dict) -> str:
    subjects = report["subjects"]
    header = ("| evaluation | subjects | cells (blast/normal) | sensitivity | specificity | F1 (blast) | weighted F1 | "
              "balanced acc. | ROC AUC |")
    oof_subjects = sum(len(v) for k, v in subjects.items() if k != "test")
    lines = [
        f"# Screening ensemble ({report['model_version']})",
        "",
        f"{report['members']} members ({report['arch']}, {report['img_size']} px, balance {report['balance']}), one per "
        f"subject-grouped fold; the score is the members' mean P(blast); a cell is flagged when it is >= "
        f"**{report['threshold']:.4f}**, the highest cut keeping sensitivity >= {report['sensitivity_target']:.2f} on the "
        f"members' pooled out-of-fold predictions (the target that leave-one-subject-out checks showed a new subject "
        f"needs for >= {screening.MIN_SENSITIVITY}).",
        "",
        "- Folds: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in subjects.items() if k != "test") + ".",
        f"- Test subjects (untouched until the ensemble was built): {', '.join(subjects.get('test', [])) or 'none (every subject trains a member)'}.",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if report["test"]:
        lines.append(screening.metrics_rows("**test subjects, ensemble**", report["test"], str(len(subjects["test"]))))
    lines.append(screening.metrics_rows("out-of-fold (each member on its own fold)", report["oof"], str(oof_subjects)))
    for m in report.get("test_members", []):
        lines.append(screening.metrics_rows(f"test subjects, member {m['fold']} alone", m, str(len(subjects["test"]))))
    rows = report["oof_per_subject"] + report.get("test_per_subject", [])
    lines += ["", f"Worst blast subject: sensitivity {fmt(worst(rows, 'sensitivity'))}; worst normal subject: "
              f"specificity {fmt(worst(rows, 'specificity'))}.", "", *subject_table(rows), "",
              "How a cut carries over to a new subject (leave one blast subject of a fold out, choose the cut on the "
              "fold's others, score the one left out; normal subjects at the cut from all of the fold's blasts):", "",
              "| target sensitivity | left-out blast subjects | pooled sensitivity on them | worst subject | "
              "subjects >= 0.95 | normal-subject specificity |", "| --- | --- | --- | --- | --- | --- |"]
    for key, r in report["transfer"].items():
        chosen = " (chosen)" if abs(r["target"] - report["sensitivity_target"]) < 1e-9 else ""
        lines.append(f"| {key}{chosen} | {r['subjects']} | {fmt(r['left_out_sensitivity'])} | "
                     f"{fmt(r['worst_subject_sensitivity'])} | {r['subjects_at_or_above_0.95']}/{r['subjects']} | "
                     f"{fmt(r['normal_specificity'])} |")
    lines += ["", "![ROC curves](roc.png)", "", "![per subject](subjects.png)", ""]
    return "\n".join(lines)

"""Evaluation on a manifest's untouched split: accuracy, per-class P/R/F1, macro-F1,
confusion matrix (numbers and PNG), expected calibration error; JSON + markdown report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from . import data as mldata


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "classes": list(classes),
    }


def plot_confusion_matrix(matrix, classes, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(model: str, data: str | Path, manifest: str | Path | None = None, split: str = "test",
             out: str | Path | None = None, batch_size: int = 32, domain: bool = False,
             other_data: str | Path | None = None) -> dict:
    """Score a model (file path or shipped name) on one split of a manifest; write the report to ``out``."""
    from .predict import Predictor, resolve_model_path

    predictor = Predictor(resolve_model_path(model))
    payload_manifest = predictor.payload.get("training", {}).get("config", {}).get("manifest")
    manifest = manifest or payload_manifest
    if not manifest or not Path(manifest).is_file():
        raise FileNotFoundError(f"split manifest not found: {manifest!r}; pass --manifest")
    every = mldata.read_manifest(manifest)
    samples = [s for s in every if s.split == split]
    if not samples:
        raise ValueError(f"the manifest has no {split!r} images")
    problems = mldata.check_manifest(every, data)
    if problems:
        raise ValueError("manifest problems: " + "; ".join(problems[:5]))
    classes = list(predictor.classes)
    folder_classes = list(predictor.payload.get("folder_classes", classes))
    labels = np.array([folder_classes.index(s.label) for s in samples])
    logits, embeddings, stats = predictor.predict_outputs([Path(data) / s.path for s in samples], batch_size=batch_size)
    probabilities = predictor.probabilities(logits)
    report = classification_metrics(probabilities, labels, classes)
    report.update({
        "model": predictor.name,
        "model_version": predictor.version,
        "model_file": str(predictor.path),
        "model_sha256": mldata.sha256_file(predictor.path),
        "temperature": predictor.temperature,
        "data": str(data),
        "manifest": str(manifest),
        "manifest_sha256": mldata.sha256_file(Path(manifest)),
        "split": split,
        "uncalibrated_ece": expected_calibration_error(predictor.probabilities(logits, temperature=1.0), labels),
        "errors": [{"path": s.path, "true": s.label, "predicted": classes[int(p.argmax())], "confidence": float(p.max())}
                   for s, p, y in zip(samples, probabilities, labels) if int(p.argmax()) != int(y)],
    })
    report["intervals"] = split_intervals([s.group for s in samples], labels, probabilities.argmax(axis=1), classes)
    if domain:
        from .domain_eval import evaluate_domain

        # The split's own verdicts come from the pass above: its images are not predicted twice.
        report["domain"] = evaluate_domain(predictor, data, manifest, split, other_data,
                                           own_results=predictor.domain_results(embeddings, stats))
    if out is not None:
        write_report(report, out)
    return report


def split_intervals(groups, labels, predicted, classes, with_macro_f1: bool = True) -> dict | None:
    """Accuracy (and macro-F1) intervals over the split's groups of neighbouring images (``ml.uncertainty``);
    None for a manifest whose groups mix classes (they cannot be resampled within their class)."""
    from .uncertainty import classification_intervals

    try:
        return classification_intervals(labels, predicted, groups, classes, with_macro_f1)
    except ValueError:
        return None


def intervals_line(report: dict) -> list[str]:
    intervals = report.get("intervals")
    if not intervals:
        return []
    from .uncertainty import interval_text

    return [f"Over the split's {intervals['groups']} groups of neighbouring images, resampled whole within their "
            f"class ({intervals['resamples']} resamples, `ml.uncertainty`): accuracy "
            f"{interval_text(intervals, 'accuracy')}, macro-F1 {interval_text(intervals, 'macro_f1')}.", ""]


def write_report(report: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    plot_confusion_matrix(report["confusion_matrix"], report["classes"], out / "confusion_matrix.png",
                          f"{report['model']} — {report['split']} split (n={report['n']})")
    (out / "report.md").write_text(markdown_summary(report))
    return out


def markdown_summary(report: dict) -> str:
    lines = [
        f"# Evaluation of `{report['model']}` ({report['model_version']})",
        "",
        f"Split **{report['split']}** of `{report['manifest']}` (sha256 `{report['manifest_sha256'][:12]}…`), "
        f"{report['n']} images never used for training or model selection.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {report['accuracy']:.4f} |",
        f"| macro-F1 | {report['macro_f1']:.4f} |",
        f"| weighted F1 | {report['weighted_f1']:.4f} |",
        f"| expected calibration error (15 bins, T={report['temperature']:.3f}) | {report['ece']:.4f} |",
        f"| ECE before temperature scaling | {report['uncalibrated_ece']:.4f} |",
        "",
        *intervals_line(report),
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in report["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "", "| | " + " | ".join(report["classes"]) + " |",
              "| --- " * (len(report["classes"]) + 1) + "|"]
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    if report.get("domain"):
        from .domain_eval import markdown_section

        lines += [markdown_section(report["domain"])]
    if report["errors"]:
        lines += [f"Misclassified ({len(report['errors'])}):", ""]
        lines += [f"- `{e['path']}`: {e['true']} → {e['predicted']} ({e['confidence']:.2f})" for e in report["errors"][:40]]
        lines.append("")
    return "\n".join(lines)

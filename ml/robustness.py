"""The robustness suite: accuracy, macro-F1 and ECE of a model under each acquisition change of
``perturb.PERTURBATIONS``, on a manifest's untouched split (test by default).

Writes ``robustness.json``, ``robustness.md`` (one table) and ``robustness.png`` (accuracy per change
against the target) into the output folder; ``card_section(report)`` renders the same table for a
model card. Works for any model file: nothing here depends on the architecture.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import data as mldata
from . import perturb
from .evaluate import classification_metrics

MILD_TARGET = 0.97  # issue 11: accuracy under each mild acquisition change


def load_split(predictor, data: str | Path, manifest: str | Path | None, split: str, limit: int | None = None):
    """(decoded RGB images, label indices, manifest path) of one split of the model's manifest (or ``manifest``)."""
    manifest = manifest or predictor.payload.get("training", {}).get("config", {}).get("manifest")
    if not manifest or not Path(manifest).is_file():
        raise FileNotFoundError(f"split manifest not found: {manifest!r}; pass --manifest")
    every = mldata.read_manifest(manifest)
    problems = mldata.check_manifest(every, data)
    if problems:
        raise ValueError("manifest problems: " + "; ".join(problems[:5]))
    samples = [s for s in every if s.split == split]
    if not samples:
        raise ValueError(f"the manifest has no {split!r} images")
    if limit:
        samples = samples[::max(1, len(samples) // limit)][:limit]  # every k-th: all classes stay present
    folder_classes = list(predictor.payload.get("folder_classes", predictor.classes))
    labels = np.array([folder_classes.index(s.label) for s in samples])
    images = [mldata.load_image(Path(data) / s.path) for s in samples]
    return images, labels, Path(manifest)


def perturbed_logits(predictor, images, perturbations, batch_size: int = 64,
                     flagged: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Logits of the clean images (key ``clean``) and of every perturbation of them (key: its name).
    With ``flagged`` (a dict), also the fraction of each set that the model's domain check flags, from the
    same forward passes: a change the model survives is of little use if the portal refuses its images."""
    logits = {}
    for name, batch in [("clean", images), *((p.name, [p(image) for image in images]) for p in perturbations)]:
        if flagged is None:
            logits[name] = predictor.predict_logits(batch, batch_size)
            continue
        logits[name], embeddings, stats = predictor.predict_outputs(batch, batch_size)
        verdicts = predictor.domain_results(embeddings, stats)
        flagged[name] = float(np.mean([not v["in_domain"] for v in verdicts])) if verdicts else 0.0
    return logits


def summary(probabilities: np.ndarray, labels: np.ndarray, classes) -> dict:
    metrics = classification_metrics(probabilities, labels, list(classes))
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "ece")}


def run(model, data: str | Path, manifest: str | Path | None = None, split: str = "test",
        out: str | Path | None = None, which: str = "all", limit: int | None = None, batch_size: int = 64) -> dict:
    """Score a model (file or shipped name) under every selected perturbation; write the report to ``out``."""
    from .predict import Predictor, resolve_model_path

    tick = time.perf_counter()
    predictor = Predictor(resolve_model_path(model))
    chosen = perturb.select(which)
    images, labels, manifest = load_split(predictor, data, manifest, split, limit)
    flagged: dict[str, float] = {}
    logits = perturbed_logits(predictor, images, chosen, batch_size, flagged=flagged)
    clean = {**summary(predictor.probabilities(logits["clean"]), labels, predictor.classes),
             "flagged": flagged["clean"]}
    rows = []
    for p in chosen:
        metrics = summary(predictor.probabilities(logits[p.name]), labels, predictor.classes)
        rows.append({"family": p.family, "name": p.name, "level": p.level, "mild": p.mild, **metrics,
                     "flagged": flagged[p.name],
                     "accuracy_change": metrics["accuracy"] - clean["accuracy"],
                     "meets_target": metrics["accuracy"] >= MILD_TARGET})
    report = {
        "model": predictor.name, "model_version": predictor.version,
        "model_file": str(model),  # as given (a shipped name or a path): the card's reproduce line
        "model_sha256": mldata.sha256_file(predictor.path), "temperature": predictor.temperature,
        "data": str(data), "manifest": str(manifest), "manifest_sha256": mldata.sha256_file(manifest),
        "split": split, "n": int(len(labels)), "limited": bool(limit), "target": MILD_TARGET,
        "clean": clean, "perturbations": rows,
        "mild_below_target": [r["name"] for r in rows if r["mild"] and not r["meets_target"]],
        "seconds": round(time.perf_counter() - tick, 1),
    }
    if out is not None:
        write_report(report, out)
    return report


def table(report: dict) -> list[str]:
    """The markdown table: one row per acquisition change, the clean split first."""
    c = report["clean"]
    def share(row: dict) -> str:  # reports made before the column existed have no "flagged"
        return f"{row['flagged']:.1%}" if "flagged" in row else "n/a"

    lines = ["| family | change | level | mild | accuracy | change | macro-F1 | ECE | >= target | flagged out of domain |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| none | clean | untouched {report['split']} split | | {c['accuracy']:.4f} | | {c['macro_f1']:.4f} | "
             f"{c['ece']:.4f} | {'yes' if c['accuracy'] >= report['target'] else '**no**'} | {share(c)} |"]
    for r in report["perturbations"]:
        verdict = "yes" if r["meets_target"] else ("**no**" if r["mild"] else "no")
        lines.append(f"| {r['family']} | {r['name']} | {r['level']} | {'mild' if r['mild'] else 'strong'} | "
                     f"{r['accuracy']:.4f} | {r['accuracy_change']:+.4f} | {r['macro_f1']:.4f} | {r['ece']:.4f} | "
                     f"{verdict} | {share(r)} |")
    return lines


def card_section(report: dict, plot: str | None = "robustness.png", heading: str = "##") -> str:
    """The model card's robustness section: what was measured, the verdict, the table and the plot."""
    mild = [r for r in report["perturbations"] if r["mild"]]
    below = report["mild_below_target"]
    worst = min(mild, key=lambda r: r["accuracy"]) if mild else None
    lines = [
        f"{heading} Robustness to acquisition changes",
        "",
        f"Split **{report['split']}** of `{report['manifest']}` ({report['n']} images"
        f"{', a subsample' if report.get('limited') else ''}), each image changed deterministically "
        f"(`ml/perturb.py`) and classified by `{report['model_version']}` (T = {report['temperature']:.3f}). "
        f"Target: accuracy >= {report['target']} under every mild change.",
        "",
        (f"**{len(mild) - len(below)} of {len(mild)} mild changes meet the target.**" if mild else "No mild changes run.")
        + (f" Below it: {', '.join(below)}." if below else "")
        + (f" Worst mild change: {worst['name']} ({worst['level']}), accuracy {worst['accuracy']:.4f}." if worst else ""),
        "",
        *table(report),
        "",
    ]
    if plot:
        lines += [f"![accuracy per acquisition change]({plot})", ""]
    lines += [f"Reproduce: `python -m ml robustness --data DATA --model {report['model_file']} --split {report['split']}`.",
              ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["perturbations"]
    names = ["clean"] + [f"{r['family']}: {r['name']}" for r in rows]
    values = [report["clean"]["accuracy"]] + [r["accuracy"] for r in rows]
    colours = ["#444444"] + [("#2b7bba" if r["mild"] else "#9bbbd6") if r["meets_target"] else
                             ("#c0392b" if r["mild"] else "#e6a49c") for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.24 * len(names) + 1.2), dpi=110)
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colours)
    ax.axvline(report["target"], color="black", linestyle="--", linewidth=1, label=f"target {report['target']}")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(max(0.0, min(values) - 0.05), 1.0)
    ax.set_xlabel("accuracy")
    ax.set_title(f"{report['model_version']} — {report['split']} split (n={report['n']}); dark = mild change, "
                 "red = below target", fontsize=8)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "robustness.png")
    (out / "robustness.md").write_text(card_section(report, heading="#"))
    return out

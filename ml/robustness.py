"""The robustness suite: accuracy, macro-F1 and ECE of a model under each acquisition change of
``perturb.PERTURBATIONS``, on a manifest's untouched split (test by default). A screening model is judged
as the portal uses it: at its stored cut, by sensitivity and specificity (an argmax accuracy would score a
screen that flags at P(blast) >= 0.36 as if it flagged at 0.5).

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
from .evaluate import classification_metrics, expected_calibration_error, split_intervals

MILD_TARGET = 0.97  # issue 11: accuracy under each mild acquisition change
SCREEN_TARGETS = {"sensitivity": 0.95, "specificity": 0.50}  # issue 12: a screen on new subjects


def split_samples(predictor, data: str | Path, manifest: str | Path | None, split: str, limit: int | None = None):
    """(samples, manifest path) of one split of the model's manifest (or ``manifest``), checked against ``data``."""
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
    return samples, Path(manifest)


def load_samples(predictor, data: str | Path, samples) -> tuple[list, np.ndarray]:
    """(decoded RGB images, label indices) of manifest samples."""
    folder_classes = list(predictor.payload.get("folder_classes", predictor.classes))
    labels = np.array([folder_classes.index(s.label) for s in samples])
    return [mldata.load_image(Path(data) / s.path) for s in samples], labels


def load_split(predictor, data: str | Path, manifest: str | Path | None, split: str, limit: int | None = None):
    """(decoded RGB images, label indices, manifest path) of one split of the model's manifest (or ``manifest``)."""
    samples, manifest = split_samples(predictor, data, manifest, split, limit)
    return (*load_samples(predictor, data, samples), manifest)


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


def is_screen(predictor) -> bool:
    return predictor.task == "screening" and predictor.threshold is not None and bool(predictor.positive_class)


def screen_summary(predictor, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """A screen's numbers at its stored cut: accuracy, sensitivity, specificity, weighted F1 (of the flags),
    ROC AUC and ECE (of P(blast), threshold-free)."""
    from .screening import screening_metrics

    positive = predictor.classes.index(predictor.positive_class)
    metrics = screening_metrics(probabilities[:, positive], labels == positive, predictor.threshold)
    confusion = metrics["confusion"]
    return {"accuracy": (confusion["tp"] + confusion["tn"]) / max(metrics["n"], 1),
            **{k: metrics[k] for k in ("sensitivity", "specificity", "weighted_f1", "roc_auc")},
            "ece": expected_calibration_error(probabilities, labels)}


def accuracy_interval(predicted: np.ndarray, labels: np.ndarray, groups, classes) -> dict | None:
    """95% interval of the accuracy over the split's groups of neighbouring images, resampled whole within their
    class (``ml.uncertainty``), and the number of groups per class; None where groups mix classes."""
    m = split_intervals(groups, labels, predicted, classes, with_macro_f1=False)
    if m is None:
        return None
    return {"accuracy": [m["metrics"]["accuracy"]["low"], m["metrics"]["accuracy"]["high"]],
            "groups": m["groups_per_stratum"]}


def screen_interval(predictor, probabilities: np.ndarray, labels: np.ndarray, groups) -> dict | None:
    """95% intervals of a screen's sensitivity and specificity at its cut over subjects, resampled within their
    truth; a class with one subject has none (None)."""
    from .uncertainty import screen_intervals

    positive = predictor.classes.index(predictor.positive_class)
    try:
        m = screen_intervals(labels == positive, probabilities[:, positive] >= predictor.threshold, groups)
    except ValueError:
        return None
    truth_of = {"sensitivity": "blast", "specificity": "normal"}
    return {**{name: None if m["groups_per_stratum"].get(truth_of[name], 0) < 2 else [v["low"], v["high"]]
               for name, v in m["metrics"].items()},
            "groups": m["groups_per_stratum"]}


def _interval_heading(report: dict) -> str:
    """' (95% interval)' for a report whose rows carry intervals (reports made before they existed have none)."""
    return " (95% interval)" if report["clean"].get("interval") else ""


def _with_interval(row: dict, metric: str) -> str:
    """'0.9660 (0.932-0.990)' where the row has an interval for the metric."""
    bounds = (row.get("interval") or {}).get(metric)
    return f"{row[metric]:.4f}" + (f" ({bounds[0]:.3f}-{bounds[1]:.3f})" if bounds else "")


def meets_target(metrics: dict, screen: bool) -> bool:
    if screen:  # NaN (a split without one of the classes) never meets a target
        return all(metrics[k] >= target for k, target in SCREEN_TARGETS.items())
    return metrics["accuracy"] >= MILD_TARGET


def run(model, data: str | Path, manifest: str | Path | None = None, split: str = "test",
        out: str | Path | None = None, which: str = "all", limit: int | None = None, batch_size: int = 64) -> dict:
    """Score a model (file or shipped name) under every selected perturbation; write the report to ``out``."""
    from .predict import Predictor, resolve_model_path

    tick = time.perf_counter()
    predictor = Predictor(resolve_model_path(model))
    chosen = perturb.select(which)
    samples, manifest = split_samples(predictor, data, manifest, split, limit)
    images, labels = load_samples(predictor, data, samples)
    groups = [s.group for s in samples]
    flagged: dict[str, float] = {}
    logits = perturbed_logits(predictor, images, chosen, batch_size, flagged=flagged)
    screen = is_screen(predictor)

    def score(name: str) -> dict:
        probabilities = predictor.probabilities(logits[name])
        if screen:
            return {**screen_summary(predictor, probabilities, labels),
                    "interval": screen_interval(predictor, probabilities, labels, groups)}
        return {**summary(probabilities, labels, predictor.classes),
                "interval": accuracy_interval(probabilities.argmax(axis=1), labels, groups, predictor.classes)}

    clean = {**score("clean"), "flagged": flagged["clean"]}
    rows = []
    for p in chosen:
        metrics = score(p.name)
        rows.append({"family": p.family, "name": p.name, "level": p.level, "mild": p.mild, **metrics,
                     "flagged": flagged[p.name],
                     "accuracy_change": metrics["accuracy"] - clean["accuracy"],
                     "meets_target": meets_target(metrics, screen)})
    report = {
        "model": predictor.name, "model_version": predictor.version,
        "model_file": str(model),  # as given (a shipped name or a path): the card's reproduce line
        "model_sha256": mldata.sha256_file(predictor.path), "temperature": predictor.temperature,
        "data": str(data), "manifest": str(manifest), "manifest_sha256": mldata.sha256_file(manifest),
        "split": split, "n": int(len(labels)), "limited": bool(limit), "target": MILD_TARGET,
        "kind": "screening" if screen else "classification",
        **({"threshold": float(predictor.threshold), "screen_targets": SCREEN_TARGETS,
            "positives": int((labels == predictor.classes.index(predictor.positive_class)).sum())} if screen else {}),
        # Without a fitted check only the quality rules (blank, greyscale) flag: the column would read 0% and mean nothing.
        "domain_check": predictor.domain is not None,
        "clean": clean, "perturbations": rows,
        "mild_below_target": [r["name"] for r in rows if r["mild"] and not r["meets_target"]],
        "seconds": round(time.perf_counter() - tick, 1),
    }
    if out is not None:
        write_report(report, out)
    return report


def table(report: dict) -> list[str]:
    """The markdown table: one row per acquisition change, the clean split first."""
    if report.get("kind") == "screening":
        return screen_table(report)
    c = report["clean"]

    lines = [f"| family | change | level | mild | accuracy{_interval_heading(report)} | change | macro-F1 | ECE | "
             ">= target | flagged out of domain |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| none | clean | untouched {report['split']} split | | {_with_interval(c, 'accuracy')} | | {c['macro_f1']:.4f} | "
             f"{c['ece']:.4f} | {'yes' if c['accuracy'] >= report['target'] else '**no**'} | {_share(c, report)} |"]
    for r in report["perturbations"]:
        lines.append(f"| {r['family']} | {r['name']} | {r['level']} | {'mild' if r['mild'] else 'strong'} | "
                     f"{_with_interval(r, 'accuracy')} | {r['accuracy_change']:+.4f} | {r['macro_f1']:.4f} | {r['ece']:.4f} | "
                     f"{_verdict(r)} | {_share(r, report)} |")
    return lines


def screen_table(report: dict) -> list[str]:
    """A screen's table: sensitivity and specificity at the stored cut, with their change from clean."""
    c = report["clean"]
    lines = [f"| family | change | level | mild | sensitivity{_interval_heading(report)} | change | "
             f"specificity{_interval_heading(report)} | change | weighted F1 | ROC AUC | meets targets | "
             "flagged out of domain |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| none | clean | untouched {report['split']} split | | {_with_interval(c, 'sensitivity')} | | "
             f"{_with_interval(c, 'specificity')} "
             f"| | {c['weighted_f1']:.4f} | {c['roc_auc']:.4f} | {'yes' if meets_target(c, True) else '**no**'} "
             f"| {_share(c, report)} |"]
    for r in report["perturbations"]:
        lines.append(f"| {r['family']} | {r['name']} | {r['level']} | {'mild' if r['mild'] else 'strong'} | "
                     f"{_with_interval(r, 'sensitivity')} | {r['sensitivity'] - c['sensitivity']:+.4f} | "
                     f"{_with_interval(r, 'specificity')} | "
                     f"{r['specificity'] - c['specificity']:+.4f} | {r['weighted_f1']:.4f} | {r['roc_auc']:.4f} | "
                     f"{_verdict(r)} | {_share(r, report)} |")
    return lines


def _share(row: dict, report: dict) -> str:
    if "flagged" not in row:  # reports made before the column existed
        return "n/a"
    return f"{row['flagged']:.1%}" if report.get("domain_check", True) else "no check fitted"


def _verdict(row: dict) -> str:
    return "yes" if row["meets_target"] else ("**no**" if row["mild"] else "no")


def target_text(report: dict) -> str:
    if report.get("kind") == "screening":
        return " and ".join(f"{k} >= {v}" for k, v in report["screen_targets"].items()) + \
            f" at the stored cut {report['threshold']:.4f}"
    return f"accuracy >= {report['target']}"


def interval_note(report: dict) -> list[str]:
    """What the intervals in the table are, and which numbers have none."""
    groups = (report["clean"].get("interval") or {}).get("groups")
    if not groups:
        return []
    counts = ", ".join(f"{k} {v}" for k, v in groups.items())
    if report.get("kind") == "screening":
        single = [k for k, v in groups.items() if v < 2]
        return [f"Intervals: 95%, the split's subjects ({counts}) resampled whole with replacement within their truth "
                "(`ml.uncertainty`)" + (f"; with one {' and one '.join(single)} subject that number has no interval "
                                        "over subjects" if single else "") + ".", ""]
    return [f"Intervals: 95%, the split's groups of neighbouring images (about one slide each; {counts}) resampled "
            "whole with replacement within their class (`ml.uncertainty`). A change whose interval holds the target "
            "is not distinguishable from meeting it on this split.", ""]


def card_section(report: dict, plot: str | None = "robustness.png", heading: str = "##") -> str:
    """The model card's robustness section: what was measured, the verdict, the table and the plot."""
    mild = [r for r in report["perturbations"] if r["mild"]]
    below = report["mild_below_target"]
    screen = report.get("kind") == "screening"
    if screen:
        worst = min(mild, key=lambda r: (r["sensitivity"], r["specificity"])) if mild else None
        worst_text = (f" Lowest sensitivity under a mild change: {worst['name']} ({worst['level']}), "
                      f"{worst['sensitivity']:.4f} (specificity {worst['specificity']:.4f})." if worst else "")
        what = (f"screened by `{report['model_version']}` at its stored cut ({report['positives']} blasts, "
                f"{report['n'] - report['positives']} normal cells)")
    else:
        worst = min(mild, key=lambda r: r["accuracy"]) if mild else None
        worst_text = f" Worst mild change: {worst['name']} ({worst['level']}), accuracy {worst['accuracy']:.4f}." \
            if worst else ""
        what = f"classified by `{report['model_version']}` (T = {report['temperature']:.3f})"
    lines = [
        f"{heading} Robustness to acquisition changes",
        "",
        f"Split **{report['split']}** of `{report['manifest']}` ({report['n']} images"
        f"{', a subsample' if report.get('limited') else ''}), each image changed deterministically "
        f"(`ml/perturb.py`) and {what}. Target: {target_text(report)} under every mild change.",
        "",
        (f"**{len(mild) - len(below)} of {len(mild)} mild changes meet the target.**" if mild else "No mild changes run.")
        + (f" Below it: {', '.join(below)}." if below else "") + worst_text,
        "",
        *table(report),
        "",
        *interval_note(report),
    ]
    if not report.get("domain_check", True):
        lines += ["The model file scored here has no fitted domain check, so the last column says nothing about "
                  "what the portal would refuse: run the suite on the shipped file (`--model NAME`) for that.", ""]
    if plot:
        lines += [f"![{'sensitivity and specificity' if screen else 'accuracy'} per acquisition change]({plot})", ""]
    limit = f" --limit {report['n']}" if report.get("limited") else ""
    lines += [f"Reproduce: `python -m ml robustness --data DATA --model {report['model_file']} --split {report['split']}"
              f"{limit}`.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["perturbations"]
    names = ["clean"] + [f"{r['family']}: {r['name']}" for r in rows]
    if report.get("kind") == "screening":
        series = {m: (t, [report["clean"][m]] + [r[m] for r in rows]) for m, t in report["screen_targets"].items()}
    else:
        series = {"accuracy": (report["target"], [report["clean"]["accuracy"]] + [r["accuracy"] for r in rows])}
    fig, axes = plt.subplots(1, len(series), figsize=(5.0 + 2.5 * len(series), 0.24 * len(names) + 1.2), dpi=110,
                             sharey=True, squeeze=False)
    y = np.arange(len(names))[::-1]
    for ax, (metric, (target, values)) in zip(axes[0], series.items()):
        below = [False] + [v < target for v in values[1:]]
        colours = ["#444444"] + [("#c0392b" if low else "#2b7bba") if r["mild"] else ("#e6a49c" if low else "#9bbbd6")
                                 for r, low in zip(rows, below[1:])]
        ax.barh(y, values, color=colours)
        ax.axvline(target, color="black", linestyle="--", linewidth=1, label=f"target {target}")
        finite = [v for v in values if np.isfinite(v)]
        ax.set_xlim(max(0.0, min(finite, default=0.0) - 0.05), 1.0)
        ax.set_xlabel(metric)
        ax.legend(loc="lower left", fontsize=7)
    axes[0][0].set_yticks(y, names, fontsize=7)
    fig.suptitle(f"{report['model_version']} — {report['split']} split (n={report['n']}); dark = mild change, "
                 "red = below target", fontsize=8)
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

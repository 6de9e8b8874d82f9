"""How far a number measured on a few slides or subjects may lie from the truth.

A test split of a few hundred smear fields is not that many independent draws: its fields come from a few dozen
runs of neighbouring files (about one slide each), and a model's errors cluster on a slide (5 of the shipped
staging model's 7 test errors sit on one). An interval from the binomial count of images would be far too narrow. Here whole groups are resampled with replacement (a
cluster bootstrap), within each stratum (the class of a group of fields, the truth of a subject's cells) so
every resample keeps every class, and the interval is the percentile interval of the metric over resamples.
It says how much the number would move with other slides or subjects like these; with few groups (3 normal
subjects) it is wide, and with one group in a stratum that stratum cannot vary at all, which is said.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def group_bootstrap(y_true, y_pred, groups, strata, metrics: dict[str, Callable], resamples: int = RESAMPLES,
                    level: float = LEVEL, seed: int = 0) -> dict:
    """Percentile intervals of ``metrics`` (name -> f(y_true, y_pred)) from resampling whole groups with
    replacement, the same number of groups from each stratum as it has. ``strata`` holds one stratum per item
    (constant within a group). Deterministic under ``seed``."""
    y_true, y_pred, groups, strata = (np.asarray(a) for a in (y_true, y_pred, groups, strata))
    if not len(y_true) == len(y_pred) == len(groups) == len(strata):
        raise ValueError("y_true, y_pred, groups and strata must have one entry per item")
    members = {g: np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())}
    by_stratum: dict = {}
    for g, index in members.items():
        stratum = set(strata[index].tolist())
        if len(stratum) != 1:
            raise ValueError(f"group {g!r} spans strata {sorted(map(str, stratum))}")
        by_stratum.setdefault(stratum.pop(), []).append(g)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in metrics}
    for _ in range(resamples):
        index = np.concatenate([members[g] for names in by_stratum.values()
                                for g in rng.choice(np.array(names, dtype=object), size=len(names))])
        for name, metric in metrics.items():
            draws[name].append(metric(y_true[index], y_pred[index]))
    tail = (1 - level) / 2
    return {
        "method": "percentile interval, whole groups resampled with replacement within each stratum",
        "level": level, "resamples": resamples, "seed": seed, "groups": len(members),
        "groups_per_stratum": {str(k): len(v) for k, v in by_stratum.items()},
        "metrics": {name: {"estimate": float(metric(y_true, y_pred)),
                           "low": float(np.quantile(draws[name], tail)),
                           "high": float(np.quantile(draws[name], 1 - tail))}
                    for name, metric in metrics.items()},
    }


def macro_f1(true_labels: np.ndarray, predicted: np.ndarray, classes) -> float:
    """Macro-F1 over ``classes`` (a class with no true and no predicted item scores 0), as scikit-learn's
    ``f1_score(..., average="macro", zero_division=0)``, without its per-call overhead (it runs per resample)."""
    scores = []
    for c in classes:
        is_true, is_predicted = true_labels == c, predicted == c
        tp = np.sum(is_true & is_predicted)
        denominator = is_true.sum() + is_predicted.sum()
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def classification_intervals(true_index, predicted_index, groups, classes, with_macro_f1: bool = True) -> dict:
    """Accuracy (and macro-F1) of a multi-class split, groups resampled within their class. Labels are indices
    into ``classes``; the strata are named by class."""
    true_index, names = np.asarray(true_index), list(classes)
    metrics = {"accuracy": lambda t, p: float(np.mean(t == p))}
    if with_macro_f1:
        metrics["macro_f1"] = lambda t, p: macro_f1(t, p, range(len(names)))
    result = group_bootstrap(true_index, predicted_index, groups, true_index, metrics)
    result["groups_per_stratum"] = {names[int(k)]: n for k, n in result["groups_per_stratum"].items()}
    return result


def screen_intervals(is_blast, flagged, groups) -> dict:
    """Sensitivity and specificity of a screen's flags, subjects (``groups``) resampled within their truth
    (strata 'blast' and 'normal'); a metric whose class is absent is left out."""
    truth = np.where(np.asarray(is_blast, dtype=bool), "blast", "normal")
    metrics = {}
    if (truth == "blast").any():
        metrics["sensitivity"] = lambda t, p: float(p[t == "blast"].mean())
    if (truth == "normal").any():
        metrics["specificity"] = lambda t, p: float((~p[t == "normal"]).mean())
    return group_bootstrap(truth, np.asarray(flagged, dtype=bool), groups, truth, metrics)


def subject_intervals(per_subject_rows: list[dict]) -> dict:
    """``screen_intervals`` from per-subject rows (``subject``, ``truth`` 'blast' or 'normal', ``cells``,
    ``flagged``: as ``screening_ensemble.subject_rows``)."""
    is_blast, flagged, subjects = [], [], []
    for row in per_subject_rows:
        n, k = int(row["cells"]), int(row["flagged"])
        is_blast += [row["truth"] == "blast"] * n
        flagged += [True] * k + [False] * (n - k)
        subjects += [row["subject"]] * n
    return screen_intervals(is_blast, flagged, subjects)



def pooled_ratio_interval(successes, totals, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """A proportion pooled over groups (the sum of ``successes`` over the sum of ``totals``, one count pair per
    group) and its percentile interval from resampling whole groups with replacement: ``group_bootstrap`` for
    one stratum, computed from the counts alone, cheap enough for a web page. With one group there is nothing to
    resample: ``low`` and ``high`` are None."""
    k, n = np.asarray(successes, dtype=float), np.asarray(totals, dtype=float)
    if k.ndim != 1 or k.shape != n.shape or not len(n):
        raise ValueError("successes and totals need one count per group, at least one group")
    if (n <= 0).any() or (k < 0).any() or (k > n).any():
        raise ValueError("every group needs 0 <= successes <= totals and totals > 0")
    result = {"estimate": float(k.sum() / n.sum()), "low": None, "high": None, "groups": len(n), "level": level,
              "resamples": 0}
    if len(n) < 2:
        return result
    rng = np.random.default_rng(seed)
    ratios = []
    chunk = max(1, 200_000 // len(n))  # resamples drawn per block, so the index array stays small
    for start in range(0, resamples, chunk):
        draw = rng.integers(0, len(n), size=(min(chunk, resamples - start), len(n)))
        ratios.append(k[draw].sum(axis=1) / n[draw].sum(axis=1))
    ratios = np.concatenate(ratios)
    tail = (1 - level) / 2
    result.update(low=float(np.quantile(ratios, tail)), high=float(np.quantile(ratios, 1 - tail)),
                  resamples=resamples)
    return result

def interval_text(intervals: dict, name: str) -> str:
    """'0.9830 (95% interval 0.958-1.000)'."""
    m = intervals["metrics"][name]
    return f"{m['estimate']:.4f} ({intervals['level']:.0%} interval {m['low']:.3f}-{m['high']:.3f})"


def against_target(intervals: dict, name: str, target: float) -> str:
    """Where a lower-bound target stands against a metric's interval: 'met at the interval's low end',
    'missed at the interval's high end' or 'inside the interval' (the split can neither confirm nor rule it out)."""
    m = intervals["metrics"][name]
    if m["low"] >= target:
        return "met at the interval's low end"
    if m["high"] < target:
        return "missed at the interval's high end"
    return "inside the interval"

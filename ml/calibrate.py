"""Calibration on errors that exist: refit a model file's temperature on held-out images that the model
gets wrong often enough to calibrate on.

The clean validation split has almost no errors, so temperature scaling on it sharpens the
probabilities to the search bound. Here the temperature is fitted (``train.fit_temperature``, the
same NLL minimisation) on the validation split *plus* every selected robustness perturbation of it
(``perturb.PERTURBATIONS``), where errors do occur. The temperature and a record of how it was
fitted are written into the model file (``checkpoint.update_payload``); the report gives ECE on the
clean test split and under the same perturbations of the test split, before and after.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import perturb
from .evaluate import expected_calibration_error
from .robustness import load_split, perturbed_logits


def _nll(predictor, logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = predictor.probabilities(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def ece_summary(predictor, logits: dict[str, np.ndarray], labels: np.ndarray, temperature: float) -> dict:
    """ECE on the clean images, pooled over all perturbed images, and the worst single perturbation."""
    per = {name: expected_calibration_error(predictor.probabilities(l, temperature), labels)
           for name, l in logits.items() if name != "clean"}
    pooled = np.concatenate([l for name, l in logits.items() if name != "clean"]) if per else np.zeros((0, 1))
    return {
        "clean_ece": expected_calibration_error(predictor.probabilities(logits["clean"], temperature), labels),
        "perturbed_ece": (expected_calibration_error(predictor.probabilities(pooled, temperature),
                                                     np.tile(labels, len(per))) if per else float("nan")),
        "worst_perturbation_ece": max(per.values()) if per else float("nan"),
        "worst_perturbation": max(per, key=per.get) if per else None,
    }


def calibrate(model_file: str | Path, data: str | Path, manifest: str | Path | None = None, which: str = "all",
              fit_split: str = "val", eval_split: str = "test", limit: int | None = None, write: bool = True,
              out: str | Path | None = None, batch_size: int = 64) -> dict:
    """Fit the temperature on ``fit_split`` under the ``which`` perturbations; write it into ``model_file``
    (unless ``write`` is False) and return the report (also ``out/calibration.json`` when ``out`` is given)."""
    from .checkpoint import update_payload
    from .predict import Predictor
    from .train import TEMPERATURE_BOUNDS, fit_temperature

    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file not found: {model_file}")
    predictor = Predictor(model_file)
    chosen = perturb.select(which)
    fit_images, fit_labels, manifest = load_split(predictor, data, manifest, fit_split, limit)
    fit_logits = perturbed_logits(predictor, fit_images, chosen, batch_size)
    stacked = np.concatenate(list(fit_logits.values()))
    stacked_labels = np.tile(fit_labels, len(fit_logits))
    old = predictor.temperature
    notes: list[str] = []
    new = fit_temperature(torch.from_numpy(stacked).float(), torch.from_numpy(stacked_labels).long(), log=notes.append)
    errors = int((stacked.argmax(axis=1) != stacked_labels).sum())
    test_images, test_labels, _ = load_split(predictor, data, manifest, eval_split, limit)
    test_logits = perturbed_logits(predictor, test_images, chosen, batch_size)
    record = {
        "method": "temperature scaling (NLL), clean images plus their robustness perturbations",
        "fitted_on": f"{fit_split} split of {manifest}",
        "perturbations": [p.name for p in chosen],
        "images": int(len(fit_labels)), "examples": int(len(stacked_labels)), "errors": errors,
        "error_rate": errors / len(stacked_labels),
        "temperature_bounds": list(TEMPERATURE_BOUNDS), "at_bound": any(notes),
        "previous_temperature": old, "temperature": new,
        "fit_nll_before": _nll(predictor, stacked, stacked_labels, old),
        "fit_nll_after": _nll(predictor, stacked, stacked_labels, new),
        "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "limited": bool(limit),
    }
    report = {
        "model_file": str(model_file), "model_version": predictor.version, "calibration": record,
        "test_split": eval_split, "test_images": int(len(test_labels)), "notes": notes,
        "before": ece_summary(predictor, test_logits, test_labels, old),
        "after": ece_summary(predictor, test_logits, test_labels, new),
        "written": bool(write),
    }
    if write:
        update_payload(model_file, temperature=float(new), calibration=record)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "calibration.json").write_text(json.dumps(report, indent=1))
    return report

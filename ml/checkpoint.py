"""The deployable model file (``model.pt``): weights plus everything needed to use them.

It holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: opening a model file never runs code.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import data as mldata
from . import models

MODEL_FORMAT = "leukportal-model/1"


def save_model(path: Path, model, config, classes, temperature, history, elapsed, best_epoch,
               extra: dict | None = None) -> Path:
    from .train import hardware

    manifest_sha = mldata.sha256_file(Path(config.manifest)) if config.manifest else None
    stamp = datetime.now(timezone.utc)
    payload = {
        "format": MODEL_FORMAT,
        "task": getattr(config, "task", "staging"),
        "arch": config.arch,
        "classes": list(getattr(config, "class_names", None) or classes),
        "folder_classes": list(classes),
        "input_size": config.img_size,
        "input_norm": getattr(config, "input_norm", "imagenet"),
        "mean": list(mldata.IMAGENET_MEAN),
        "std": list(mldata.IMAGENET_STD),
        "temperature": float(temperature),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        # Date and time: two models trained on one day must not share a version in the audit trail.
        "model_version": f"{config.arch}-{stamp:%Y%m%d-%H%M%S}-s{config.seed}",
        "training": {
            "config": {k: v for k, v in asdict(config).items() if k != "extra"},
            "manifest_sha256": manifest_sha,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "wall_time_s": round(elapsed, 1),
            "hardware": hardware(),
            "finished": stamp.isoformat(timespec="seconds"),
            "history": history,
        },
        **(extra or {}),
    }
    torch.save(payload, path)
    (Path(path).parent / "history.json").write_text(json.dumps(history, indent=1))
    return Path(path)


def read_payload(path: str | Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a LeukPortal model file")
    return payload


def load_model(path: str | Path):
    """(model in eval mode, payload) from a ``model.pt``."""
    payload = read_payload(path)
    if payload["arch"] == "ensemble":
        model = models.create_ensemble([m["arch"] for m in payload["members"]], num_classes=len(payload["classes"]),
                                       input_size=payload["input_size"])
    else:
        model = models.create(payload["arch"], num_classes=len(payload["classes"]), input_size=payload["input_size"])
    state = {k: v.float() for k, v in payload["state_dict"].items()}  # ensembles store float16 weights
    own = model.state_dict()
    # Files written before unused backbone heads were pruned carry those extra keys: drop them.
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state)  # strict: every weight of the model must be in the file
    model.eval()
    return model, payload


def update_payload(path: str | Path, **fields) -> None:
    """Add fields (a decision threshold, say) to a saved model file, atomically."""
    import os

    payload = read_payload(path)
    payload.update(fields)
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def store_float16(path: str | Path) -> Path:
    """Rewrite a model file with its floating-point weights in half precision (half the size).
    ``load_model`` computes in float32 either way; measure a model after this step, not before."""
    payload = read_payload(path)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    payload["weights_dtype"] = "float16"
    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    import os

    os.replace(tmp, path)
    return Path(path)

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
        "framing": getattr(config, "framing", "none"),
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
            # What the init/teacher files were when this run read them (ml.card describes them from this).
            **({"ancestors": config.extra["ancestors"]} if getattr(config, "extra", {}).get("ancestors") else {}),
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
    state = float_state_dict(payload)  # files may store float16 or int8 weights
    own = model.state_dict()
    # Files written before unused backbone heads were pruned carry those extra keys: drop them.
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state)  # strict: every weight of the model must be in the file
    if payload.get("test_time_flips"):
        model = models.FlipAveraged(model)
    elif payload.get("token_flips"):
        model = models.TokenFlipAveraged(model, payload.get("token_flip_axis", "left-right"))
    model.eval()
    return model, payload


def model_summary(payload: dict) -> dict:
    """The facts a model card states about a model this one was started or distilled from."""
    training = payload.get("training", {})
    return {"model_version": payload["model_version"], "arch": payload["arch"],
            "pretrained": bool(training.get("config", {}).get("pretrained_weights")),
            "epochs_run": training.get("epochs_run"), "wall_time_s": training.get("wall_time_s", 0),
            "manifest_sha256": training.get("manifest_sha256")}


def held_out_splits(payload: dict) -> list[str]:
    """The manifest splits a model was not fitted on, for checks that need such images: its validation
    splits, or the ``domain_splits`` calibration split a model fitted on every fold names (the screening probe)."""
    named = payload.get("domain_splits")
    if named:
        return list(named["calibrate"])
    return list(payload.get("training", {}).get("config", {}).get("val_splits") or [])


def update_payload(path: str | Path, **fields) -> None:
    """Add fields (a decision threshold, say) to a saved model file, atomically."""
    payload = read_payload(path)
    payload.update(fields)
    _replace(path, payload)


#: Where the mirror image is taken (``python -m ml tta --where``): the model file's flag (which wrapper
#: ``load_model`` puts around the network), the suffix of the copy's version, and for the token grid the axis
#: it is mirrored along (``models.TOKEN_FLIP_AXES``).
FLIP_PLACES = {"image": ("test_time_flips", "-flip2", None), "tokens": ("token_flips", "-tokenflip2", "left-right"),
               "tokens-updown": ("token_flips", "-tokenflipud2", "up-down")}


def with_test_time_flips(source: str | Path, out: str | Path, where: str = "image") -> Path:
    """A copy of ``source`` that averages over the mirror image: of each input image (``where="image"``,
    ``models.FlipAveraged``, two network passes) or of the backbone's token grid (``"tokens"``,
    ``models.TokenFlipAveraged``, one backbone pass). The same weights, a new version, and no domain check or
    calibration record, which were fitted on the plain model's outputs: run ``calibrate`` and ``fit-domain`` on
    the copy before shipping it."""
    flag, suffix, axis = FLIP_PLACES[where]
    payload = read_payload(source)
    if any(payload.get(other) for other, _, _ in FLIP_PLACES.values()):
        raise ValueError(f"{source} already averages over flips")
    if axis:
        models.TokenFlipAveraged(load_model(source)[0], axis)  # refuses a model without a token grid before writing
        payload["token_flip_axis"] = axis
    payload.pop("domain", None)
    payload.pop("calibration", None)
    payload.update({flag: True}, model_version=f"{payload['model_version']}{suffix}",
                   test_time_from={"model_version": payload["model_version"], "sha256": mldata.sha256_file(source)})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return _replace(out, payload)


INT8_MIN_ELEMENTS = 256  # smaller tensors (biases, batch-norm statistics) stay float16: they weigh nothing


def float_state_dict(payload: dict) -> dict:
    """The file's weights in float32: float16 ones cast, int8 ones (``store_int8``) times their per-channel scale."""
    scales = payload.get("weight_scales", {})
    state = {}
    for k, v in payload["state_dict"].items():
        if k in scales:
            scale = scales[k].float()
            v = v.float() * scale.view(-1, *([1] * (v.dim() - 1)))
        state[k] = v.float() if v.is_floating_point() else v
    return state


def quantizable(weight: torch.Tensor) -> bool:
    """Convolution and linear weights worth storing as int8: >= 2 dimensions, >= 256 values, and not depthwise
    (one input channel per filter: few values, and the most sensitive to rounding)."""
    return (weight.is_floating_point() and weight.dim() >= 2 and weight.numel() >= INT8_MIN_ELEMENTS
            and weight.shape[1] > 1)


def store_int8(path: str | Path) -> Path:
    """Rewrite a model file with its convolution and linear weights (>= 2 dimensions, >= 256 values) as int8 with
    one float32 scale per output channel (symmetric, max |w| -> 127), the rest as float16: a quarter of the
    float32 size. ``load_model`` computes in float32; measure a model after this step, not before."""
    payload = read_payload(path)
    state, scales = {}, {}
    for k, v in float_state_dict(payload).items():
        if quantizable(v):
            peak = v.abs().amax(dim=tuple(range(1, v.dim())))
            scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
            state[k] = torch.round(v / scale.view(-1, *([1] * (v.dim() - 1)))).clamp(-127, 127).to(torch.int8)
            scales[k] = scale.float()
        else:
            state[k] = v.half() if v.is_floating_point() else v
    payload.update(state_dict=state, weight_scales=scales, weights_dtype="int8")
    return _replace(path, payload)


def _replace(path: str | Path, payload: dict) -> Path:
    import os

    tmp = Path(str(path) + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return Path(path)


def store_float16(path: str | Path) -> Path:
    """Rewrite a model file with its floating-point weights in half precision (half the size).
    ``load_model`` computes in float32 either way; measure a model after this step, not before."""
    payload = read_payload(path)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in float_state_dict(payload).items()}
    payload.pop("weight_scales", None)
    payload["weights_dtype"] = "float16"
    return _replace(path, payload)

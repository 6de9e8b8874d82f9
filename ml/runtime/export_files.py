"""The files an ONNX export leaves beside ``NAME.pt``, and the check that they still belong to it.

- ``NAME.onnx``: the network (written by ``ml.onnx_export``, which needs torch);
- ``NAME.runtime.json``: the model file's payload without its weights, as JSON, plus a ``runtime`` record:
  the sha256 of the ``.pt`` it came from and of the other two files, input and output names, exporter;
- ``NAME.runtime.npz``: the payload's arrays (the domain check's tensors), referenced from the JSON as
  ``{"__array__": key}``; read with ``allow_pickle=False``, so opening it never runs code.

A ``.pt`` retrained after the export no longer matches the recorded sha256: ``check`` says so and the
loader refuses the export rather than serve another model's network under the new model's name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import sha256_file

RUNTIME_FORMAT = "leukportal-runtime/1"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "embedding")


@dataclass(frozen=True)
class ExportFiles:
    model: Path  # NAME.pt
    onnx: Path
    meta: Path
    arrays: Path

    @classmethod
    def beside(cls, model_file: str | Path) -> "ExportFiles":
        model = Path(model_file)
        stem = model.with_suffix("")
        return cls(model, stem.with_suffix(".onnx"), Path(f"{stem}.runtime.json"), Path(f"{stem}.runtime.npz"))

    def present(self) -> bool:
        return self.onnx.is_file() and self.meta.is_file() and self.arrays.is_file()


class StaleExport(ValueError):
    """The export beside a model file is missing, incomplete, or was made from another version of it."""


# --------------------------------------------------------------------------- payload <-> JSON + arrays

def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def split_arrays(value, arrays: dict, key: str = "payload"):
    """A payload with tensors/ndarrays -> JSON-able structure; the arrays go into ``arrays`` by key."""
    if _is_array(value):
        if hasattr(value, "detach"):  # a torch tensor, duck-typed so this module never imports torch
            value = value.detach().cpu().numpy()
        arrays[key] = np.asarray(value)
        return {"__array__": key}
    if isinstance(value, dict):
        return {str(k): split_arrays(v, arrays, f"{key}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [split_arrays(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]
    return value


def join_arrays(value, arrays):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: join_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [join_arrays(v, arrays) for v in value]
    return value


def write_runtime_files(files: ExportFiles, payload: dict, record: dict) -> None:
    """Write ``NAME.runtime.json`` and ``NAME.runtime.npz`` for an ``NAME.onnx`` already written.
    ``record`` (exporter, opset...) joins the sha256s in the JSON's ``runtime`` entry."""
    arrays: dict = {}
    plain = split_arrays({k: v for k, v in payload.items() if k != "state_dict"}, arrays)
    tmp = Path(str(files.arrays) + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, files.arrays)
    meta = {"runtime": {"format": RUNTIME_FORMAT, "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES),
                        "model_file": files.model.name, "model_sha256": sha256_file(files.model),
                        "onnx_file": files.onnx.name, "onnx_sha256": sha256_file(files.onnx),
                        "arrays_file": files.arrays.name, "arrays_sha256": sha256_file(files.arrays), **record},
            "payload": plain}
    tmp = Path(str(files.meta) + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, files.meta)


def read_runtime_files(files: ExportFiles) -> tuple[dict, dict]:
    """(payload without weights, runtime record) of a verified export; raises StaleExport otherwise."""
    record = check(files)
    meta = json.loads(files.meta.read_text())
    with np.load(files.arrays, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return join_arrays(meta["payload"], arrays), record


def check(files: ExportFiles) -> dict:
    """The export's runtime record when all three files are there and match the model file and each
    other by sha256; raises StaleExport with the reason otherwise."""
    if not files.present():
        missing = [p.name for p in (files.onnx, files.meta, files.arrays) if not p.is_file()]
        raise StaleExport(f"no complete ONNX export beside {files.model}: {', '.join(missing)} missing")
    try:
        record = json.loads(files.meta.read_text())["runtime"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StaleExport(f"{files.meta} is not a runtime record ({exc})") from None
    if record.get("format") != RUNTIME_FORMAT:
        raise StaleExport(f"{files.meta} has format {record.get('format')!r}, not {RUNTIME_FORMAT!r}")
    for path, key in ((files.model, "model_sha256"), (files.onnx, "onnx_sha256"), (files.arrays, "arrays_sha256")):
        if not path.is_file() or sha256_file(path) != record.get(key):
            raise StaleExport(f"{files.meta.name} was exported from another {path.name} (sha256 differs): "
                              f"re-export with python -m ml export --model {files.model}")
    return record

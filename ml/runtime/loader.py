"""Which model file, on which runtime: shipped names (``resolve_model_path``) and ``choose_runtime``, used
by ``ml.load_predictor``, which imports torch only when PyTorch is chosen.

``ML_RUNTIME`` picks the runtime:

- ``auto`` (default): ONNX Runtime when ``NAME.onnx`` and its runtime files are beside ``NAME.pt``, were
  exported from this very ``NAME.pt`` (sha256) and ``onnxruntime`` is installed; PyTorch otherwise. A
  stale export is never served: with torch installed it is skipped with a logged warning, without torch
  loading fails with the reason (the runtime profile has no other way to run the model).
- ``onnx``: ONNX Runtime or a clear error; ``torch``: PyTorch (the training profile).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .export_files import ExportFiles, StaleExport, check

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# Shipped model names -> files in ml/weights/. "staging" is the default.
SHIPPED = {
    "staging": "staging.pt",
    "screening": "screening.pt",
}
DEFAULT_MODEL = "staging"
RUNTIME_ENV = "ML_RUNTIME"
RUNTIMES = ("auto", "onnx", "torch")


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A shipped model name or a model file path -> an existing file."""
    name = str(name_or_path or DEFAULT_MODEL)
    candidate = Path(name)
    if candidate.suffix == ".pt" or candidate.is_file():
        if not candidate.is_file():
            raise FileNotFoundError(f"model file not found: {candidate}")
        return candidate
    filename = SHIPPED.get(name, f"{name}.pt")
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        known = ", ".join(sorted(n for n, f in SHIPPED.items() if (WEIGHTS_DIR / f).is_file()))
        raise FileNotFoundError(f"no shipped model {name!r} (looked for {path}); available: {known or 'none'}")
    return path


def runtime_setting() -> str:
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (and so without loading torch)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked, or a None entry in sys.modules
        return False


def choose_runtime(model_file: str | Path, setting: str | None = None) -> str:
    """"onnx" or "torch" for a model file under ``setting`` (default: ``ML_RUNTIME``); raises ValueError
    (``StaleExport`` for an export that does not belong to the file) when neither can serve it."""
    setting = setting or runtime_setting()
    if setting == "torch":
        return "torch"
    files = ExportFiles.beside(model_file)
    try:
        if not installed("onnxruntime"):
            raise StaleExport("onnxruntime is not installed")
        check(files)
        return "onnx"
    except StaleExport as exc:
        if setting == "onnx":
            raise
        if not installed("torch"):
            raise StaleExport(f"cannot serve {files.model}: {exc}; and PyTorch is not installed (runtime profile). "
                              f"Export it in the training profile: python -m ml export --model {files.model}") from None
        if files.onnx.exists():  # an export that is there but unusable is worth a warning; none at all is not
            logger.warning("Serving %s on PyTorch: %s", files.model, exc)
        return "torch"

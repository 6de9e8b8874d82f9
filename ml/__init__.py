"""LeukPortal machine learning: PyTorch + timm for training, ONNX Runtime for serving; no Django.

    import ml
    predictor = ml.load_predictor()            # the deployed smear-staging model
    predictor.predict(["smear.jpg"])           # [{"stage": ..., "probabilities": {...}, ...}]

Importing ``ml`` imports only ``ml.runtime`` (numpy, Pillow), neither torch nor onnxruntime: the runtime
is loaded with the first predictor.
"""
import functools
from pathlib import Path

from .runtime.export_files import ExportFiles
from .runtime.images import ImageError
from .runtime.loader import choose_runtime, resolve_model_path, runtime_setting

__all__ = ["ImageError", "load_predictor", "STAGES"]

STAGES = ("Benign", "Early", "Pre", "Pro")


def load_predictor(name: str | Path | None = None):
    """A predictor for a shipped model name ("staging", "screening", an arch) or a model file, loaded once per
    process and reused (a replaced model file or export is loaded afresh): on ONNX Runtime when a current
    export is beside it, else PyTorch (``ml.runtime.loader.choose_runtime``; ``predictor.runtime`` says which)."""
    path = resolve_model_path(name).resolve()
    files = ExportFiles.beside(path)
    mtimes = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (path, files.onnx, files.meta, files.arrays))
    return _cached(str(path), runtime_setting(), mtimes)


@functools.lru_cache(maxsize=8)
def _cached(path: str, setting: str, mtimes: tuple):
    return build_predictor(path, choose_runtime(path, setting))


def build_predictor(model_file: str | Path, runtime: str, with_domain: bool = True):
    """A new predictor for a model file on ``runtime`` ("onnx" or "torch"), not cached."""
    if runtime == "onnx":
        from .runtime.onnx_predictor import OnnxPredictor

        return OnnxPredictor(model_file, with_domain=with_domain)
    from .predict import Predictor  # torch: the training profile

    return Predictor(model_file, with_domain=with_domain)

"""LeukPortal machine learning: PyTorch + timm for training, ONNX Runtime for serving; no Django.

    import ml
    predictor = ml.load_predictor()            # the deployed smear-staging model
    predictor.predict(["smear.jpg"])           # [{"stage": ..., "probabilities": {...}, ...}]

Importing ``ml`` imports neither torch nor onnxruntime: the runtime is loaded with the first predictor.
"""
from .data import ImageError

__all__ = ["ImageError", "load_predictor", "STAGES"]

STAGES = ("Benign", "Early", "Pre", "Pro")


def load_predictor(name: str | None = None):
    """A cached predictor for a shipped model name ("staging", "screening", an arch) or a model file, on
    ONNX Runtime when a current export is beside it, else PyTorch (``ml.runtime.loader``)."""
    from .runtime.loader import load_predictor as _load

    return _load(name)

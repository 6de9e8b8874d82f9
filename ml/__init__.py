"""LeukPortal machine learning: plain PyTorch + timm, no Django.

    import ml
    predictor = ml.load_predictor()            # the deployed smear-staging model
    predictor.predict(["smear.jpg"])           # [{"stage": ..., "probabilities": {...}, ...}]
"""
from .data import ImageError

__all__ = ["ImageError", "load_predictor", "STAGES"]

STAGES = ("Benign", "Early", "Pre", "Pro")


def load_predictor(name: str | None = None):
    """A cached predictor for a shipped model name ("staging", "screening", an arch) or a model file."""
    from .predict import load_predictor as _load

    return _load(name)

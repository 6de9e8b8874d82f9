"""Prediction: the contract the portal, the CLI and outside checks rely on.

``load_predictor(name)`` returns a cached predictor (weights loaded once per process): an
``ml.runtime.OnnxPredictor`` when a current ONNX export is beside the model file, else this module's
``Predictor`` (PyTorch); both follow ``ml.runtime.contract``. ``predictor.predict(images)`` takes paths, bytes or PIL images of any mode and size and returns,
for each, a dict with one probability per class (summing to 1):

- staging model:   {"stage": "Pre", "probabilities": {"Benign": p, "Early": p, "Pre": p, "Pro": p}, ...}
- screening model: {"label": "blast", "probabilities": {"blast": p, "normal": p}, "threshold": t, ...}

Every result also says whether the image lies inside the model's domain (``ml.runtime.domain``), computed in the
same forward pass: ``"in_domain": true|false``, ``"domain_score": float`` in [0, 1] (higher = more like
the training images) and, when not in domain, ``"reason"``: a sentence for the technician. The label and
probabilities stay in the result for transparency; the portal shows no suggestion for such an image.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from . import data as mldata
from .checkpoint import load_model
from .runtime import domain as mldomain
from .runtime.contract import PredictorContract
# The torch-free loader owns the shipped names and picks the runtime; re-exported here for callers.
from .runtime.loader import DEFAULT_MODEL, SHIPPED, WEIGHTS_DIR, resolve_model_path  # noqa: F401


class Predictor(PredictorContract):
    """The contract on PyTorch: what training, evaluation and the tools use, and the serving fallback
    when no current ONNX export is beside the model file."""
    runtime = "torch"

    def __init__(self, path: str | Path, with_domain: bool = True):
        self.path = Path(path)
        self.model, payload = load_model(self.path)
        self._read_payload(payload, with_domain)
        self._lock = threading.Lock()  # one forward at a time: the model is shared by threads of a process

    def preprocess(self, image) -> torch.Tensor:
        """Path/bytes/PIL -> normalised (3, S, S) tensor; raises ml.ImageError for unreadable input."""
        return self.prepare(image)[0]

    def prepare(self, image) -> tuple[torch.Tensor, np.ndarray]:
        """(normalised (3, S, S) tensor, image statistics for the domain check), from one decode and resize."""
        array = np.asarray(mldata.fit_to_input(mldata.load_image(image), self.input_size, self.framing))
        tensor = mldata.normalise(torch.from_numpy(array.copy()).permute(2, 0, 1), self.input_norm)
        return tensor, mldomain.image_statistics(array)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embeddings) of a normalised batch: the bare model call."""
        with self._lock, torch.inference_mode():
            return self.model.forward_with_embedding(batch)

    def predict_outputs(self, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (N, classes), embeddings (N, D), image statistics (N, k)) from one forward pass per batch."""
        images = list(images)
        if not images:
            return self._empty_outputs()
        logits, embeddings, stats = [], [], []
        for start in range(0, len(images), batch_size):
            prepared = [self.prepare(image) for image in images[start:start + batch_size]]
            batch_logits, batch_embeddings = self.forward(torch.stack([tensor for tensor, _ in prepared]))
            logits.append(batch_logits.double().numpy())
            embeddings.append(batch_embeddings.double().numpy())
            stats += [s for _, s in prepared]
        return np.concatenate(logits), np.concatenate(embeddings), np.stack(stats)

"""Prediction: the contract the portal, the CLI and outside checks rely on.

``load_predictor(name)`` returns a cached ``Predictor`` (weights loaded once per process).
``Predictor.predict(images)`` takes paths, bytes or PIL images of any mode and size and returns,
for each, a dict with one probability per class (summing to 1):

- staging model:   {"stage": "Pre", "probabilities": {"Benign": p, "Early": p, "Pre": p, "Pro": p}, ...}
- screening model: {"label": "blast", "probabilities": {"blast": p, "normal": p}, "threshold": t, ...}

Every result also says whether the image lies inside the model's domain (``ml.domain``), computed in the
same forward pass: ``"in_domain": true|false``, ``"domain_score": float`` in [0, 1] (higher = more like
the training images) and, when not in domain, ``"reason"``: a sentence for the technician. The label and
probabilities stay in the result for transparency; the portal shows no suggestion for such an image.
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import torch

from . import data as mldata
from . import domain as mldomain
from .checkpoint import load_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Shipped model names -> files in ml/weights/. "staging" is the default.
SHIPPED = {
    "staging": "mobilenetv3_lstm.pt",
    "mobilenetv3_lstm": "mobilenetv3_lstm.pt",
    "screening": "screening.pt",
}
DEFAULT_MODEL = "staging"


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


class Predictor:
    def __init__(self, path: str | Path, with_domain: bool = True):
        self.path = Path(path)
        self.model, self.payload = load_model(self.path)
        self.task = self.payload.get("task", "staging")
        self.name = self.payload.get("name", self.payload["arch"])
        self.version = self.payload["model_version"]
        self.classes = tuple(self.payload["classes"])
        self.input_size = int(self.payload["input_size"])
        self.input_norm = self.payload.get("input_norm", "imagenet")  # the normalisation it was trained with
        self.temperature = float(self.payload.get("temperature", 1.0))
        self.threshold = self.payload.get("threshold")  # screening: P(blast) at or above -> "blast"
        self.positive_class = self.payload.get("positive_class")
        # The fitted domain check travels in the model file; a file without one gets the quality rule only.
        # (``with_domain=False`` only to fit a new check over an old one.)
        self.domain = mldomain.DomainCheck.from_payload(self.payload["domain"]) \
            if with_domain and self.payload.get("domain") else None
        self._lock = threading.Lock()  # one forward at a time: the model is shared by threads of a process

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, version={self.version!r}, classes={self.classes})"

    def preprocess(self, image) -> torch.Tensor:
        """Path/bytes/PIL -> normalised (3, S, S) tensor; raises ml.ImageError for unreadable input."""
        return self.prepare(image)[0]

    def prepare(self, image) -> tuple[torch.Tensor, np.ndarray]:
        """(normalised (3, S, S) tensor, image statistics for the domain check), from one decode and resize."""
        rgb = mldata.load_image(image)
        if rgb.size != (self.input_size, self.input_size):
            rgb = rgb.resize((self.input_size, self.input_size), mldata.Image.BILINEAR)
        array = np.asarray(rgb)
        tensor = mldata.normalise(torch.from_numpy(array.copy()).permute(2, 0, 1), self.input_norm)
        return tensor, mldomain.image_statistics(array)

    @torch.inference_mode()
    def predict_outputs(self, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (N, classes), embeddings (N, D), image statistics (N, k)) from one forward pass per batch."""
        images = list(images)
        logits, embeddings, stats = [], [], []
        for start in range(0, len(images), batch_size):
            prepared = [self.prepare(image) for image in images[start:start + batch_size]]
            batch = torch.stack([tensor for tensor, _ in prepared])
            with self._lock:
                batch_logits, batch_embeddings = self.model.forward_with_embedding(batch)
            logits.append(batch_logits.double().numpy())
            embeddings.append(batch_embeddings.double().numpy())
            stats += [s for _, s in prepared]
        if not logits:
            return np.zeros((0, len(self.classes))), np.zeros((0, 0)), np.zeros((0, len(mldomain.STAT_NAMES)))
        return np.concatenate(logits), np.concatenate(embeddings), np.stack(stats)

    def predict_logits(self, images, batch_size: int = 32) -> np.ndarray:
        """Raw logits, shape (len(images), len(classes))."""
        return self.predict_outputs(images, batch_size)[0]

    def domain_results(self, embeddings: np.ndarray, stats: np.ndarray) -> list[dict]:
        if self.domain is None:
            return mldomain.quality_only(stats)
        return self.domain.score(embeddings, stats)

    def probabilities(self, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Softmax of logits / T (the model's fitted temperature unless given)."""
        temperature = self.temperature if temperature is None else temperature
        return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)) / temperature, dim=1).numpy()

    def predict_proba(self, images, batch_size: int = 32, temperature: float | None = None) -> np.ndarray:
        """Calibrated class probabilities, shape (len(images), len(classes))."""
        return self.probabilities(self.predict_logits(images, batch_size), temperature)

    def decide(self, probabilities: np.ndarray) -> str:
        if self.task == "screening" and self.threshold is not None and self.positive_class:
            positive = self.classes.index(self.positive_class)
            others = [c for c in self.classes if c != self.positive_class]
            return self.positive_class if probabilities[positive] >= self.threshold else others[0]
        return self.classes[int(np.argmax(probabilities))]

    def result(self, probabilities: np.ndarray) -> dict:
        key = "label" if self.task == "screening" else "stage"
        result = {
            key: self.decide(probabilities),
            "probabilities": {c: float(p) for c, p in zip(self.classes, probabilities)},
            "model": self.name,
            "model_version": self.version,
        }
        if self.task == "screening":
            result["threshold"] = float(self.threshold)
        return result

    def predict(self, images, batch_size: int = 32) -> list[dict]:
        """One result dict per image, in order, with the domain check's verdict.
        Raises ml.ImageError naming the first unreadable image."""
        logits, embeddings, stats = self.predict_outputs(images, batch_size)
        return [{**self.result(p), **d}
                for p, d in zip(self.probabilities(logits), self.domain_results(embeddings, stats))]


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int) -> Predictor:
    return Predictor(path)


def load_predictor(name: str | Path | None = None) -> Predictor:
    """A predictor for a shipped name or a model file, loaded once per process and reused."""
    path = resolve_model_path(name).resolve()
    return _cached(str(path), path.stat().st_mtime_ns)  # a replaced file is loaded afresh

"""What every predictor shares, whichever runtime computes its forward pass.

A predictor is built from a model payload (the ``.pt`` file's dict, or the export's torch-free copy of it)
and supplies one method, ``predict_outputs(images, batch_size) -> (logits, embeddings, image statistics)``.
Everything the portal and the CLI read — probabilities, the decision, the result dict, the domain verdict —
is computed here once, so the PyTorch and the ONNX Runtime predictors cannot drift apart.
"""
from __future__ import annotations

import numpy as np

from . import domain as mldomain
from . import preprocess


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class PredictorContract:
    runtime = "?"  # "torch" | "onnx"

    def _read_payload(self, payload: dict, with_domain: bool = True) -> None:
        self.payload = payload
        self.task = payload.get("task", "staging")
        self.name = payload.get("name", payload["arch"])
        self.version = payload["model_version"]
        self.classes = tuple(payload["classes"])
        self.input_size = int(payload["input_size"])
        self.input_norm = payload.get("input_norm", "imagenet")  # the normalisation it was trained with
        self.framing = payload.get("framing", "none")  # and the framing (ml.runtime.images.FRAMINGS)
        self.temperature = float(payload.get("temperature", 1.0))
        self.threshold = payload.get("threshold")  # screening: P(blast) at or above -> "blast"
        self.positive_class = payload.get("positive_class")
        # The fitted domain check travels with the model; a model without one gets the quality rule only.
        # (``with_domain=False`` only to fit a new check over an old one.)
        self.domain = mldomain.DomainCheck.from_payload(payload["domain"]) \
            if with_domain and payload.get("domain") else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, version={self.version!r}, classes={self.classes})"

    def prepare_array(self, image, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (3, S, S) model input, written into ``out`` when given; image statistics), numpy only."""
        return preprocess.prepare(image, self.input_size, self.input_norm, out, self.framing)

    def predict_outputs(self, images, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits (N, classes), embeddings (N, D), image statistics (N, k)) from one forward pass per batch."""
        raise NotImplementedError

    def _empty_outputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros((0, len(self.classes))), np.zeros((0, 0)), np.zeros((0, len(mldomain.STAT_NAMES)))

    def predict_logits(self, images, batch_size: int = 32) -> np.ndarray:
        """Raw logits, shape (len(images), len(classes))."""
        return self.predict_outputs(images, batch_size)[0]

    def domain_results(self, embeddings: np.ndarray, stats: np.ndarray) -> list[dict]:
        if self.domain is None:
            return mldomain.quality_only(stats)
        return self.domain.score(embeddings, stats)

    def probabilities(self, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Softmax of logits / T (the model's fitted temperature unless given)."""
        return softmax(logits, self.temperature if temperature is None else temperature)

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

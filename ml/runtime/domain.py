"""Domain check: does an image resemble the images a model was trained on?

A model answers every input, even a blank page. This check says, in the same pass as the prediction,
whether the answer can be trusted at all. It combines three established pieces, all fitted when the
model is built and stored in the model file (nothing here is a hand-set threshold on a score):

1. **Feature distance** (Lee et al., 2018): class-conditional Gaussians with one shared, Ledoit-Wolf
   shrunk covariance on the model's own embedding (pooled backbone features + the classifier's input),
   fitted on the training split, kept as its 128 leading directions plus one pooled variance for the
   rest (probabilistic PCA); an image's score is its Mahalanobis distance to the nearest class.
   Unlike the softmax, which is near 1 for almost anything, this distance grows with how far the image
   lies from everything the model has seen.
2. **Image-statistics distance**: the same Mahalanobis distance on a few colour, brightness and texture
   statistics of the resized image (one Gaussian over all training images). It catches stain, exposure
   and focus far outside the training images even where the features happen to look ordinary.
3. **The other kind**: a logistic regression on the same statistics, trained on this model's training
   images against the training images of the portal's *other* model (segmented single cells on black
   for the staging model, smear fields for the screening model), so a wrong upload is named as such.

Each distance becomes a conformal p-value against the validation split (the share of validation images
at least as far out); ``domain_score`` is the smaller of the two, in (0, 1], higher = more typical.
The cut on it is fitted on the validation split for a target false-flag rate. An image is in domain
when its score reaches the cut, the kind classifier does not call it the other kind, and it passes the
quality rules below (not blank, not greyscale).

This module scores (numpy only; part of the torch-free runtime); ``ml.domain_fit`` fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from threadpoolctl import ThreadpoolController

# Quality rule, applied before any fitted check: a field whose luminance varies by less than 2% of the
# 8-bit range is blank (an empty slide, a lens cap, a white page) whatever the model says of it.
UNIFORM_LUMINANCE_STD = 0.02
# ... and a field without colour (a greyscale camera or scan: mean HSV saturation under 0.01; the least
# saturated training field has 0.034, and 0.024 under the suite's paler change) carries none of the stain
# the models read: the per-image standardisation would only magnify the noise between equal channels.
COLOURLESS_SATURATION = 0.01
DOMAIN_FORMAT = "leukportal-domain/2"  # /2: the embedding Gaussian as PPCA (basis, eigenvalues)

STAT_NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "mean_saturation", "std_saturation",
              "mean_value", "dark_fraction", "bright_fraction", "luminance_std", "gradient_energy", "laplacian_energy",
              "gradient_per_contrast", "laplacian_per_contrast")
REASONS = {
    "uniform": "blank or nearly uniform image",
    "colourless": "greyscale image: no stain colour to read, upload the colour image",
    ("staging", "other_kind"): "looks like a single segmented cell, not a blood-smear field: upload it as a single cell",
    ("staging", "unlike"): "colours and texture unlike any training smear",
    ("screening", "other_kind"): ("looks like a blood-smear field or an unsegmented crop, not a single segmented cell "
                                  "on a black background: upload a field as a smear field"),
    ("screening", "unlike"): "colours and texture unlike any training cell image",
}


def image_statistics(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the statistics vector named by ``STAT_NAMES`` (values in about [0, 1]).

    Computed on contiguous channel planes, sums in float64: this runs for every image served, and
    reductions across the interleaved channel axis were most of ``predict``'s cost beside the network."""
    planes = np.moveaxis(np.asarray(rgb), -1, 0).astype(np.float32, order="C") / np.float32(255.0)  # (3, H, W)
    red, green, blue = planes
    channels = planes.reshape(3, -1)
    luminance = np.float32(0.299) * red + np.float32(0.587) * green + np.float32(0.114) * blue
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, np.float32(1e-6)), np.float32(0.0))
    gradient = laplacian = 0.0
    if min(luminance.shape) > 2:
        gradient = (np.abs(np.diff(luminance, axis=0)).mean(dtype=np.float64)
                    + np.abs(np.diff(luminance, axis=1)).mean(dtype=np.float64)) / 2
        laplacian = np.abs(4 * luminance[1:-1, 1:-1] - luminance[:-2, 1:-1] - luminance[2:, 1:-1]
                           - luminance[1:-1, :-2] - luminance[1:-1, 2:]).mean(dtype=np.float64)
    luminance_std = luminance.std(dtype=np.float64)
    contrast = luminance_std + 1e-3
    # Fine detail relative to contrast: what focus blur removes and exposure or stain changes keep.
    return np.array([
        *channels.mean(axis=1, dtype=np.float64), *channels.std(axis=1, dtype=np.float64),
        saturation.mean(dtype=np.float64), saturation.std(dtype=np.float64), high.mean(dtype=np.float64),
        (luminance < 0.1).mean(), (luminance > 0.9).mean(), luminance_std, gradient, laplacian,
        gradient / contrast, laplacian / contrast,
    ], dtype=np.float64)


def is_uniform(stats: np.ndarray) -> bool:
    return bool(stats[STAT_NAMES.index("luminance_std")] < UNIFORM_LUMINANCE_STD)


def is_colourless(stats: np.ndarray) -> bool:
    return bool(stats[STAT_NAMES.index("mean_saturation")] < COLOURLESS_SATURATION)


def quality_flag(stats: np.ndarray) -> dict | None:
    """The quality rules, applied before any fitted check: a blank field, then a field without colour."""
    if is_uniform(stats):
        return flag(0.0, REASONS["uniform"])
    if is_colourless(stats):
        return flag(0.0, REASONS["colourless"])
    return None


# --------------------------------------------------------------------------- pieces

MAX_COMPONENTS = 128  # principal directions kept of a wide embedding; the rest share one variance (PPCA)


@dataclass
class GaussianDistance:
    """Mahalanobis distance to the nearest of one or more Gaussians that share one covariance.

    The shared covariance is the Ledoit-Wolf estimate of the within-class residuals. For a wide embedding
    only its ``MAX_COMPONENTS`` leading directions are kept and the remaining variance is pooled into one
    number (probabilistic PCA, Tipping & Bishop 1999): the distance still counts how far an image lies off
    the training subspace, and the model file stores a D x k basis instead of a D x D precision matrix."""
    center: np.ndarray  # (D,) standardisation
    scale: np.ndarray  # (D,)
    means: np.ndarray  # (C, D), standardised space
    basis: np.ndarray  # (D, k) leading eigenvectors of the shared covariance
    eigenvalues: np.ndarray  # (k,)
    residual_variance: float  # mean variance of the D - k directions left out (0 when k == D)

    def distance(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        d = z[:, None, :] - self.means[None, :, :]  # (N, C, D)
        projected = d @ self.basis  # (N, C, k)
        inside = (projected ** 2 / self.eigenvalues).sum(axis=2)
        squared = inside
        if self.residual_variance > 0:
            off = np.maximum((d ** 2).sum(axis=2) - (projected ** 2).sum(axis=2), 0.0)
            squared = inside + off / self.residual_variance
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    FIELDS = ("center", "scale", "means", "basis", "eigenvalues")

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k).tolist() for k in self.FIELDS}, "residual_variance": self.residual_variance}

    @classmethod
    def from_dict(cls, d: dict) -> "GaussianDistance":
        return cls(*(np.asarray(_plain(d[k]), dtype=np.float64) for k in cls.FIELDS),
                   float(d["residual_variance"]))


@dataclass
class KindClassifier:
    """Logistic regression on image statistics: P(the other model's kind of image)."""
    center: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def probability(self, stats: np.ndarray) -> np.ndarray:
        z = (np.asarray(stats, dtype=np.float64) - self.center) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))

    def to_dict(self) -> dict:
        return {"center": self.center.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "KindClassifier":
        return cls(np.asarray(_plain(d["center"])), np.asarray(_plain(d["scale"])), np.asarray(_plain(d["coef"])),
                   float(d["intercept"]))


def conformal_p(reference_sorted: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Share of reference (validation) images at least as far out as each distance, (1 + k) / (n + 1)."""
    n = len(reference_sorted)
    at_least = n - np.searchsorted(reference_sorted, distances, side="left")
    return (1.0 + at_least) / (n + 1.0)


# --------------------------------------------------------------------------- the check

@dataclass
class DomainCheck:
    task: str  # "staging" | "screening": which sentences explain a flag
    features: GaussianDistance
    stats: GaussianDistance
    kind: KindClassifier | None
    feature_reference: np.ndarray  # sorted validation distances
    stats_reference: np.ndarray
    cut: float  # domain_score below this -> not in domain
    fit_record: dict

    def score(self, embeddings: np.ndarray, stats: np.ndarray) -> list[dict]:
        """One {"in_domain", "domain_score"[, "reason"]} per image."""
        stats = np.asarray(stats, dtype=np.float64)
        # One BLAS thread for a few small products: OpenBLAS threads busy-wait after a call, and beside the
        # model's own threads they doubled a prediction's latency (48 ms against 22 ms on 2 cores).
        with _blas_controller().limit(limits=1, user_api="blas"):
            p_features = conformal_p(self.feature_reference, self.features.distance(embeddings))
            p_stats = conformal_p(self.stats_reference, self.stats.distance(stats))
        other = self.kind.probability(stats) if self.kind is not None else np.zeros(len(stats))
        results = []
        for pf, ps, po, s in zip(p_features, p_stats, other, stats):
            score = float(min(pf, ps))
            quality = quality_flag(s)
            if quality is not None:
                results.append(quality)
            elif po >= 0.5:
                results.append(flag(score, REASONS[(self.task, "other_kind")]))
            elif score < self.cut:
                results.append(flag(score, REASONS[(self.task, "unlike")]))
            else:
                results.append({"in_domain": True, "domain_score": score})
        return results

    def to_payload(self) -> dict:
        """Plain numbers, lists and strings: the model file still loads with ``weights_only=True``."""
        return {
            "format": DOMAIN_FORMAT, "task": self.task, "features": self.features.to_dict(),
            "stats": self.stats.to_dict(), "kind": self.kind.to_dict() if self.kind else None,
            "feature_reference": self.feature_reference.tolist(), "stats_reference": self.stats_reference.tolist(),
            "cut": self.cut, "fit": self.fit_record,
        }

    @classmethod
    def from_payload(cls, d: dict) -> "DomainCheck":
        if d.get("format") != DOMAIN_FORMAT:
            raise ValueError(f"domain check format {d.get('format')!r} is not {DOMAIN_FORMAT!r}: refit it with "
                             "python -m ml fit-domain")
        return cls(d["task"], GaussianDistance.from_dict(d["features"]), GaussianDistance.from_dict(d["stats"]),
                   KindClassifier.from_dict(d["kind"]) if d.get("kind") else None,
                   np.asarray(_plain(d["feature_reference"]), dtype=np.float64),
                   np.asarray(_plain(d["stats_reference"]), dtype=np.float64), float(d["cut"]), dict(d.get("fit", {})))


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS libraries, found once (a lookup per call would cost 0.2 ms)."""
    return ThreadpoolController()


def flag(score: float, reason: str) -> dict:
    return {"in_domain": False, "domain_score": float(score), "reason": reason}


def quality_only(stats: np.ndarray) -> list[dict]:
    """For a model file without a fitted check: only the quality rules apply (score 1 = not judged)."""
    return [quality_flag(s) or {"in_domain": True, "domain_score": 1.0} for s in np.asarray(stats)]


def _plain(value):
    """Tensors (a model file may hold them) -> numpy-friendly values."""
    return value.tolist() if hasattr(value, "tolist") else value

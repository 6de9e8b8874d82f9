"""Fitting the domain check (``ml.runtime.domain`` scores it, ``ml.domain_eval`` measures it) of a built model.

``fit_model_domain`` reads the model's own split manifest (training split for the Gaussians, validation
split for the calibration and the cut; both also under the mild acquisition changes for a model trained
to handle them) and the *other* data set's training part (for the kind classifier), and writes the
fitted check into the model file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as mldata
from .runtime.domain import (MAX_COMPONENTS, STAT_NAMES, DomainCheck, GaussianDistance, KindClassifier,
                             conformal_p)

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
# The other model's data: (manifest, splits used to fit the kind classifier, untouched split to measure on).
OTHER_KIND = {
    "staging": (SPLITS_DIR / "cnmc-fold1.csv", ("fold0", "fold1"), "test"),
    "screening": (SPLITS_DIR / "taleqani-all.csv", ("train",), "test"),
}


# --------------------------------------------------------------------------- fitting the pieces (sklearn)

def fit_gaussian(x: np.ndarray, labels: np.ndarray | None = None,
                 max_components: int = MAX_COMPONENTS) -> GaussianDistance:
    """Class means and the shared Ledoit-Wolf covariance of the within-class residuals, kept as its
    ``max_components`` leading directions plus one pooled variance (``GaussianDistance``)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, dtype=np.float64)
    labels = np.zeros(len(x), dtype=int) if labels is None else np.asarray(labels)
    center, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = (x - center) / scale
    classes = sorted(set(labels.tolist()))
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    residual = z - means[np.searchsorted(classes, labels)]
    if residual.shape[1] > residual.shape[0]:
        return GaussianDistance(center, scale, means, *_wide_ledoit_wolf(residual, max_components))
    eigenvalues, vectors = np.linalg.eigh(LedoitWolf(assume_centered=True).fit(residual).covariance_)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = np.maximum(eigenvalues[order], 1e-12), vectors[:, order]
    k = min(max_components, len(eigenvalues))
    rest = eigenvalues[k:]
    return GaussianDistance(center, scale, means, vectors[:, :k], eigenvalues[:k],
                            float(rest.mean()) if len(rest) else 0.0)


def _wide_ledoit_wolf(residual: np.ndarray, max_components: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The leading directions, their variances and the pooled rest of the Ledoit-Wolf covariance of a
    wide embedding (more dimensions than images, e.g. an ensemble's members side by side), without the
    D x D matrix: the shrunk covariance (1 - s) S + s mu I has the eigenvectors of S = R'R / n, which are
    R's right singular vectors, and eigenvalues (1 - s) sigma^2 / n + s mu. Same result as ``eigh``."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, d = residual.shape
    shrinkage = ledoit_wolf_shrinkage(residual, assume_centered=True)
    _, singular, vt = np.linalg.svd(residual, full_matrices=False)
    sample = singular ** 2 / n  # the nonzero eigenvalues of S, largest first
    mu = sample.sum() / d  # trace(S) / D
    k = min(max_components, len(sample))
    leading = np.maximum((1 - shrinkage) * sample[:k] + shrinkage * mu, 1e-12)
    rest = ((1 - shrinkage) * sample[k:].sum() + (d - k) * shrinkage * mu) / (d - k)
    return vt[:k].T, leading, float(rest)


def fit_kind(own: np.ndarray, other: np.ndarray) -> KindClassifier:
    """Logistic regression on image statistics: this model's kind of image (0) against the other's (1)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([own, other]).astype(np.float64)
    y = np.r_[np.zeros(len(own)), np.ones(len(other))]
    center, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit((x - center) / scale, y)
    return KindClassifier(center, scale, model.coef_[0], float(model.intercept_[0]))


@dataclass
class UnderChanges:
    """Images under acquisition changes, one row per image and change: the model's embedding, the image
    statistics, the class index (training images; -1 where unknown) and the change's name."""
    embeddings: np.ndarray
    stats: np.ndarray
    labels: np.ndarray
    changes: list[str]


def fit(task: str, train_embeddings, train_labels, train_stats, val_embeddings, val_stats,
        other_stats=None, target_rate: float = 0.01, extra_stats=None,
        train_changed: UnderChanges | None = None, val_changed: UnderChanges | None = None) -> DomainCheck:
    """Fit every piece on the training split; calibrate the p-values and the cut on the validation split.

    ``target_rate`` is the share of in-domain validation images the cut may flag (the false-flag rate
    aimed at); the cut is the validation score quantile that flags no more than that share.

    ``train_changed`` / ``val_changed``: training and validation images under the acquisition changes the
    model was trained to handle. The embedding Gaussian is fitted on the training images clean and changed,
    and the p-values and the cut are calibrated on the validation images clean and changed, so the check's
    domain is the model's (a field a little brighter or blurrier than the training lab's is still in it)."""
    if task not in ("staging", "screening"):
        raise ValueError(f"unknown task {task!r}")
    if train_changed is not None and len(train_changed.embeddings):
        features = fit_gaussian(np.concatenate([np.asarray(train_embeddings), train_changed.embeddings]),
                                np.concatenate([np.asarray(train_labels), train_changed.labels]))
    else:
        features = fit_gaussian(train_embeddings, train_labels)
    n_val = len(val_stats)
    if val_changed is not None and len(val_changed.embeddings):
        val_embeddings = np.concatenate([np.asarray(val_embeddings), val_changed.embeddings])
        val_stats = np.concatenate([np.asarray(val_stats), val_changed.stats])
    # ``extra_stats``: statistics of training images under the acquisition changes the model was trained to
    # handle, so that the image-statistics Gaussian spans them (its domain is the model's, not one lab's).
    fit_stats = train_stats if extra_stats is None else np.concatenate([train_stats, extra_stats])
    stats = fit_gaussian(fit_stats)
    kind = fit_kind(np.asarray(train_stats), np.asarray(other_stats)) \
        if other_stats is not None and len(other_stats) else None
    feature_reference = np.sort(features.distance(val_embeddings))
    stats_reference = np.sort(stats.distance(val_stats))
    val_scores = np.sort(np.minimum(conformal_p(feature_reference, features.distance(val_embeddings)),
                                    conformal_p(stats_reference, stats.distance(val_stats))))
    cut = float(val_scores[int(np.floor(target_rate * len(val_scores)))]) if len(val_scores) else 0.0
    check = DomainCheck(task, features, stats, kind, feature_reference, stats_reference, cut, {})
    flagged = [not r["in_domain"] for r in check.score(val_embeddings, val_stats)]
    check.fit_record = {
        "method": "min of conformal p-values of class-conditional Mahalanobis distance (tied Ledoit-Wolf covariance) "
                  "on the embedding and Mahalanobis distance on image statistics; logistic-regression kind classifier",
        "target_false_flag_rate": target_rate,
        "n_train": int(len(train_stats)), "n_val": int(n_val),
        "n_other_kind": int(len(other_stats)) if other_stats is not None else 0,
        "val_flagged_rate": float(np.mean(flagged)) if flagged else 0.0,
        "val_clean_flagged_rate": float(np.mean(flagged[:n_val])) if n_val else 0.0,
        "embedding_dim": int(np.asarray(train_embeddings).shape[1]),
        "n_train_changed": int(len(train_changed.embeddings)) if train_changed is not None else 0,
        "n_val_changed": int(len(val_changed.embeddings)) if val_changed is not None else 0,
        "stat_names": list(STAT_NAMES),
        # The greyscale rule's margin on this model's own images, which the card states.
        "min_train_saturation": float(np.asarray(train_stats)[:, STAT_NAMES.index("mean_saturation")].min())
        if len(train_stats) else None,
    }
    return check


def collect(predictor, paths, batch_size: int = 32, progress: bool = False, desc: str = "") -> tuple:
    """(embeddings, stats, probabilities) of images through the predictor (no augmentation)."""
    paths = list(paths)
    chunks = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=desc or "images", leave=False)
    logits, embeddings, stats = [], [], []
    for start in chunks:
        lo, em, st = predictor.predict_outputs(paths[start:start + batch_size], batch_size)
        logits.append(lo), embeddings.append(em), stats.append(st)
    return np.concatenate(embeddings), np.concatenate(stats), predictor.probabilities(np.concatenate(logits))


def _splits(predictor) -> tuple[list[str], list[str], str]:
    """(fitting splits, calibration splits, manifest): the model's training and validation splits, or the
    ``domain_splits`` its file names (a model fitted on every fold, such as the screening probe, has no
    validation split of its own; the check still needs images it was not fitted on to set its cut)."""
    from .checkpoint import held_out_splits

    config = predictor.payload.get("training", {}).get("config", {})
    manifest = config.get("manifest")
    if not manifest:
        raise ValueError(f"{predictor.path} records no split manifest; the domain check is fitted on its splits")
    named = predictor.payload.get("domain_splits")
    if named:
        return list(named["fit"]), held_out_splits(predictor.payload), manifest
    return list(config.get("train_splits") or ["train"]), list(config.get("val_splits") or ["val"]), manifest


def resolve_manifest(manifest: str | Path) -> Path:
    path = Path(manifest)
    if not path.is_file() and (SPLITS_DIR / path.name).is_file():
        path = SPLITS_DIR / path.name  # a run made elsewhere recorded a relative path
    if not path.is_file():
        raise FileNotFoundError(f"split manifest not found: {manifest}")
    return path


def fit_model_domain(model: str | Path, data: str | Path, other_data: str | Path | None,
                     target_rate: float = 0.01, progress: bool = True, write: bool = True, other_paths=None):
    """Fit the domain check of a model file on its own splits and write it into the file.

    The kind classifier learns from the other data set's fitting splits (``OTHER_KIND``), or from
    ``other_paths`` when given (images of the other kind, e.g. generated ones in tests)."""
    from .checkpoint import update_payload
    from .predict import Predictor, resolve_model_path

    path = resolve_model_path(model)
    predictor = Predictor(path, with_domain=False)  # the check being replaced may be of an older format
    train_splits, val_splits, manifest = _splits(predictor)
    samples = mldata.read_manifest(resolve_manifest(manifest))
    folder_classes = list(predictor.payload.get("folder_classes", predictor.classes))
    train = [s for s in samples if s.split in train_splits]
    val = [s for s in samples if s.split in val_splits]
    if not train or not val:
        raise ValueError(f"the manifest has no {train_splits} or {val_splits} images")
    train_emb, train_stats, _ = collect(predictor, [Path(data) / s.path for s in train], progress=progress,
                                        desc="training split")
    val_emb, val_stats, _ = collect(predictor, [Path(data) / s.path for s in val], progress=progress,
                                    desc="validation split")
    other_stats = None
    if other_paths is not None:
        other_stats = np.stack([predictor.prepare(p)[1] for p in other_paths])
    elif other_data is not None:
        other_manifest, fit_splits, _ = OTHER_KIND[predictor.task]
        others = [s for s in mldata.read_manifest(other_manifest) if s.split in fit_splits]
        other_stats = np.stack([predictor.prepare(Path(other_data) / s.path)[1] for s in others])
    labels = np.array([folder_classes.index(s.label) for s in train])
    # A model that standardises each image does not see the mild colour changes: its statistics Gaussian learns
    # the training images under them too, so a field is not refused for its colour only (an inverted, greyscale
    # or hue-rotated one still is). A model also trained under focus, resolution, JPEG and framing augmentation
    # handles every mild change of the suite: its embedding Gaussian learns the training images under all of
    # them, and its p-values and cut are set on validation images clean and changed.
    train_changed = val_changed = extra = None
    train_paths = [Path(data) / s.path for s in train[::4]]
    if trained_under_changes(predictor.payload):
        train_changed = under_changes(predictor, train_paths, labels[::4], progress=progress,
                                      desc="training split, changed")
        val_changed = under_changes(predictor, [Path(data) / s.path for s in val[::2]], None,
                                    progress=progress, desc="validation split, changed")
        colour = {p.name for p in COLOUR_CHANGES()}
        extra = train_changed.stats[[name in colour for name in train_changed.changes]]
    elif predictor.input_norm == "image":
        extra = acquisition_stats(predictor, train_paths)
    check = fit(predictor.task, train_emb, labels, train_stats, val_emb, val_stats, other_stats, target_rate,
                extra_stats=extra, train_changed=train_changed, val_changed=val_changed)
    check.fit_record.update({"train_splits": train_splits, "val_splits": val_splits, "manifest": str(manifest),
                             "statistics_under_changes": [p.name for p in COLOUR_CHANGES()] if extra is not None else [],
                             "embedding_under_changes": sorted(set(train_changed.changes)) if train_changed is not None else []})
    if write:
        update_payload(path, domain=compact(check.to_payload()))
    return check


def trained_under_changes(payload: dict) -> bool:
    """Whether a model file standardises each image and was trained under the acquisition augmentation that
    covers the suite's mild changes (stain or white balance, focus blur, JPEG, camera resolution, crops). The
    screening probe (frozen features, no training epochs) is not."""
    config = payload.get("training", {}).get("config", {})
    return payload.get("input_norm") == "image" and config.get("epochs", 0) > 0 and all((
        config.get("stain_augment", "none") != "none" or config.get("rgb_gain", 0) > 0,
        config.get("blur_prob", 0) > 0, config.get("jpeg_prob", 0) > 0,
        config.get("downscale_prob", 0) > 0, config.get("crop_prob", 0) > 0))


def MILD_CHANGES():
    """The mild acquisition changes of the robustness suite (the ones the model must handle)."""
    from .perturb import select

    return select("mild")


def COLOUR_CHANGES():
    """The mild stain, exposure, saturation and contrast changes of the robustness suite."""
    return [p for p in MILD_CHANGES() if p.family in ("illumination", "stain", "stain (HED)", "saturation", "contrast")]


def acquisition_stats(predictor, paths) -> np.ndarray:
    """Image statistics of ``paths`` under every mild colour change (``COLOUR_CHANGES``), without the network."""
    changes = COLOUR_CHANGES()
    return np.stack([predictor.prepare(change(mldata.load_image(path)))[1] for path in paths for change in changes])


def under_changes(predictor, paths, labels=None, changes=None, progress: bool = False, desc: str = "") -> UnderChanges:
    """Embeddings and statistics of ``paths`` under every change (default: ``MILD_CHANGES``), each image
    decoded once; ``labels``: the images' class indices, repeated for each change."""
    changes = MILD_CHANGES() if changes is None else changes
    paths = list(paths)
    chunks = range(0, len(paths), 8)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=desc or "images under changes", leave=False)
    embeddings, stats = [], []
    for start in chunks:
        images = [mldata.load_image(path) for path in paths[start:start + 8]]
        _, em, st = predictor.predict_outputs([change(image) for image in images for change in changes], 64)
        embeddings.append(em), stats.append(st)
    per_image = np.repeat(np.asarray(labels if labels is not None else [-1] * len(paths)), len(changes))
    return UnderChanges(np.concatenate(embeddings), np.concatenate(stats), per_image,
                        [change.name for _ in paths for change in changes])


def compact(payload: dict) -> dict:
    """The embedding Gaussian's arrays as float32 tensors: a 704x704 precision matrix as a list of Python
    floats would double the model file; a tensor keeps it small and still loads with ``weights_only``."""
    import torch

    features = {k: torch.tensor(v, dtype=torch.float32) for k, v in payload["features"].items()}
    return {**payload, "features": features}

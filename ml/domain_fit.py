"""Fitting and measuring the domain check (``ml.runtime.domain``, which scores) of a built model.

``fit_model_domain`` reads the model's own split manifest (training split for the Gaussians, validation
split for the calibration and the cut) and the *other* data set's training part (for the kind
classifier), and writes the fitted check into the model file.

``evaluate_domain`` measures it: the false-flag rate on the untouched test split and the catch rate on
out-of-domain sets built from what we have: the other data set's untouched split (the other kind of
image), generated blank, noise and text images, and the test images colour-inverted, in greyscale,
heavily blurred or hue-rotated (and, for the screening model, unsegmented crops of smear fields).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

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


def fit(task: str, train_embeddings, train_labels, train_stats, val_embeddings, val_stats,
        other_stats=None, target_rate: float = 0.01, extra_stats=None) -> DomainCheck:
    """Fit every piece on the training split; calibrate the p-values and the cut on the validation split.

    ``target_rate`` is the share of in-domain validation images the cut may flag (the false-flag rate
    aimed at); the cut is the validation score quantile that flags no more than that share."""
    if task not in ("staging", "screening"):
        raise ValueError(f"unknown task {task!r}")
    features = fit_gaussian(train_embeddings, train_labels)
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
        "n_train": int(len(train_stats)), "n_val": int(len(val_stats)),
        "n_other_kind": int(len(other_stats)) if other_stats is not None else 0,
        "val_flagged_rate": float(np.mean(flagged)) if flagged else 0.0,
        "embedding_dim": int(np.asarray(train_embeddings).shape[1]),
        "stat_names": list(STAT_NAMES),
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


def _resolve(manifest: str | Path) -> Path:
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
    samples = mldata.read_manifest(_resolve(manifest))
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
    # A model that standardises each image and was trained under stain and exposure changes handles them:
    # its check learns the statistics of training images under the mild colour changes too, so it refuses a
    # field for colour only far beyond them (an inverted, greyscale or hue-rotated image still is).
    extra = acquisition_stats(predictor, [Path(data) / s.path for s in train[::4]]) \
        if predictor.input_norm == "image" else None
    check = fit(predictor.task, train_emb, labels, train_stats, val_emb, val_stats, other_stats, target_rate,
                extra_stats=extra)
    check.fit_record.update({"train_splits": train_splits, "val_splits": val_splits, "manifest": str(manifest),
                             "statistics_under_changes": [p.name for p in COLOUR_CHANGES()] if extra is not None else []})
    if write:
        update_payload(path, domain=compact(check.to_payload()))
    return check


def COLOUR_CHANGES():
    """The mild stain, exposure, saturation and contrast changes of the robustness suite."""
    from .perturb import select

    return [p for p in select("mild") if p.family in ("illumination", "stain", "stain (HED)", "saturation", "contrast")]


def acquisition_stats(predictor, paths) -> np.ndarray:
    """Image statistics of ``paths`` under every mild colour change (``COLOUR_CHANGES``)."""
    changes = COLOUR_CHANGES()
    return np.stack([predictor.prepare(change(mldata.load_image(path)))[1] for path in paths for change in changes])


def compact(payload: dict) -> dict:
    """The embedding Gaussian's arrays as float32 tensors: a 704x704 precision matrix as a list of Python
    floats would double the model file; a tensor keeps it small and still loads with ``weights_only``."""
    import torch

    features = {k: torch.tensor(v, dtype=torch.float32) for k, v in payload["features"].items()}
    return {**payload, "features": features}


# --------------------------------------------------------------------------- out-of-domain sets

def generated_images(kind: str, n: int = 24, seed: int = 0) -> list[Image.Image]:
    """Deterministic blank, noise or text images at a few sizes (224 square and camera-like 640x480)."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    images = []
    for i in range(n):
        size = (224, 224) if i % 2 == 0 else (640, 480)
        if kind == "blank":
            colour = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (235, 215, 225), (200, 210, 235),
                      (245, 240, 230)][i % 6]
            array = np.clip(np.full((size[1], size[0], 3), colour, dtype=np.float64)
                            + rng.normal(0, 1.5, (size[1], size[0], 3)), 0, 255)
            images.append(Image.fromarray(array.astype(np.uint8)))
        elif kind == "noise":
            if i % 3 == 0:
                array = rng.integers(0, 256, (size[1], size[0], 3))
            elif i % 3 == 1:
                array = np.clip(rng.normal(128, 60, (size[1], size[0], 3)), 0, 255)
            else:  # coloured blotches: low-resolution noise scaled up
                small = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
                array = np.asarray(Image.fromarray(small).resize(size, Image.BICUBIC))
            images.append(Image.fromarray(np.asarray(array, dtype=np.uint8)))
        elif kind == "text":
            background = [(255, 255, 255), (248, 249, 250), (33, 37, 41)][i % 3]
            ink = (0, 0, 0) if sum(background) > 300 else (230, 230, 230)
            image = Image.new("RGB", size, background)
            draw = ImageDraw.Draw(image)
            font = ImageFont.load_default(size=12 + (i % 4) * 4)
            if i % 4 == 1:  # a page header bar, like a screenshot of a web page
                draw.rectangle([0, 0, size[0], 28], fill=(13, 110, 253))
            words = ["Case", "ACC-0001", "Smear", "Pro-B", "Benign", "review", "sign out", "0.99", "patient",
                     "LeukPortal", "upload", "queued"]
            y = 34
            while y < size[1] - 10:
                line = " ".join(pyrng.choice(words) for _ in range(6))
                draw.text((8, y), line, fill=ink, font=font)
                y += 16 + (i % 4) * 5
            images.append(image)
        else:
            raise ValueError(f"unknown generated set {kind!r}")
    return images


def _hue_rotate(image: Image.Image, turn: float = 0.33) -> Image.Image:
    h, s, v = image.convert("HSV").split()
    h = h.point(lambda x: int(x + turn * 256) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


TRANSFORMS = {
    "inverted": lambda im: ImageOps.invert(im),
    "greyscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "heavy blur": lambda im: im.filter(ImageFilter.GaussianBlur(radius=max(im.size) * 0.03)),
    "hue rotated": _hue_rotate,
}


def _field_crops(paths, seed: int = 0) -> list[Image.Image]:
    """Unsegmented cell-sized crops (natural background) from smear fields: what an untrained user or another
    lab's cell crop gives the screening model."""
    rng = random.Random(seed)
    crops = []
    for path in paths:
        image = mldata.load_image(path)
        side = min(image.size) // 2
        x, y = rng.randint(0, image.size[0] - side), rng.randint(0, image.size[1] - side)
        crops.append(image.crop((x, y, x + side, y + side)))
    return crops


def evaluate_domain(predictor, data: str | Path, manifest: str | Path, split: str = "test",
                    other_data: str | Path | None = None, max_per_set: int | None = None, progress: bool = False,
                    seed: int = 0, own_results: list[dict] | None = None) -> dict:
    """False-flag rate on the model's own untouched split and catch rate on each out-of-domain set.

    ``own_results``: the split's domain verdicts when the caller already has them (in manifest order)."""
    samples = [s for s in mldata.read_manifest(_resolve(manifest)) if s.split == split]
    rng = random.Random(seed)
    if max_per_set and len(samples) > max_per_set:
        samples = sorted(rng.sample(samples, max_per_set), key=lambda s: s.path)
    own_images = [mldata.load_image(Path(data) / s.path) for s in samples]  # decoded once, measured as is and transformed
    rows = []

    def measure(name: str, images, in_domain_set: bool, note: str = "", groups=None, results=None) -> dict:
        if results is None:
            results = []
            for start in range(0, len(images), 32):
                results += predictor.predict(images[start:start + 32])
        flagged = np.array([not r["in_domain"] for r in results])
        reasons = {}
        for r in results:
            if not r["in_domain"]:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        row = {"set": name, "n": len(results), "in_domain_set": in_domain_set, "flagged": int(flagged.sum()),
               "flagged_rate": float(flagged.mean()) if len(results) else 0.0, "reasons": reasons, "note": note}
        if groups is not None:
            per = {}
            for g, f in zip(groups, flagged):
                per.setdefault(g, []).append(f)
            row["flagged_rate_by_group"] = {g: float(np.mean(v)) for g, v in sorted(per.items())}
        rows.append(row)
        return row

    group_of = (lambda s: s.group.removeprefix("subject:")) if predictor.task == "screening" else (lambda s: s.label)
    measure(f"{split} split (in domain)", own_images, True, "untouched test images", [group_of(s) for s in samples],
            results=own_results if own_results is not None and max_per_set is None else None)
    if other_data is not None:
        other_manifest, _, other_split = OTHER_KIND[predictor.task]
        others = [s for s in mldata.read_manifest(other_manifest) if s.split == other_split]
        if max_per_set and len(others) > max_per_set:
            others = sorted(rng.sample(others, max_per_set), key=lambda s: s.path)
        kind = "single segmented cells (C-NMC)" if predictor.task == "staging" else "smear fields (Taleqani)"
        measure(f"other kind: {kind}", [Path(other_data) / s.path for s in others], False,
                f"untouched `{other_split}` split of the other data set")
        if predictor.task == "screening":
            measure("unsegmented crops of smear fields", _field_crops([Path(other_data) / s.path for s in others], seed),
                    False, "half-field crops with their natural background")
    for kind in ("blank", "noise", "text"):
        measure(f"generated {kind}", generated_images(kind, seed=seed), False, "24 images, 224x224 and 640x480")
    for name, transform in TRANSFORMS.items():
        measure(f"{split} split {name}", [transform(im) for im in own_images], False, "the in-domain images transformed")
    return {"model": predictor.name, "model_version": predictor.version, "task": predictor.task, "split": split,
            "rows": rows,
            "cut": predictor.domain.cut if predictor.domain else None,
            "fit": predictor.domain.fit_record if predictor.domain else None}


def markdown_section(report: dict, heading: str = "## Domain check") -> str:
    """The model card's section: method, fit, and the table of false-flag and catch rates."""
    fit = report.get("fit") or {}
    lines = [heading, ""]
    if not fit:
        return "\n".join(lines + ["No domain check is fitted for this model: only the blank-image rule applies.", ""])
    lines += [
        "Every prediction says whether the image lies inside the model's domain (`in_domain`, `domain_score`, "
        "`reason`); the portal shows no suggestion for an image outside it. Method (`ml/runtime/domain.py`):",
        "",
        "- **Feature distance**: class-conditional Gaussians with one shared Ledoit-Wolf covariance on the model's "
        f"own {fit.get('embedding_dim')}-dimensional embedding (the pooled backbone features, and the sequence head's summary "
        "where the model has one), "
        "fitted on the training split and kept as its 128 leading directions plus one pooled variance for the rest "
        "(probabilistic PCA: the file stores a small basis, not a full precision matrix); the score is the "
        "Mahalanobis distance to the nearest class (Lee et al., 2018). "
        "Chosen because it needs no out-of-domain data to fit, costs one matrix product in the same forward pass, "
        "and, unlike the softmax confidence (near 1 for a blank page), grows with distance from the training images.",
        "- **Image-statistics distance**: Mahalanobis distance on 16 colour, brightness, texture and sharpness statistics of the "
        "resized image (one Gaussian over the training split"
        + (", clean and under the mild stain, exposure, saturation and contrast changes of the robustness suite, which "
           "this model's per-image standardisation removes: a slightly bluer or darker field is not refused for "
           "its colour, an inverted, greyscale or hue-rotated one still is" if fit.get("statistics_under_changes") else "")
        + "): catches stain, exposure and focus far outside training.",
        "- **The other kind**: a logistic regression on the same statistics, trained on this model's training images "
        f"against {fit.get('n_other_kind')} training images of the portal's other model, names a wrong upload.",
        "- **Blank rule**: luminance standard deviation below 2% of the range is flagged whatever the model says.",
        f"- Both distances become conformal p-values against the {fit.get('n_val')} validation images "
        f"(`{', '.join(fit.get('val_splits', []))}`); `domain_score` is the smaller one. The cut "
        f"**{report['cut']:.4f}** was fitted on the validation split for a target false-flag rate of "
        f"{fit.get('target_false_flag_rate', 0):.0%} (validation flagged: {fit.get('val_flagged_rate', 0):.1%}), "
        "and is stored in the model file.",
        "",
        f"Measured by `python -m ml fit-domain --report` (the same table as `python -m ml evaluate`) on the "
        + (f"untouched `{report['split']}` split" if report["split"] == "test" else
           f"`{report['split']}` split, the check's own validation split (the model was trained on every subject, so "
           "no untouched images are left; its in-domain rate there is the fitted one, not an independent measurement)")
        + " and on out-of-domain sets built from what we have (no other data set "
        "was used to fit or tune anything):",
        "",
        "| set | images | flagged (not in domain) | answered (in domain) | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        if row["in_domain_set"]:
            target = "flagged <= 2%" if report.get("task") == "staging" else "flagged <= 5%"
        else:
            target = "answered <= 5%"
        limit = float(target.split("<= ")[1].rstrip("%")) / 100
        value = row["flagged_rate"] if row["in_domain_set"] else 1 - row["flagged_rate"]
        verdict = "met" if value <= limit else "**not met**"
        lines.append(f"| {row['set']} | {row['n']} | {row['flagged']} ({row['flagged_rate']:.1%}) | "
                     f"{row['n'] - row['flagged']} ({1 - row['flagged_rate']:.1%}) | {target}: {verdict} |")
    own = report["rows"][0]
    if own.get("flagged_rate_by_group"):
        lines += ["", "In-domain images flagged, by " + ("subject" if report.get("task") == "screening" else "class") + ": " +
                  ", ".join(f"{g} {r:.1%}" for g, r in own["flagged_rate_by_group"].items()) + "."]
    lines += ["", "Other laboratories' images (other stain, camera, magnification) are not among these sets: we have "
              "none, and none was used. A flag is a request for the pathologist's own judgement, not a diagnosis.", ""]
    return "\n".join(lines)

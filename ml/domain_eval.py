"""Measuring the domain check of a built model (``ml.domain_fit`` fits it, ``ml.runtime.domain`` scores).

``evaluate_domain`` gives the false-flag rate on the untouched test split and the catch rate on
out-of-domain sets built from what we have: the other data set's untouched split (the other kind of
image), generated blank, noise and text images, and the test images colour-inverted, in greyscale,
heavily blurred or hue-rotated (and, for the screening model, unsegmented crops of smear fields).
``markdown_section`` writes the model card's section.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from . import data as mldata
from .domain_fit import OTHER_KIND, resolve_manifest


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
    samples = [s for s in mldata.read_manifest(resolve_manifest(manifest)) if s.split == split]
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
            "model_sha256": mldata.sha256_file(predictor.path),
            "rows": rows,
            "cut": predictor.domain.cut if predictor.domain else None,
            "fit": predictor.domain.fit_record if predictor.domain else None}


def markdown_section(report: dict, heading: str = "## Domain check") -> str:
    """The model card's section: method, fit, and the table of false-flag and catch rates."""
    fit = report.get("fit") or {}
    lines = [heading, ""]
    if not fit:
        return "\n".join(lines + ["No domain check is fitted for this model: only the blank and greyscale rules apply.", ""])
    lines += [
        "Every prediction says whether the image lies inside the model's domain (`in_domain`, `domain_score`, "
        "`reason`); the portal shows no suggestion for an image outside it. Method (`ml/runtime/domain.py`):",
        "",
        "- **Feature distance**: class-conditional Gaussians with one shared Ledoit-Wolf covariance on the model's "
        f"own {fit.get('embedding_dim')}-dimensional embedding (the pooled backbone features, and the sequence head's summary "
        "where the model has one), "
        "fitted on the training split"
        + (f" (clean, and a quarter of it under each of the {len(fit['embedding_under_changes'])} mild acquisition "
           "changes of the robustness suite, which the model was trained to handle)"
           if fit.get("embedding_under_changes") else "")
        + " and kept as its 128 leading directions plus one pooled variance for the rest "
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
        "- **Quality rules**, whatever the model says: luminance standard deviation below 2% of the range is blank; "
        "mean saturation below 0.01 is a greyscale image"
        + (f" (the least saturated training image has {fit['min_train_saturation']:.3f})."
           if fit.get("min_train_saturation") is not None else "."),
        f"- Both distances become conformal p-values against the {fit.get('n_val')} validation images "
        f"(`{', '.join(fit.get('val_splits', []))}`)"
        + (f" and {fit['n_val_changed']} changed ones (every second validation image under each mild change; the "
           "flagged rates under the mild changes in the robustness table are therefore of changes the check was fitted "
           "on, measured on test images it was not)" if fit.get("n_val_changed") else "")
        + "; `domain_score` is the smaller one. The cut "
        f"**{report['cut']:.4f}** was fitted on them for a target false-flag rate of "
        f"{fit.get('target_false_flag_rate', 0):.0%} (validation flagged: {fit.get('val_flagged_rate', 0):.1%}"
        + (f"; clean validation images only: {fit['val_clean_flagged_rate']:.1%}" if fit.get("n_val_changed") else "")
        + "), and is stored in the model file.",
        "",
        "Measured by `python -m ml fit-domain --report` (the same table as `python -m ml evaluate`) on the "
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

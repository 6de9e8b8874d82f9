"""Heat maps that show what a model uses, and the deletion test that checks them.

- ``heatmap``: the portal's map, greedy deletion. The image is cut into an 8 x 8 grid; each cell is
  blurred alone to rank them, then cells are blurred one at a time, each time the one (among the 24
  ranked highest) whose blurring, together with those already blurred, lowers the explained class's
  log-odds most, until a quarter of the image is blurred. The cells taken first are the hottest: the
  region the answer depends on *jointly*. Single-window occlusion (``occlusion_map``) misses evidence
  that is repeated across a field (blurring one blast of several costs little). Model-agnostic: only
  forward passes, batched through ``predictor.predict_logits``, so it runs on any predictor (PyTorch or
  ONNX Runtime).
- ``occlusion_map``: every window of the image (a quarter of its side, half-window stride) is blurred in
  turn and the drop of the explained class's log-odds is spread over the window; kept for comparison.
- ``gradcam``: Grad-CAM (the ``grad-cam`` package) at the backbone's last feature map
  (``model.feature_tap``), kept for comparison; it failed the deletion test on the shipped model. It needs
  PyTorch (the training profile); given an ONNX Runtime predictor it uses the same model file on PyTorch.
- ``deletion_test``: blur the hottest 20% of each image by the map, then the coldest 20%, and measure
  how much probability the predicted class loses each time. A faithful map costs much more when its
  hot part is removed.

Maps are (input_size, input_size) float32 arrays in [0, 1]; ``overlay`` blends one over the image.
"""
from __future__ import annotations

import copy
import functools
import time

import numpy as np
from PIL import Image, ImageFilter

from . import data as mldata

DELETION_FRACTION = 0.2
BLUR_SIGMA = 8 / 224  # of the image side: removes a cell's texture and edges, keeps its average colour


def blurred(rgb: Image.Image) -> Image.Image:
    """The image with detail removed: the baseline that occlusion and the deletion test both blur to."""
    return rgb.filter(ImageFilter.GaussianBlur(max(1.0, BLUR_SIGMA * rgb.width)))


def _model_input(predictor, image):
    """(the image as the model sees it: framed and resized, the predictor that reads such images as they are).

    Maps blur parts of the model's input and score every copy: framing those copies again would move a
    framed cell once more, and differently once part of it is blurred."""
    framing = getattr(predictor, "framing", "none")
    rgb = mldata.fit_to_input(mldata.load_image(image), predictor.input_size, framing)
    if framing != "none":
        predictor = copy.copy(predictor)
        predictor.framing = "none"
    return rgb, predictor


def _log_odds(logits: np.ndarray, index: int) -> np.ndarray:
    """log p / (1 - p) of one class at T = 1: unlike a (sharpened) probability it never saturates."""
    logits = np.asarray(logits, dtype=np.float64)
    others = np.delete(logits, index, axis=1)
    top = others.max(axis=1, keepdims=True)
    return logits[:, index] - (top[:, 0] + np.log(np.exp(others - top).sum(axis=1)))


def _windows(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _smooth(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (numpy only), edges reflected."""
    radius = max(1, min(int(3 * sigma), min(array.shape) - 1))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(array, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def _explained_index(predictor, logits: np.ndarray, target: str | None) -> int:
    if target is None:
        probabilities = predictor.probabilities(logits[:1])[0]
        target = predictor.result(probabilities)["label" if predictor.task == "screening" else "stage"]
    return predictor.classes.index(target)


def heatmap(predictor, image, target: str | None = None, *, grid: int = 8, candidates: int = 24,
            area: float = 0.25, batch_size: int = 64) -> np.ndarray:
    """Greedy deletion map (H, W) float32 in [0, 1] at the model's input size for ``target`` (default: the
    predicted label). The ``grid`` x ``grid`` cells blurred greedily until ``area`` of the image is blurred
    get 1 (the first) down to 0.5 (the last), in the order taken (a cell that lowers the class no further is
    not taken: the greedy stops there); the other cells get up to 0.5 by how much blurring each alone costs. ``candidates`` bounds the cells tried per step (those that cost most alone):
    grid² + about candidates x steps forward passes, 64 + 280 by default."""
    rgb, predictor = _model_input(predictor, image)
    size = rgb.width
    base = np.asarray(rgb)
    soft = np.asarray(blurred(rgb))
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    cells = [(slice(edges[i], edges[i + 1]), slice(edges[j], edges[j + 1])) for i in range(grid) for j in range(grid)]

    def with_blurred(masks: list[np.ndarray]) -> list[Image.Image]:
        return [Image.fromarray(np.where(m[..., None], soft, base)) for m in masks]

    def cell_mask(index: int, start: np.ndarray | None = None) -> np.ndarray:
        mask = np.zeros((size, size), dtype=bool) if start is None else start.copy()
        mask[cells[index]] = True
        return mask

    singles = [cell_mask(i) for i in range(len(cells))]
    logits = predictor.predict_logits([rgb] + with_blurred(singles), batch_size)
    index = _explained_index(predictor, logits, target)
    scores = _log_odds(logits, index)
    alone = np.clip(scores[0] - scores[1:], 0, None)
    pool = [int(i) for i in np.argsort(-alone, kind="stable")[:candidates]]
    taken: list[int] = []
    blurred_so_far = np.zeros((size, size), dtype=bool)
    current = scores[0]
    while pool and blurred_so_far.mean() < area:
        trial = [cell_mask(i, blurred_so_far) for i in pool]
        after = _log_odds(predictor.predict_logits(with_blurred(trial), batch_size), index)
        if after.min() >= current - 1e-6:  # no cell left costs the class anything more: the rest is not used
            break
        best = pool.pop(int(np.argmin(after)))
        current = float(after.min())
        taken.append(best)
        blurred_so_far[cells[best]] = True
    saliency = np.zeros((size, size))
    peak = alone.max()
    for i, cell in enumerate(cells):
        saliency[cell] = 0.5 * alone[i] / peak if peak > 0 else 0.0
    for rank, i in enumerate(taken):
        saliency[cells[i]] = 1.0 - 0.5 * rank / max(len(taken), 1)
    saliency = _smooth(saliency, sigma=size / grid / 4)  # softened cell edges, the order kept
    top = saliency.max()
    return (saliency / top if top > 0 else saliency).astype(np.float32)


def occlusion_map(predictor, image, target: str | None = None, *, window: float = 0.25, stride: float = 0.5,
                  batch_size: int = 64) -> np.ndarray:
    """Occlusion map (H, W) float32 in [0, 1] at the model's input size for ``target`` (default: the
    predicted label). 1 marks the region whose blurring costs the class most; 0 marks regions whose
    blurring costs nothing (or helps). ``window`` is the window's side as a fraction of the image,
    ``stride`` the step as a fraction of the window: 7 x 7 = 49 forward passes by default."""
    rgb, predictor = _model_input(predictor, image)
    size = rgb.width
    base = np.asarray(rgb)
    soft = np.asarray(blurred(rgb))
    side = max(1, round(window * size))
    step = max(1, round(stride * side))
    boxes = [(y, x) for y in _windows(size, side, step) for x in _windows(size, side, step)]
    variants = [rgb]
    for y, x in boxes:
        occluded = base.copy()
        occluded[y:y + side, x:x + side] = soft[y:y + side, x:x + side]
        variants.append(Image.fromarray(occluded))
    logits = predictor.predict_logits(variants, batch_size)
    scores = _log_odds(logits, _explained_index(predictor, logits, target))
    drops = scores[0] - scores[1:]
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for (y, x), drop in zip(boxes, drops):
        total[y:y + side, x:x + side] += drop
        count[y:y + side, x:x + side] += 1
    saliency = _smooth(np.clip(total / np.maximum(count, 1), 0, None), sigma=step / 2)  # no window-grid blocks
    peak = saliency.max()
    return (saliency / peak if peak > 0 else saliency).astype(np.float32)


def gradcam_map(predictor, image, target: str | None = None) -> np.ndarray:
    """Grad-CAM with ``heatmap``'s signature (for the deletion test)."""
    return gradcam(predictor, image, target)[0]


METHODS = {"greedy": heatmap, "occlusion": occlusion_map, "gradcam": gradcam_map}


def deletion_test(predictor, images, method=heatmap, fraction: float = DELETION_FRACTION,
                  batch_size: int = 64) -> dict:
    """Blur the hottest ``fraction`` of each image's pixels by its map, then the coldest; return the mean
    drop of the predicted class's probability (the model's own, temperature-scaled) for each, their
    ratio, the same drops in log-odds, the per-image drops and the seconds per map.
    ``method(predictor, image, target)`` makes a map."""
    hot_drops, cold_drops, hot_odds, cold_odds, seconds = [], [], [], [], []
    for image in images:
        rgb, model = _model_input(predictor, image)
        logits = model.predict_logits([rgb])
        probabilities = model.probabilities(logits)[0]
        label = int(np.argmax(probabilities))
        tick = time.perf_counter()
        saliency = np.asarray(method(model, rgb, model.classes[label]), dtype=np.float64)
        seconds.append(time.perf_counter() - tick)
        order = np.argsort(saliency.ravel(), kind="stable")
        k = max(1, round(fraction * order.size))
        base, soft = np.asarray(rgb), np.asarray(blurred(rgb))
        variants = []
        for chosen in (order[-k:], order[:k]):  # hottest, coldest
            mask = np.zeros(order.size, dtype=bool)
            mask[chosen] = True
            mask = mask.reshape(saliency.shape)[..., None]
            variants.append(Image.fromarray(np.where(mask, soft, base)))
        changed = model.predict_logits(variants, batch_size)
        hot, cold = model.probabilities(changed)[:, label]
        hot_drops.append(probabilities[label] - hot)
        cold_drops.append(probabilities[label] - cold)
        before, after_hot, after_cold = _log_odds(np.concatenate([logits, changed]), label)
        hot_odds.append(before - after_hot)
        cold_odds.append(before - after_cold)
    hot_mean, cold_mean = float(np.mean(hot_drops)), float(np.mean(cold_drops))
    return {
        "n": len(hot_drops), "fraction": fraction,
        "hottest_drop": hot_mean, "coldest_drop": cold_mean,
        "ratio": hot_mean / cold_mean if cold_mean > 0 else float("inf"),
        # The same in log-odds at T = 1, which a sharpened (saturated) probability hides.
        "hottest_log_odds_drop": float(np.mean(hot_odds)), "coldest_log_odds_drop": float(np.mean(cold_odds)),
        "passes": hot_mean >= 0.2 and hot_mean >= 3 * max(cold_mean, 0.0),
        "seconds_per_map": float(np.mean(seconds)),
        "hottest_drops": [float(v) for v in hot_drops], "coldest_drops": [float(v) for v in cold_drops],
    }



def evaluate(model, data, manifest=None, split: str = "test", methods=("greedy", "occlusion", "gradcam"),
             limit: int | None = None, out=None) -> dict:
    """The deletion test of each method on a manifest split (the model's own manifest by default);
    written to ``out/explain.json`` when ``out`` is given."""
    import json
    from pathlib import Path

    from .predict import Predictor, resolve_model_path
    from .robustness import load_split

    predictor = Predictor(resolve_model_path(model))
    images, _, manifest = load_split(predictor, data, manifest, split, limit)
    report = {"model": predictor.name, "model_version": predictor.version, "temperature": predictor.temperature,
              "manifest": str(manifest), "split": split, "n": len(images), "limited": bool(limit),
              "blur_sigma_px": max(1.0, BLUR_SIGMA * predictor.input_size), "methods": {}}
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown heat map method {name!r}; known: {', '.join(METHODS)}")
        report["methods"][name] = deletion_test(predictor, images, METHODS[name])
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "explain.json").write_text(json.dumps(report, indent=1))
    return report


def gradcam(predictor, image, target: str | None = None) -> tuple[np.ndarray, str]:
    """(heat map in [0, 1] of shape (input_size, input_size), the class it explains).

    Pass ``target`` (the label already predicted) to skip a second forward pass."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from .models import unwrapped

    predictor = torch_twin(predictor)
    tensor = predictor.preprocess(image).unsqueeze(0)
    if target is None:
        target = predictor.result(predictor.predict_proba([image])[0])[
            "label" if predictor.task == "screening" else "stage"]
    index = predictor.classes.index(target)
    with predictor._lock, torch.enable_grad():  # the shared model is not re-entrant
        # A flip-averaged model runs its network twice: Grad-CAM explains the one pass on the image as it is.
        network = unwrapped(predictor.model)
        with GradCAM(model=network, target_layers=[network.feature_tap]) as cam:
            heatmap = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(index)])[0]
    return np.nan_to_num(heatmap.astype(np.float32)), target


def torch_twin(predictor):
    """The PyTorch predictor of the same model file: Grad-CAM needs gradients, which ONNX Runtime does not
    give (training profile only; the portal's occlusion map needs forward passes alone)."""
    if getattr(predictor, "runtime", "torch") == "torch":
        return predictor
    twin = _torch_predictor(str(predictor.path))
    if twin.framing != predictor.framing:  # the caller reads images already framed (``_model_input``)
        twin = copy.copy(twin)
        twin.framing = predictor.framing
    return twin


@functools.lru_cache(maxsize=2)
def _torch_predictor(path: str):
    from .predict import Predictor

    return Predictor(path)


def jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB float in [0, 1] on the jet colour map (blue, cyan, yellow, red): OpenCV's COLORMAP_JET,
    which the Grad-CAM package's overlay used, to within 1/255."""
    v = np.asarray(values, dtype=np.float32)[..., None]
    return np.clip(1.5 - np.abs(4 * v - np.array([3, 2, 1], dtype=np.float32)), 0, 1)


def overlay(image, heatmap: np.ndarray, opacity: float = 0.45, framing: str = "none") -> Image.Image:
    """The heat map (jet colours) blended over the image at the image's own size (numpy only). ``framing``
    is the model's (``predictor.framing``): a map of a framed cell goes back over the cell it shows."""
    rgb = mldata.load_image(image)
    heat = Image.fromarray((heatmap * 255).astype(np.uint8))
    box = mldata.cell_box(rgb) if framing == "cell" else None
    if box is None:
        resized = heat.resize(rgb.size, Image.BILINEAR)
    else:  # the map covers the square the model saw; outside it the model saw nothing
        resized = Image.new("L", rgb.size, 0)
        resized.paste(heat.resize((box[2] - box[0], box[3] - box[1]), Image.BILINEAR), box[:2])
    colours = jet(np.round(np.asarray(resized, dtype=np.float32)) / 255.0)
    blended = opacity * colours + (1.0 - opacity) * (np.asarray(rgb, dtype=np.float32) / 255.0)
    return Image.fromarray((255 * blended / blended.max()).astype(np.uint8))

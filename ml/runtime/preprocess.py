"""Model input from an image with numpy and Pillow only, equal to ``ml.data.normalise`` (the training
preprocessing, in torch): bitwise for "imagenet", to float32 rounding for "image" (sums in another
order); ``tests/ml/test_runtime.py`` checks both. Written for speed: it runs for every image served."""
from __future__ import annotations

import numpy as np
from . import domain as mldomain
from . import images as mlimages

_MEAN = np.asarray(mlimages.IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(mlimages.IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def normalise(images: np.ndarray, mode: str = "imagenet", out: np.ndarray | None = None) -> np.ndarray:
    """uint8 array(s) (..., 3, H, W) -> float32 model input by the normalisation ``mode`` (into ``out``)."""
    images = np.asarray(images)
    if out is None:
        out = np.empty(images.shape, dtype=np.float32)
    np.divide(images, np.float32(255.0), out=out, dtype=np.float32)
    if mode == "imagenet":
        np.subtract(out, _MEAN, out=out)
        return np.divide(out, _STD, out=out)
    if mode == "image":
        out[...] = standardise_per_image(out)
        return out
    raise ValueError(f"unknown input normalisation {mode!r}: use one of {', '.join(mlimages.INPUT_NORMS)}")


def standardise_per_image(x: np.ndarray) -> np.ndarray:
    """float32 (..., 3, H, W) in [0, 1] -> each channel standardised over the image's non-black pixels
    (all pixels when fewer than 1% are non-black); see ``ml.data.standardise_per_image``."""
    shape = x.shape
    out = np.array(x, dtype=np.float32, order="C").reshape(-1, 3, shape[-2] * shape[-1])  # (N, 3, P)
    pixels = out.shape[-1]
    foreground = np.maximum(np.maximum(out[:, 0], out[:, 1]), out[:, 2]) > mlimages._BLACK  # (N, P)
    counts = foreground.sum(axis=-1)
    for image, mask, count in zip(out, foreground, counts):
        # Sums along contiguous rows (numpy sums those pairwise: float32 stays accurate over 50k pixels).
        if count < 0.01 * pixels or count == pixels:
            mean = image.sum(axis=1) / np.float32(pixels)
            image -= mean[:, None]
            var = (image * image).sum(axis=1) / np.float32(pixels)
        else:
            weights = mask.astype(np.float32)
            mean = (image * weights).sum(axis=1) / np.float32(count)
            image -= mean[:, None]
            var = ((image * weights) ** 2).sum(axis=1) / np.float32(count)
        image /= np.maximum(np.sqrt(var), np.float32(mlimages._MIN_STD))[:, None]
    return out.reshape(shape)


def resized_rgb(image, size: int, framing: str = "none") -> np.ndarray:
    """Path/bytes/PIL -> (size, size, 3) uint8 RGB, framed and resized as in training; raises ml.ImageError."""
    return np.asarray(mlimages.fit_to_input(mlimages.load_image(image), size, framing))


def prepare(image, size: int, mode: str, out: np.ndarray | None = None,
            framing: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(float32 (3, size, size) model input, written into ``out`` when given, image statistics for the
    domain check) from one decode."""
    array = resized_rgb(image, size, framing)
    return normalise(np.moveaxis(array, -1, 0), mode, out), mldomain.image_statistics(array)

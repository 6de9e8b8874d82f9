"""Model input from an image with numpy and Pillow only, equal to ``ml.data.normalise`` (the training
preprocessing, in torch) to float32 rounding; ``tests/ml/test_runtime.py`` checks both modes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .. import data as mldata
from .. import domain as mldomain

_MEAN = np.asarray(mldata.IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(mldata.IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def normalise(images: np.ndarray, mode: str = "imagenet") -> np.ndarray:
    """uint8 array(s) (..., 3, H, W) -> float32 model input by the normalisation ``mode``."""
    x = np.asarray(images).astype(np.float32) / np.float32(255.0)
    if mode == "imagenet":
        return (x - _MEAN) / _STD
    if mode == "image":
        return standardise_per_image(x)
    raise ValueError(f"unknown input normalisation {mode!r}: use one of {', '.join(mldata.INPUT_NORMS)}")


def standardise_per_image(x: np.ndarray) -> np.ndarray:
    """float32 (..., 3, H, W) in [0, 1] -> each channel standardised over the image's non-black pixels
    (all pixels when fewer than 1% are non-black); see ``ml.data.standardise_per_image``."""
    foreground = (x.max(axis=-3, keepdims=True) > mldata._BLACK).astype(np.float32)
    pixels = x.shape[-1] * x.shape[-2]
    count = foreground.sum(axis=(-2, -1), keepdims=True)
    foreground = np.where(count >= 0.01 * pixels, foreground, np.float32(1.0))
    count = foreground.sum(axis=(-2, -1), keepdims=True)
    mean = (x * foreground).sum(axis=(-2, -1), keepdims=True) / count
    var = (((x - mean) * foreground) ** 2).sum(axis=(-2, -1), keepdims=True) / count
    return (x - mean) / np.maximum(np.sqrt(var), np.float32(mldata._MIN_STD))


def resized_rgb(image, size: int) -> np.ndarray:
    """Path/bytes/PIL -> (size, size, 3) uint8 RGB, resized as in training; raises ml.ImageError."""
    rgb = mldata.load_image(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb)


def prepare(image, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (3, size, size) model input, image statistics for the domain check) from one decode."""
    array = resized_rgb(image, size)
    return normalise(array.transpose(2, 0, 1), mode), mldomain.image_statistics(array)

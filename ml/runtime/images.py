"""Reading images and the facts preprocessing needs, with numpy and Pillow only.

The lowest layer of ``ml``: serving (``ml.runtime``) and training (``ml.data``) both build on it. Imports
numpy and Pillow, never torch, timm, sklearn, Django or ``ml`` outside ``ml/runtime``.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# ImageNet statistics: the normalisation timm checkpoints expect, so a model can
# start from local pretrained weights without changing the preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An input that is not a readable image; the message says why."""


# --------------------------------------------------------------------------- images

def load_image(source) -> Image.Image:
    """Open a path, bytes or PIL image as an 8-bit RGB image, EXIF orientation applied.

    Raises ImageError with a readable reason for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            if isinstance(source, (bytes, bytearray)):
                image = Image.open(io.BytesIO(source))
            else:
                image = Image.open(source)
            image.load()  # decode now: truncated files fail here, not later
        except FileNotFoundError as exc:
            raise ImageError(f"file not found: {source}") from exc
        except IsADirectoryError as exc:
            raise ImageError(f"is a directory, not an image: {source}") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not a recognised image format") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"image could not be decoded ({exc})") from exc
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not reject a decodable image
        pass
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit and float rescaled to 0..255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # float32 and in place: float64 with a copy per step took about 1 GB at the 40-megapixel upload limit.
        array = np.asarray(image, dtype=np.float32).copy()
        lo, hi = float(array.min()), float(array.max())
        if hi > lo:
            array -= lo
            array /= hi - lo
            array *= 255.0
        else:
            array[...] = 0
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Input normalisations a model file can name ("input_norm"); files without the key use "imagenet".
#   imagenet: fixed ImageNet mean/std, the image's own colour passes through to the model.
#   image:    each image standardised per RGB channel by its own mean and standard deviation
#             (over its non-black pixels), so a stain, white-balance, brightness or contrast change
#             that scales or shifts a channel is removed before the model sees the image.
INPUT_NORMS = ("imagenet", "image")
_BLACK = 0.04  # of the range: segmented cells lie on a black background that must not set the statistics
_MIN_STD = 0.02  # of the range: a (nearly) blank image is not amplified into noise


# Framings a model file can name ("framing"); files without the key use "none".
#   none: the whole image is resized to the model's input.
#   cell: a segmented cell (on a black surround) is cut to a square around its non-black pixels,
#         a margin added, then resized. Every cell then fills the input alike, so the model cannot
#         judge by absolute cell size, a cue that differs between subjects (and labs' magnifications)
#         as much as between classes; shape, texture and nucleus-to-cytoplasm ratio are kept.
FRAMINGS = ("none", "cell")
_FRAME_MARGIN = 0.08  # of the cell's longer side, on each side
_FRAME_MIN_PIXELS = 2  # rows/columns with fewer non-black pixels are specks, not cell


def cell_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The square (left, top, right, bottom) around the image's non-black pixels with a margin, in the
    image's coordinates (it may reach past the edges, where it reads as black); None when there is no
    cell on a black surround to frame (under 1% non-black, or non-black up to all four edges, as in a
    smear field): such an image is used whole."""
    array = np.asarray(image)
    foreground = array.max(axis=2) > _BLACK * 255
    if foreground.sum() < 0.01 * foreground.size:
        return None
    rows = np.flatnonzero(foreground.sum(axis=1) >= _FRAME_MIN_PIXELS)
    cols = np.flatnonzero(foreground.sum(axis=0) >= _FRAME_MIN_PIXELS)
    if not len(rows) or not len(cols):
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (top, left, bottom, right) == (0, 0, *foreground.shape):
        return None
    side = int(round(max(bottom - top, right - left) * (1 + 2 * _FRAME_MARGIN)))
    x0 = (left + right - side) // 2
    y0 = (top + bottom - side) // 2
    return x0, y0, x0 + side, y0 + side


def fit_to_input(image: Image.Image, size: int, framing: str = "none") -> Image.Image:
    """RGB image -> (size, size) RGB model input image, framed by ``framing`` and resized bilinearly.
    The one geometric preprocessing, shared by training (``ml.data``) and serving (``ml.runtime``)."""
    if framing == "cell":
        box = cell_box(image)
        if box is not None:
            image = image.crop(box)  # outside the image reads as black, like the cell's surround
    elif framing != "none":
        raise ValueError(f"unknown framing {framing!r}: use one of {', '.join(FRAMINGS)}")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return image

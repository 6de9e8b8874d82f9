"""Acquisition changes: deterministic perturbations of a smear image, one table for the robustness suite.

Each ``Perturbation`` maps an 8-bit RGB PIL image (the acquired field, any size) to another; nothing is
random, so two runs score exactly the same images. ``mild`` marks the small changes that issue 11 names
(the target is accuracy >= 0.97 under each); the others show how fast accuracy falls beyond them.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from .stain import apply_hed


@dataclass(frozen=True)
class Perturbation:
    family: str
    name: str
    level: str  # the change in words, with its size
    mild: bool
    apply: Callable[[Image.Image], Image.Image]

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image)


def channel_gains(r: float, g: float, b: float):
    def apply(image: Image.Image) -> Image.Image:
        array = np.asarray(image, dtype=np.float32) * np.array([r, g, b], dtype=np.float32)
        return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))
    return apply


def hed(scale=(1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0)):
    def apply(image: Image.Image) -> Image.Image:
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return Image.fromarray(apply_hed(tensor, scale, shift).permute(1, 2, 0).numpy())
    return apply


def enhance(kind, factor: float):
    return lambda image: kind(image).enhance(factor)


def gaussian_blur(sigma: float):
    return lambda image: image.filter(ImageFilter.GaussianBlur(sigma))


def jpeg(quality: int):
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    return apply


def rescale(factor: float, back: bool = True):
    """Another camera resolution: resample by ``factor`` (and back to the original size when ``back``)."""
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        scaled = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)
        return scaled.resize((w, h), Image.BICUBIC) if back else scaled
    return apply


def centre_crop(fx: float, fy: float | None = None, anchor: str = "centre"):
    """Another framing: keep a fraction ``fx`` of the width and ``fy`` of the height (non-square when they differ)."""
    fy = fx if fy is None else fy

    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        cw, ch = max(1, round(w * fx)), max(1, round(h * fy))
        left, top = ((w - cw) // 2, (h - ch) // 2) if anchor == "centre" else (0, 0)
        return image.crop((left, top, left + cw, top + ch))
    return apply


def stretch(fx: float):
    """Non-square pixels: the field stretched ``fx`` times horizontally, then cut back to its frame."""
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        wide = image.resize((round(w * fx), h), Image.BICUBIC)
        left = (wide.width - w) // 2
        return wide.crop((left, 0, left + w, h))
    return apply


def rotate(degrees: float):
    """Rotation about the centre; corners uncovered by a non-right angle get the image's median colour."""
    def apply(image: Image.Image) -> Image.Image:
        if degrees % 90 == 0:
            return image.rotate(degrees)
        fill = tuple(int(v) for v in np.median(np.asarray(image).reshape(-1, 3), axis=0))
        return image.rotate(degrees, resample=Image.BICUBIC, fillcolor=fill)
    return apply


P = Perturbation
PERTURBATIONS: tuple[Perturbation, ...] = (
    P("illumination", "brighter", "brightness x1.15", True, enhance(ImageEnhance.Brightness, 1.15)),
    P("illumination", "darker", "brightness x0.85", True, enhance(ImageEnhance.Brightness, 0.85)),
    P("illumination", "much brighter", "brightness x1.3", False, enhance(ImageEnhance.Brightness, 1.3)),
    P("illumination", "much darker", "brightness x0.7", False, enhance(ImageEnhance.Brightness, 0.7)),
    P("stain", "bluer", "R x0.93, G x0.97, B x1.08", True, channel_gains(0.93, 0.97, 1.08)),
    P("stain", "pinker", "R x1.06, G x0.95, B x1.02", True, channel_gains(1.06, 0.95, 1.02)),
    P("stain", "much bluer", "R x0.86, G x0.94, B x1.16", False, channel_gains(0.86, 0.94, 1.16)),
    P("stain", "much pinker", "R x1.12, G x0.90, B x1.04", False, channel_gains(1.12, 0.90, 1.04)),
    P("stain", "yellower", "R x1.04, G x1.02, B x0.92", True, channel_gains(1.04, 1.02, 0.92)),
    P("stain (HED)", "more haematoxylin", "H x1.15", True, hed(scale=(1.15, 1.0, 1.0))),
    P("stain (HED)", "less haematoxylin", "H x0.85", True, hed(scale=(0.85, 1.0, 1.0))),
    P("stain (HED)", "more eosin", "E x1.15", True, hed(scale=(1.0, 1.15, 1.0))),
    P("stain (HED)", "less eosin", "E x0.85", True, hed(scale=(1.0, 0.85, 1.0))),
    P("stain (HED)", "haematoxylin background", "H +0.02", False, hed(shift=(0.02, 0.0, 0.0))),
    P("stain (HED)", "eosin background", "E +0.02", False, hed(shift=(0.0, 0.02, 0.0))),
    P("saturation", "paler", "saturation x0.7", True, enhance(ImageEnhance.Color, 0.7)),
    P("saturation", "more saturated", "saturation x1.3", True, enhance(ImageEnhance.Color, 1.3)),
    P("saturation", "much paler", "saturation x0.5", False, enhance(ImageEnhance.Color, 0.5)),
    P("contrast", "lower contrast", "contrast x0.8", True, enhance(ImageEnhance.Contrast, 0.8)),
    P("contrast", "higher contrast", "contrast x1.2", True, enhance(ImageEnhance.Contrast, 1.2)),
    P("focus", "slightly out of focus", "Gaussian blur sigma 1 px", True, gaussian_blur(1.0)),
    P("focus", "out of focus", "Gaussian blur sigma 2 px", False, gaussian_blur(2.0)),
    P("JPEG", "JPEG q40", "re-encoded at quality 40", True, jpeg(40)),
    P("JPEG", "JPEG q20", "re-encoded at quality 20", False, jpeg(20)),
    P("resolution", "half resolution", "down x0.5 and back up (bicubic)", True, rescale(0.5)),
    P("resolution", "higher resolution", "up x2 (the model resizes it)", True, rescale(2.0, back=False)),
    P("resolution", "third resolution", "down x1/3 and back up", False, rescale(1 / 3)),
    P("aspect", "4:3 frame", "centre crop, full width x 75% height", True, centre_crop(1.0, 0.75)),
    P("aspect", "3:4 frame", "centre crop, 75% width x full height", True, centre_crop(0.75, 1.0)),
    P("aspect", "stretched", "horizontal stretch x1.2, cut to the frame", True, stretch(1.2)),
    P("rotation", "rotated 90°", "90 degrees", True, rotate(90)),
    P("rotation", "rotated 180°", "180 degrees", True, rotate(180)),
    P("rotation", "rotated 15°", "15 degrees, corners filled", True, rotate(15)),
    P("rotation", "rotated 45°", "45 degrees, corners filled", False, rotate(45)),
    P("framing", "centre crop 90%", "centre 90% of each side", True, centre_crop(0.9)),
    P("framing", "centre crop 75%", "centre 75% of each side", True, centre_crop(0.75)),
    P("framing", "centre crop 60%", "centre 60% of each side", False, centre_crop(0.6)),
    P("framing", "corner crop 75%", "top-left 75% of each side", False, centre_crop(0.75, anchor="corner")),
)
del P

FAMILIES = tuple(dict.fromkeys(p.family for p in PERTURBATIONS))


def select(which: str = "all") -> list[Perturbation]:
    """``all``, ``mild``, or a comma-separated list of families or perturbation names."""
    if which == "all":
        return list(PERTURBATIONS)
    if which == "mild":
        return [p for p in PERTURBATIONS if p.mild]
    wanted = {w.strip() for w in which.split(",") if w.strip()}
    chosen = [p for p in PERTURBATIONS if p.family in wanted or p.name in wanted]
    unknown = wanted - {p.family for p in chosen} - {p.name for p in chosen}
    if unknown:
        raise ValueError(f"unknown perturbations {sorted(unknown)}; families: {', '.join(FAMILIES)}")
    return chosen

"""Stain colour: colour deconvolution into haematoxylin/eosin/DAB (HED) space and stain augmentation.

Colour deconvolution (Ruifrok & Johnston 2001) with the matrix and log scaling of scikit-image's
``rgb2hed``/``hed2rgb``: optical density ``log(rgb) / log(1e-6)`` (rgb in [0, 1]) is the stain
amounts times ``RGB_FROM_HED``. Unlike ``rgb2hed`` the stain amounts are not clipped at zero, so
``hed_to_rgb(rgb_to_hed(x)) == x``: a jitter of (1, 0) leaves the image unchanged.

Written in torch (uint8 image tensors in, uint8 out) so the training pipeline and the robustness
perturbations share one implementation. Owns nothing else; imports only numpy and torch.
"""
from __future__ import annotations

import numpy as np
import torch

# Rows: the RGB optical-density vectors of haematoxylin, eosin and DAB (skimage.color.rgb_from_hed).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = float(np.log(1e-6))


def rgb_to_hed(rgb: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Float RGB in [0, 1], shape (..., 3, H, W) -> stain amounts (..., 3, H, W) in channel order H, E, D."""
    od = torch.log(rgb.to(dtype).clamp_min(1e-6)) / _LOG_ADJUST
    return torch.einsum("...chw,cs->...shw", od, torch.from_numpy(HED_FROM_RGB).to(dtype))


def hed_to_rgb(hed: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Stain amounts (..., 3, H, W) -> float RGB in [0, 1] (clipped), the inverse of ``rgb_to_hed``."""
    od = torch.einsum("...shw,sc->...chw", hed.to(dtype), torch.from_numpy(RGB_FROM_HED).to(dtype))
    return torch.exp(od * _LOG_ADJUST).clamp(0.0, 1.0)


def apply_hed(image: torch.Tensor, scale, shift=(0.0, 0.0, 0.0), dtype=torch.float64) -> torch.Tensor:
    """uint8 image (3, H, W): each stain amount becomes ``amount * scale + shift`` (per stain H, E, D).

    The same per-channel map for every pixel: colour changes, geometry cannot."""
    scale = torch.as_tensor(scale, dtype=dtype).view(3, 1, 1)
    shift = torch.as_tensor(shift, dtype=dtype).view(3, 1, 1)
    hed = rgb_to_hed(image.to(dtype) / 255.0, dtype)
    rgb = hed_to_rgb(hed * scale + shift, dtype)
    return (rgb * 255.0).round().to(torch.uint8)


class HedJitter(torch.nn.Module):
    """Random HED stain jitter (Tellez et al. 2018): per image, stain amounts of H and E are scaled by
    U(1 - s, 1 + s) and shifted by U(-s, s); DAB is left alone. Draws from torch's global generator
    (or ``generator``), so a seeded run is repeatable."""

    def __init__(self, strength: float = 0.05, generator: torch.Generator | None = None):
        super().__init__()
        self.strength = float(strength)
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s = self.strength
        draws = torch.rand(4, generator=self.generator, dtype=torch.float64) * 2 - 1  # U(-1, 1)
        scale = (1 + s * draws[0], 1 + s * draws[1], 1.0)
        shift = (s * draws[2], s * draws[3], 0.0)
        # float32: twice as fast as the float64 of the exact round trip, and invisible after rounding to uint8
        return apply_hed(image, scale, shift, dtype=torch.float32)


class Illumination(torch.nn.Module):
    """Random illumination change: brightness x U(1 - s, 1 + s) and gamma in U(1 - s, 1 + s)."""

    def __init__(self, strength: float = 0.2, generator: torch.Generator | None = None):
        super().__init__()
        self.strength = float(strength)
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        draws = torch.rand(2, generator=self.generator, dtype=torch.float64) * 2 - 1
        brightness, gamma = 1 + self.strength * float(draws[0]), 1 + self.strength * float(draws[1])
        x = (image.float() / 255.0).pow(gamma) * brightness
        return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


class ChannelGains(torch.nn.Module):
    """Camera white balance and stain hue: each of R, G, B multiplied by its own U(1 - s, 1 + s)."""

    def __init__(self, strength: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.strength = float(strength)
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gains = 1 + self.strength * (torch.rand(3, generator=self.generator, dtype=torch.float64) * 2 - 1)
        return (image.float() * gains.float().view(3, 1, 1)).clamp(0, 255).round().to(torch.uint8)


class RandomBlur(torch.nn.Module):
    """Focus blur: with probability ``p`` a Gaussian blur of sigma U(0.1, max_sigma) pixels."""

    def __init__(self, p: float = 0.3, max_sigma: float = 1.5, generator: torch.Generator | None = None):
        super().__init__()
        self.p, self.max_sigma = float(p), float(max_sigma)
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        draws = torch.rand(2, generator=self.generator, dtype=torch.float64)
        if float(draws[0]) >= self.p:
            return image
        sigma = 0.1 + float(draws[1]) * max(self.max_sigma - 0.1, 0.0)
        kernel = 2 * int(np.ceil(3 * sigma)) + 1
        return F.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def acquisition_augmentation(stain: str = "none", stain_strength: float = 0.05, illumination: float = 0.0,
                             blur_prob: float = 0.0, blur_sigma: float = 1.5,
                             rgb_gain: float = 0.0) -> list[torch.nn.Module]:
    """The stain/illumination/blur steps selected by the training options (empty when all are off)."""
    steps: list[torch.nn.Module] = []
    if stain == "hed":
        if stain_strength > 0:
            steps.append(HedJitter(stain_strength))
    elif stain != "none":
        raise ValueError(f"unknown stain augmentation {stain!r}: use hed or none")
    if rgb_gain > 0:
        steps.append(ChannelGains(rgb_gain))
    if illumination > 0:
        steps.append(Illumination(illumination))
    if blur_prob > 0:
        steps.append(RandomBlur(blur_prob, blur_sigma))
    return steps

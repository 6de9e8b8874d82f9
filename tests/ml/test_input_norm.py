"""Per-image channel standardisation: the stain-invariant input normalisation, identical in training and prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ml import data as mldata
from ml.predict import Predictor


def mid_range_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(60, 180, (3, size, size), dtype=np.uint8))


def test_a_gain_and_offset_per_channel_leaves_the_model_input_unchanged():
    image = mid_range_image()
    gains, offsets = torch.tensor([0.93, 0.97, 1.08]).view(3, 1, 1), torch.tensor([10.0, -5.0, 0.0]).view(3, 1, 1)
    shifted = (image.float() * gains + offsets).round().clamp(0, 255).to(torch.uint8)  # a bluer stain, a brighter lamp
    before, after = mldata.normalise(image, "image"), mldata.normalise(shifted, "image")
    assert torch.allclose(before, after, atol=0.03)  # only rounding to 8 bits differs
    # With the fixed ImageNet normalisation the same change reaches the model.
    assert (mldata.normalise(image) - mldata.normalise(shifted)).abs().mean() > 0.1


def test_each_image_comes_out_with_zero_mean_and_unit_spread_per_channel():
    out = mldata.normalise(torch.stack([mid_range_image(1), mid_range_image(2)]), "image")
    assert torch.allclose(out.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(out.std(dim=(-2, -1), unbiased=False), torch.ones(2, 3), atol=1e-4)


def test_a_black_surround_does_not_set_the_statistics_of_a_segmented_cell():
    cell = mid_range_image(3, 16)
    small = torch.zeros(3, 24, 24, dtype=torch.uint8)
    large = torch.zeros(3, 48, 48, dtype=torch.uint8)
    small[:, 4:20, 4:20] = cell
    large[:, 16:32, 16:32] = cell
    a, b = mldata.normalise(small, "image")[:, 4:20, 4:20], mldata.normalise(large, "image")[:, 16:32, 16:32]
    assert torch.allclose(a, b, atol=1e-5)


def test_a_blank_image_is_not_amplified_into_noise():
    flat = torch.full((3, 16, 16), 200, dtype=torch.uint8)
    flat[0, 0, 0] = 201
    assert mldata.normalise(flat, "image").abs().max() < 1.0


def test_an_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="unknown input normalisation"):
        mldata.normalise(mid_range_image(), "lab")


def test_framing_and_jpeg_augmentations_are_repeatable_under_a_seed():
    augment = mldata.training_augmentation(32, 1.0, crop_prob=1.0, crop_scale=0.5, jpeg_prob=1.0)
    image = mid_range_image(4)
    torch.manual_seed(5)
    first = augment(image)
    torch.manual_seed(5)
    assert torch.equal(first, augment(image)) and first.shape == image.shape and first.dtype == torch.uint8
    torch.manual_seed(6)
    assert not torch.equal(first, augment(image))


def checkerboard(size: int = 32) -> torch.Tensor:
    """Finest detail there is: a one-pixel checkerboard in grey."""
    board = (np.indices((size, size)).sum(axis=0) % 2 * 120 + 60).astype(np.uint8)
    return torch.from_numpy(np.stack([board] * 3))


def test_the_lower_resolution_augmentation_removes_fine_detail_and_keeps_the_frame():
    image = checkerboard()
    always = mldata.RandomDownscale(p=1.0, low=0.3)
    torch.manual_seed(0)
    lower = always(image)
    assert lower.shape == image.shape and lower.dtype == torch.uint8
    assert lower.float().std() < 0.5 * image.float().std()  # a camera of lower resolution cannot resolve the checks
    assert torch.equal(mldata.RandomDownscale(p=0.0)(image), image)


def test_a_median_filled_rotation_leaves_no_black_corners():
    image = torch.full((3, 32, 32), 180, dtype=torch.uint8)
    image[:, 12:20, 12:20] = 40  # a dark cell on a pale background
    torch.manual_seed(1)
    rotated = mldata.MedianFillAffine(degrees=15, translate=(0.06, 0.06), scale=(1.0, 1.0))(image)
    assert rotated.shape == image.shape and int(rotated.min()) >= 40
    assert int(rotated[:, 0, 0].min()) == 180 and int(rotated[:, -1, -1].min()) == 180  # corners: the background
    torch.manual_seed(1)
    black = mldata.training_augmentation(32, 1.0)  # the older recipe fills with black, kept for its runs
    assert any(int(black(image).min()) == 0 for _ in range(20))


def test_resolution_and_median_fill_augmentations_are_repeatable_under_a_seed():
    augment = mldata.training_augmentation(32, 1.0, downscale_prob=1.0, affine_fill="median")
    image = mid_range_image(7)
    torch.manual_seed(3)
    first = augment(image)
    torch.manual_seed(3)
    assert torch.equal(first, augment(image))
    with pytest.raises(ValueError, match="unknown affine fill"):
        mldata.training_augmentation(32, 1.0, affine_fill="mirror")


def test_scale_jitter_widens_the_range_of_cell_sizes_seen_in_training():
    cell = torch.zeros((3, 64, 64), dtype=torch.uint8)
    cell[:, 22:42, 22:42] = 200  # a bright cell on the black background of a segmented C-NMC image

    def areas(augment) -> list[int]:
        torch.manual_seed(0)
        return [int((augment(cell)[0] > 100).sum()) for _ in range(200)]

    default = areas(mldata.training_augmentation(64, 1.0))
    wide = areas(mldata.training_augmentation(64, 1.0, scale_jitter=0.3))
    assert min(wide) < 0.75 * min(default) and max(wide) > max(default)  # x0.7..1.3 against x0.92..1.12


def test_the_model_file_names_its_normalisation_and_the_predictor_applies_it(image_norm_model, smear_folder):
    predictor = Predictor(image_norm_model)
    assert predictor.input_norm == "image" and predictor.payload["input_norm"] == "image"
    path = sorted(smear_folder.glob("*/*"))[0]
    resized = mldata.load_image(path).resize((48, 48), Image.BILINEAR)
    training_view = mldata.normalise(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1), "image")
    assert torch.equal(predictor.preprocess(path), training_view)  # the training dataset's own transform


def test_files_without_the_key_keep_the_imagenet_normalisation(tiny_model_file):
    assert Predictor(tiny_model_file).input_norm == "imagenet"

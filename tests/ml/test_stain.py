"""Stain augmentation: HED colour deconvolution, jitter that changes colour but not geometry, repeatable
under a seed, and selectable from the training options (training images only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ml import data as mldata
from ml.cli import main
from ml.stain import RGB_FROM_HED, HedJitter, Illumination, RandomBlur, acquisition_augmentation, apply_hed, hed_to_rgb, rgb_to_hed

from .conftest import draw_smear


def smear_tensor(seed: int = 1, size: int = 48) -> torch.Tensor:
    return torch.from_numpy(np.asarray(draw_smear("Pre", seed, size)).copy()).permute(2, 0, 1)


def test_hed_round_trip_returns_the_image():
    image = smear_tensor()
    rgb = image.double() / 255.0
    assert torch.allclose(hed_to_rgb(rgb_to_hed(rgb)), rgb.clamp_min(1e-6), atol=1e-9)
    assert torch.equal(apply_hed(image, (1.0, 1.0, 1.0)), image)


def test_a_pure_stain_colour_deconvolves_to_that_stain_alone():
    # A pixel whose optical density lies along haematoxylin's vector (Ruifrok-Johnston, as in skimage) is H only.
    od = 0.2 * torch.from_numpy(RGB_FROM_HED[0])
    rgb = torch.exp(-od * -np.log(1e-6)).view(3, 1, 1)
    assert rgb_to_hed(rgb).flatten().tolist() == pytest.approx([0.2, 0.0, 0.0], abs=1e-9)
    eosin = hed_to_rgb(torch.tensor([0.0, 0.2, 0.0]).view(3, 1, 1)).flatten()
    assert eosin[0] > eosin[2] > eosin[1]  # eosin is pink: red through, green absorbed most


def test_hed_jitter_is_repeatable_under_a_seed_and_differs_between_seeds():
    image = smear_tensor()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(HedJitter(0.05)(image))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(HedJitter(0.05, generator)(image), HedJitter(0.05, torch.Generator().manual_seed(3))(image))


def test_hed_jitter_changes_colour_but_not_geometry():
    image = smear_tensor(size=64)
    torch.manual_seed(0)
    jittered = HedJitter(0.1)(image)
    assert jittered.shape == image.shape and jittered.dtype == torch.uint8
    assert (jittered.int() - image.int()).abs().float().mean() > 1.0  # the colour did change
    # Every pixel of one colour maps to one new colour: the regions (cells, background) keep their outline.
    before = np.unique(image.permute(1, 2, 0).reshape(-1, 3).numpy(), axis=0, return_inverse=True)[1]
    after = np.unique(jittered.permute(1, 2, 0).reshape(-1, 3).numpy(), axis=0, return_inverse=True)[1]
    pairs = set(zip(before.ravel().tolist(), after.ravel().tolist()))
    assert len(pairs) == len(set(before.ravel().tolist())), "one colour was split: geometry changed"


def test_illumination_and_blur_keep_the_shape_and_are_seeded():
    image = smear_tensor()
    torch.manual_seed(5)
    a = RandomBlur(p=1.0, max_sigma=2.0)(Illumination(0.3)(image))
    torch.manual_seed(5)
    b = RandomBlur(p=1.0, max_sigma=2.0)(Illumination(0.3)(image))
    assert torch.equal(a, b) and a.shape == image.shape and a.dtype == torch.uint8
    assert torch.equal(RandomBlur(p=0.0)(image), image)


def test_acquisition_steps_follow_the_options():
    assert acquisition_augmentation() == []
    steps = acquisition_augmentation("hed", 0.05, illumination=0.2, blur_prob=0.3)
    assert [type(s) for s in steps] == [HedJitter, Illumination, RandomBlur]
    with pytest.raises(ValueError, match="unknown stain augmentation"):
        acquisition_augmentation("randstain")
    assert mldata.training_augmentation(48, strength=0.0) is None
    only_stain = mldata.training_augmentation(48, strength=0.0, stain="hed")
    torch.manual_seed(0)
    assert only_stain(smear_tensor()).shape == (3, 48, 48)


def test_stain_augmentation_reaches_the_training_images_only(tmp_path, smear_folder):
    from ml.train import TrainConfig, train

    config = TrainConfig(data=str(smear_folder), arch="mobilenetv3_lstm", out=str(tmp_path / "run"), epochs=0,
                         batch_size=16, img_size=48, block_size=4, progress=False, limit_per_class=4,
                         stain_augment="hed", stain_strength=0.05, blur_prob=0.5, illumination=0.2)
    seen = []
    original = mldata.ImageTensorDataset.__init__

    def spy(self, root, samples, classes, size, augment=None, progress=False, **options):
        seen.append((samples[0].split, augment))
        original(self, root, samples, classes, size, augment, progress, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mldata.ImageTensorDataset, "__init__", spy)
        model = train(config)
    augment = dict(seen)
    assert augment["val"] is None
    assert any(isinstance(step, HedJitter) for step in augment["train"].transforms)
    from ml.checkpoint import read_payload

    assert read_payload(model)["training"]["config"]["stain_augment"] == "hed"


def test_train_command_line_takes_the_stain_options(monkeypatch):
    captured = {}
    monkeypatch.setattr("ml.train.train", lambda config, resume=False: captured.setdefault("config", config) or "x")
    main(["train", "--data", "d", "--arch", "mobilenetv3_lstm", "--out", "o", "--stain-augment", "hed",
          "--stain-strength", "0.08", "--blur-prob", "0.3", "--illumination", "0.25"])
    config = captured["config"]
    assert (config.stain_augment, config.stain_strength, config.blur_prob, config.illumination) == ("hed", 0.08, 0.3, 0.25)

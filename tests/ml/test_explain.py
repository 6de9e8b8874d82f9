"""Heat maps: the greedy deletion map (shape, range, a planted signal found in its corner), the deletion test
that judges maps, single-window occlusion and Grad-CAM kept for comparison, overlays and the two commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ml.cli import main
from ml.explain import deletion_test, gradcam, heatmap, occlusion_map, overlay
from ml.predict import Predictor

from .conftest import draw_smear


class CornerModel(torch.nn.Module):
    """Looks only at the top-left quarter of the image: the more texture there, the surer it is of class 0."""

    def forward(self, x):
        side = x.shape[-1] // 4
        texture = x[:, :, :side, :side].std(dim=(1, 2, 3))
        zeros = torch.zeros_like(texture)
        return torch.stack([4 * texture - 2, zeros, zeros, zeros], dim=1)

    def forward_with_embedding(self, x):  # the registered models' interface (the embedding feeds the domain check)
        return self.forward(x), x.mean(dim=(2, 3))


def textured_image(size: int = 64, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(noise)


@pytest.fixture
def corner_predictor(tiny_model_file):
    predictor = Predictor(tiny_model_file)
    predictor.model = CornerModel()
    predictor.temperature = 1.0
    return predictor


@pytest.mark.parametrize("method", [heatmap, occlusion_map])
def test_heatmap_has_the_input_size_and_unit_range(tiny_model_file, method):
    predictor = Predictor(tiny_model_file)
    for image in (draw_smear("Pre", 3, 120), draw_smear("Early", 4, 150).convert("L")):
        heat = method(predictor, image)
        assert heat.shape == (predictor.input_size, predictor.input_size) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0


@pytest.mark.parametrize("method", [heatmap, occlusion_map])
def test_a_model_that_looks_at_one_corner_gets_a_map_hot_in_that_corner(corner_predictor, method):
    heat = method(corner_predictor, textured_image(), target="Benign")
    quarter = heat.shape[0] // 4
    corner = heat[:quarter, :quarter].mean()
    rest = np.concatenate([heat[quarter * 2:].ravel(), heat[:, quarter * 2:].ravel()]).mean()
    assert corner > 0.6 and rest < 0.05, (corner, rest)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert y < quarter and x < quarter


class TwoCornerModel(CornerModel):
    """Sure of class 0 while either top corner is textured: the same evidence twice, as several blasts in one field."""

    def forward(self, x):
        side = x.shape[-1] // 4
        texture = torch.maximum(x[:, :, :side, :side].std(dim=(1, 2, 3)), x[:, :, :side, -side:].std(dim=(1, 2, 3)))
        zeros = torch.zeros_like(texture)
        return torch.stack([4 * texture - 2, zeros, zeros, zeros], dim=1)


def test_the_greedy_map_finds_evidence_that_is_repeated_where_single_windows_cost_nothing(corner_predictor):
    corner_predictor.model = TwoCornerModel()
    image = textured_image()
    greedy = heatmap(corner_predictor, image, target="Benign")
    quarter = image.width // 4
    left, right = greedy[:quarter, :quarter].mean(), greedy[:quarter, -quarter:].mean()
    middle = greedy[quarter * 2:].mean()
    assert min(left, right) > 0.5 > 0.05 > middle, (left, right, middle)  # both copies of the evidence are hot
    images = [textured_image(seed=s) for s in range(2)]
    joint, single = deletion_test(corner_predictor, images), deletion_test(corner_predictor, images, occlusion_map)
    assert joint["passes"] and joint["hottest_drop"] >= 0.2
    # Blurring either corner alone costs almost nothing, so single windows cannot tell the corners from the rest.
    assert not single["passes"] and single["hottest_drop"] < joint["hottest_drop"] / 2, (single, joint)


def test_deletion_test_finds_the_corner_map_faithful_and_a_reversed_map_not(corner_predictor):
    images = [textured_image(seed=s) for s in range(3)]
    faithful = deletion_test(corner_predictor, images)
    assert faithful["n"] == 3 and faithful["passes"]
    assert faithful["hottest_drop"] >= 0.2 and faithful["hottest_drop"] >= 3 * faithful["coldest_drop"]
    assert faithful["hottest_log_odds_drop"] > 0.5 > abs(faithful["coldest_log_odds_drop"])
    assert faithful["seconds_per_map"] > 0 and len(faithful["hottest_drops"]) == 3

    def reversed_map(predictor, image, target):
        return 1.0 - heatmap(predictor, image, target)

    misleading = deletion_test(corner_predictor, images, method=reversed_map)
    assert not misleading["passes"] and misleading["coldest_drop"] > misleading["hottest_drop"]


def test_gradcam_is_kept_for_comparison_and_leaves_the_predictor_usable(tiny_model_file):
    predictor = Predictor(tiny_model_file)
    image = draw_smear("Pro", 5, 120)
    before = predictor.predict_proba([image])
    heat, explained = gradcam(predictor, image, target="Benign")
    assert explained == "Benign" and heat.shape == (64, 64) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert np.allclose(before, predictor.predict_proba([image]))


def test_overlay_has_the_original_size():
    image = draw_smear("Early", 4, 150).convert("L")
    blended = overlay(image, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert blended.size == (150, 150) and blended.mode == "RGB"


def test_explain_command_writes_an_overlay_png(tiny_model_file, tmp_path, capsys):
    source = tmp_path / "smear.png"
    draw_smear("Pre", 7, 90).save(source)
    out = tmp_path / "maps" / "smear-heat.png"
    assert main(["explain", str(source), "--out", str(out), "--model", str(tiny_model_file)]) == 0
    assert Image.open(out).size == (90, 90)
    assert "greedy map of" in capsys.readouterr().out
    assert main(["explain", str(source), "--out", str(out), "--model", str(tiny_model_file), "--target", "Nope"]) == 2
    assert "unknown class 'Nope'" in capsys.readouterr().err
    (tmp_path / "not-an-image.png").write_bytes(b"GIF89a but not really")
    assert main(["explain", str(tmp_path / "not-an-image.png"), "--out", str(out), "--model", str(tiny_model_file)]) == 2


def test_explain_eval_command_reports_every_method(tiny_model_file, smear_folder, tmp_path, capsys):
    assert main(["explain-eval", "--data", str(smear_folder), "--model", str(tiny_model_file), "--limit", "2",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "explain.json").read_text())
    assert set(report["methods"]) == {"greedy", "occlusion", "gradcam"} and report["n"] == 2
    printed = capsys.readouterr().out
    assert "greedy: blurring the hottest 20% costs the predicted class" in printed and "s per map" in printed


@pytest.mark.parametrize("where", ["image", "tokens", "tokens-updown"])
def test_heat_maps_of_a_flip_averaged_model_have_the_input_shape(tiny_model_file, tmp_path, where):
    from ml.checkpoint import with_test_time_flips

    predictor = Predictor(with_test_time_flips(tiny_model_file, tmp_path / "flip2.pt", where=where))
    image = textured_image()
    for method in (heatmap, gradcam):
        result = method(predictor, image)
        m = result[0] if isinstance(result, tuple) else result
        assert m.shape == (predictor.input_size, predictor.input_size) and 0 <= m.min() and m.max() <= 1


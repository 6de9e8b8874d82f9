"""Model files stored small: int8 weights with one scale per output channel, read back in float32, and an ONNX
export that keeps them int8."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ml.checkpoint import float_state_dict, load_model, read_payload, store_int8
from ml.predict import Predictor

from .conftest import draw_smear


def test_int8_storage_shrinks_the_file_and_keeps_the_answers(tiny_model_file, tmp_path):
    small = tmp_path / "tiny-int8.pt"
    shutil.copyfile(tiny_model_file, small)
    store_int8(small)
    payload = read_payload(small)
    assert payload["weights_dtype"] == "int8" and payload["weight_scales"]
    quantized = [k for k, v in payload["state_dict"].items() if v.dtype == torch.int8]
    assert set(quantized) == set(payload["weight_scales"])
    # Depthwise filters and small tensors stay float16: they weigh little and round worst.
    assert all(v.shape[1] > 1 for k, v in payload["state_dict"].items() if k in quantized)
    assert small.stat().st_size < 0.5 * tiny_model_file.stat().st_size
    before, after = float_state_dict(read_payload(tiny_model_file)), float_state_dict(payload)
    for key in quantized:  # each value within half a step of its channel's scale
        step = payload["weight_scales"][key].view(-1, *([1] * (before[key].dim() - 1)))
        assert torch.all((before[key] - after[key]).abs() <= step / 2 + 1e-6)
    images = [draw_smear(label, seed, 96) for seed, label in enumerate(["Benign", "Early", "Pre", "Pro"])]
    reference, stored = Predictor(tiny_model_file).predict_proba(images), Predictor(small).predict_proba(images)
    assert np.abs(reference - stored).max() < 0.05
    model, _ = load_model(small)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # computed in float32


def test_the_export_of_an_int8_file_keeps_int8_weights_and_matches_pytorch(tiny_model_file, smear_folder, tmp_path):
    import onnx

    from ml.onnx_export import export

    small = tmp_path / "tiny.pt"
    shutil.copyfile(tiny_model_file, small)
    store_int8(small)
    report = export(small, data=smear_folder, report=tmp_path / "export.json")
    assert report["passes"] and report["weights"].startswith("int8")
    graph = onnx.load(str(small.with_suffix(".onnx"))).graph
    dequantize = [node for node in graph.node if node.op_type == "DequantizeLinear"]
    initializers = {t.name: t for t in graph.initializer}
    assert dequantize and all(initializers[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dequantize)
    # The scales stay float32: a float16 scale would move every weight of its channel.
    assert all(initializers[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in dequantize)
    assert report["parity"]["max_abs_logit_diff"] < 1e-4


def test_a_flip_averaged_model_predicts_the_mean_of_the_image_and_its_mirror(tiny_model_file, tmp_path):
    from ml.checkpoint import with_test_time_flips
    from ml.models import FlipAveraged

    flipped_file = with_test_time_flips(tiny_model_file, tmp_path / "flip2.pt")
    plain, _ = load_model(tiny_model_file)
    averaged, payload = load_model(flipped_file)
    assert isinstance(averaged, FlipAveraged) and payload["model_version"].endswith("-flip2")
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        expected = (plain(x) + plain(torch.flip(x, dims=[3]))) / 2
        assert torch.allclose(averaged(x), expected, atol=1e-5)
        # The mirror image of a field gets the same answer as the field itself.
        assert torch.allclose(averaged(torch.flip(x, dims=[3])), averaged(x), atol=1e-5)
        logits, embedding = averaged.forward_with_embedding(x)
        assert embedding.shape == plain.forward_with_embedding(x)[1].shape


def test_the_tta_command_writes_the_flip_averaged_copy_and_says_what_to_fit_next(tiny_model_file, tmp_path, capsys):
    from ml.cli import main

    assert main(["tta", str(tiny_model_file), "--out", str(tmp_path / "flip2.pt")]) == 0
    assert read_payload(tmp_path / "flip2.pt")["test_time_flips"] is True
    assert "calibrate and fit-domain" in capsys.readouterr().out


def test_the_card_says_the_model_averages_over_mirror_images(tiny_model_file, tmp_path):
    from ml.card import flip_averaging_lines
    from ml.checkpoint import with_test_time_flips

    assert flip_averaging_lines(read_payload(tiny_model_file)) == []
    [line] = flip_averaging_lines(read_payload(with_test_time_flips(tiny_model_file, tmp_path / "flip2.pt")))
    assert "mirror image" in line and read_payload(tiny_model_file)["model_version"] in line


def test_the_flip_averaged_copy_keeps_the_weights_and_drops_what_was_fitted_on_the_plain_model(tiny_model_file,
                                                                                                tmp_path):
    import pytest

    from ml.checkpoint import update_payload, with_test_time_flips

    source = tmp_path / "plain.pt"
    shutil.copyfile(tiny_model_file, source)
    update_payload(source, domain={"format": "stale"}, calibration={"temperature": 0.5})
    copy = read_payload(with_test_time_flips(source, tmp_path / "flip2.pt"))
    original = read_payload(source)
    assert "domain" not in copy and "calibration" not in copy
    assert copy["test_time_from"]["model_version"] == original["model_version"]
    assert all(torch.equal(copy["state_dict"][k], v) for k, v in original["state_dict"].items())
    with pytest.raises(ValueError, match="already"):
        with_test_time_flips(tmp_path / "flip2.pt", tmp_path / "flip4.pt")


def test_the_export_of_a_flip_averaged_model_matches_pytorch(tiny_model_file, smear_folder, tmp_path):
    from ml.checkpoint import with_test_time_flips
    from ml.onnx_export import export

    flipped = with_test_time_flips(tiny_model_file, tmp_path / "flip2.pt")
    report = export(flipped, data=smear_folder, report=tmp_path / "export.json")
    assert report["passes"] and report["parity"]["max_abs_logit_diff"] < 1e-4


@pytest.mark.parametrize("where, suffix, dims", [("tokens", "-tokenflip2", [3]), ("tokens-updown", "-tokenflipud2", [2])])
def test_a_token_flip_model_averages_the_head_over_the_feature_map_and_its_mirror(tiny_model_file, tmp_path, where,
                                                                                 suffix, dims):
    from ml.checkpoint import with_test_time_flips
    from ml.models import TokenFlipAveraged, unwrapped

    copy = with_test_time_flips(tiny_model_file, tmp_path / "tokenflip2.pt", where=where)
    plain, _ = load_model(tiny_model_file)
    averaged, payload = load_model(copy)
    assert isinstance(averaged, TokenFlipAveraged) and payload["model_version"].endswith(suffix)
    assert payload["token_flips"] is True and not payload.get("test_time_flips")
    assert unwrapped(averaged) is averaged.inner
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        fmap = plain.features(x)
        head = [plain.classifier(plain.sequence(plain.project(g.flatten(2).transpose(1, 2))))
                for g in (fmap, torch.flip(fmap, dims=dims))]
        assert torch.allclose(averaged(x), (head[0] + head[1]) / 2, atol=1e-5)
        logits, embedding = averaged.forward_with_embedding(x)
        assert embedding.shape == plain.forward_with_embedding(x)[1].shape


def test_the_tta_command_makes_a_token_flip_copy_and_refuses_a_second_flip(tiny_model_file, tmp_path, capsys):
    import pytest

    from ml.checkpoint import with_test_time_flips
    from ml.cli import main

    assert main(["tta", str(tiny_model_file), "--out", str(tmp_path / "t.pt"), "--where", "tokens"]) == 0
    assert "token grid" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already"):
        with_test_time_flips(tmp_path / "t.pt", tmp_path / "t2.pt", where="image")


@pytest.mark.parametrize("where, axis", [("tokens", "left-right"), ("tokens-updown", "up-down")])
def test_the_card_says_the_head_averages_over_the_mirrored_token_grid(tiny_model_file, tmp_path, where, axis):
    from ml.card import flip_averaging_lines
    from ml.checkpoint import with_test_time_flips

    [line] = flip_averaging_lines(read_payload(with_test_time_flips(tiny_model_file, tmp_path / "t.pt", where=where)))
    assert "token grid" in line and "only the head runs twice" in line
    assert f"{axis} mirror" in line and f"--where {where}`" in line


@pytest.mark.parametrize("where", ["tokens", "tokens-updown"])
def test_the_export_of_a_token_flip_model_matches_pytorch(tiny_model_file, smear_folder, tmp_path, where):
    from ml.checkpoint import with_test_time_flips
    from ml.onnx_export import export

    copy = with_test_time_flips(tiny_model_file, tmp_path / "tokenflip2.pt", where=where)
    report = export(copy, data=smear_folder, report=tmp_path / "export.json")
    assert report["passes"] and report["parity"]["max_abs_logit_diff"] < 1e-4

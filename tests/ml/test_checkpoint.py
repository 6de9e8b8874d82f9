"""Model files stored small: int8 weights with one scale per output channel, read back in float32, and an ONNX
export that keeps them int8."""
from __future__ import annotations

import shutil

import numpy as np
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

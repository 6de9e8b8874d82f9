"""Serving on ONNX Runtime: numpy preprocessing equal to training's, the export's runtime files, the
runtime chosen for a model file, and results equal to PyTorch's (a tiny model here; the shipped models
on real images in test_runtime_shipped.py)."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from ml import data as mldata
from ml.checkpoint import update_payload
from ml.predict import Predictor
from ml.runtime import preprocess
from ml.runtime.export_files import ExportFiles, StaleExport, check, read_runtime_files, write_runtime_files
from ml import load_predictor
from ml.runtime.loader import choose_runtime

from .conftest import draw_smear

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


@pytest.mark.parametrize("mode", ["imagenet", "image"])
def test_numpy_preprocessing_equals_the_training_normalisation(mode):
    rng = np.random.default_rng(0)
    field = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    cell_on_black = np.zeros((3, 40, 50), dtype=np.uint8)
    cell_on_black[:, 10:25, 12:30] = rng.integers(60, 200, (3, 15, 18), dtype=np.uint8)
    for image in (field, cell_on_black, np.zeros_like(field)):  # the last: nearly no foreground at all
        expected = mldata.normalise(torch.from_numpy(image), mode).numpy()
        got = preprocess.normalise(image, mode)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_runtime_files_round_trip_the_payload_without_weights(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"model file")
    files = ExportFiles.beside(model)
    files.onnx.write_bytes(b"network")
    payload = {"classes": ["a", "b"], "temperature": 1.5, "threshold": None, "state_dict": {"w": np.ones(3)},
               "domain": {"features": {"basis": np.arange(6, dtype=np.float32).reshape(3, 2), "residual_variance":
                                       np.float32(0.25)}, "fit": {"stat_names": ["x", "y"]}, "cut": 0.1}}
    write_runtime_files(files, payload, {"opset": 20})
    read, record = read_runtime_files(files)
    assert "state_dict" not in read and record["opset"] == 20
    assert read["classes"] == ["a", "b"] and read["threshold"] is None and read["domain"]["cut"] == 0.1
    basis = read["domain"]["features"]["basis"]
    assert basis.dtype == np.float32 and np.array_equal(basis, payload["domain"]["features"]["basis"])
    assert read["domain"]["fit"] == {"stat_names": ["x", "y"]}


def test_an_export_of_another_model_file_is_refused(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"model file")
    files = ExportFiles.beside(model)
    files.onnx.write_bytes(b"network")
    write_runtime_files(files, {"classes": ["a"]}, {})
    check(files)
    model.write_bytes(b"retrained model file")
    with pytest.raises(StaleExport, match="exported from another m.pt"):
        check(files)
    files.arrays.unlink()
    with pytest.raises(StaleExport, match="m.runtime.npz missing"):
        check(files)


# --------------------------------------------------------------------------- a tiny exported model

@pytest.fixture(scope="module")
def exported(tiny_model_file, smear_folder, tmp_path_factory):
    """A copy of the tiny model file with its ONNX export (and parity report) beside it."""
    from ml.onnx_export import export

    model = tmp_path_factory.mktemp("exported") / "tiny.pt"
    shutil.copyfile(tiny_model_file, model)
    report = export(model, data=smear_folder, report=model.with_suffix(".export.json"))
    return model, report


def test_export_measures_parity_with_pytorch_on_the_test_split(exported):
    model, report = exported
    p = report["parity"]
    assert report["passes"] and report["images"] == "test split" and p["n"] > 0
    assert p["max_abs_logit_diff"] < 1e-4 and p["max_abs_embedding_diff"] < 1e-4
    assert p["labels_identical"] == p["n"] and p["in_domain_identical"] == p["n"]
    assert set(report["batch_sizes"]) == {"1", "5", "32"} and max(report["batch_sizes"].values()) < 1e-4
    assert ExportFiles.beside(model).present() and model.with_suffix(".export.json").is_file()


def test_onnx_predictor_gives_the_pytorch_results(exported, smear_folder):
    model, _ = exported
    onnx_predictor, torch_predictor = load_predictor(model), Predictor(model)
    assert onnx_predictor.runtime == "onnx"
    images = sorted((smear_folder / "Pre").glob("*.jpg"))[:3] + [draw_smear("Early", 7, 90).convert("RGBA")]
    for ours, theirs in zip(onnx_predictor.predict(images, batch_size=3), torch_predictor.predict(images)):
        assert ours.keys() == theirs.keys() and ours["stage"] == theirs["stage"]
        assert ours["in_domain"] == theirs["in_domain"] and ours["model_version"] == theirs["model_version"]
        for c in theirs["probabilities"]:
            assert ours["probabilities"][c] == pytest.approx(theirs["probabilities"][c], abs=1e-5)
    assert onnx_predictor.predict([]) == []


def test_a_batch_prepared_on_several_threads_gives_the_same_results_and_errors(exported, smear_folder, tmp_path):
    import ml
    from ml.runtime.onnx_predictor import OnnxPredictor

    model, _ = exported
    images = sorted((smear_folder / "Benign").glob("*.jpg"))[:6]
    serial, threaded = OnnxPredictor(model, threads=1), OnnxPredictor(model, threads=3)
    assert threaded.predict(images) == serial.predict(images)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ml.ImageError):
        threaded.predict(images[:2] + [bad] + images[2:])


def test_the_runtime_follows_the_export_and_the_setting(exported, monkeypatch):
    model, _ = exported
    assert choose_runtime(model, "auto") == "onnx"
    assert choose_runtime(model, "torch") == "torch"
    monkeypatch.setenv("ML_RUNTIME", "torch")
    assert load_predictor(model).runtime == "torch"
    monkeypatch.setenv("ML_RUNTIME", "gpu")
    with pytest.raises(ValueError, match="ML_RUNTIME='gpu'"):
        load_predictor(model)


def test_a_retrained_model_file_is_never_served_from_its_stale_export(exported, tmp_path, caplog):
    model, _ = exported
    copy = tmp_path / "tiny.pt"
    files, copied = ExportFiles.beside(model), ExportFiles.beside(copy)
    for source, target in zip((model, files.onnx, files.meta, files.arrays),
                              (copy, copied.onnx, copied.meta, copied.arrays)):
        shutil.copyfile(source, target)
    assert load_predictor(copy).runtime == "onnx"
    update_payload(copy, temperature=2.0)  # "retrained": the file's sha256 changes
    with caplog.at_level(logging.WARNING, logger="ml.runtime.loader"):
        served = load_predictor(copy)
    assert served.runtime == "torch" and served.temperature == 2.0
    assert "exported from another tiny.pt" in caplog.text
    with pytest.raises(StaleExport):
        choose_runtime(copy, "onnx")


def test_a_model_file_without_an_export_is_served_by_pytorch(tiny_model_file):
    assert choose_runtime(tiny_model_file, "auto") == "torch"
    with pytest.raises(StaleExport, match="no complete ONNX export"):
        choose_runtime(tiny_model_file, "onnx")


def test_heat_maps_and_overlays_run_on_the_onnx_predictor(exported, smear_folder):
    from ml.explain import gradcam, heatmap, overlay

    predictor = load_predictor(exported[0])
    image = sorted((smear_folder / "Pro").glob("*.jpg"))[0]
    heat = heatmap(predictor, image)
    assert heat.shape == (predictor.input_size,) * 2 and 0 <= heat.min() and heat.max() == pytest.approx(1.0)
    assert overlay(image, heat).size == mldata.load_image(image).size
    cam, explained = gradcam(predictor, image)  # Grad-CAM falls back to the same file on PyTorch
    assert cam.shape == heat.shape and explained in predictor.classes


def test_overlay_matches_the_grad_cam_package_colours_within_one_level():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from ml.explain import overlay

    rng = np.random.default_rng(0)
    image = mldata.Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    heat = rng.random((16, 16)).astype(np.float32)
    resized = np.asarray(mldata.Image.fromarray((heat * 255).astype(np.uint8)).resize((40, 30), mldata.Image.BILINEAR),
                         dtype=np.float32) / 255.0
    theirs = show_cam_on_image(np.asarray(image, dtype=np.float32) / 255.0, resized, use_rgb=True, image_weight=0.55)
    assert np.abs(np.asarray(overlay(image, heat)).astype(int) - theirs.astype(int)).max() <= 1


def test_bench_times_both_runtimes_and_writes_json(exported, tmp_path):
    from ml.cli import main
    from ml import serving_bench as bench

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(exported[0]), "--batches", "1", "4", "--runs", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    report = bench.json.loads(out.read_text())
    assert {(r["runtime"], r["batch"]) for r in report["rows"]} == {("torch", 1), ("torch", 4), ("onnx", 1), ("onnx", 4)}
    for row in report["rows"]:
        assert row["forward_ms"] > 0 and row["predict_ms"] > 0
        assert row["predict_over_forward"] == pytest.approx(row["predict_ms"] / row["forward_ms"])
    assert set(report["onnx_speedup"]) == {"1", "4"} and report["images"].startswith("test images")
    assert any("ONNX Runtime vs PyTorch at batch 4" in line for line in bench.table(report))


def test_export_without_a_model_or_a_run_is_a_clear_error(capsys):
    from ml.cli import main

    assert main(["export"]) == 2
    assert "give --model NAME" in capsys.readouterr().err

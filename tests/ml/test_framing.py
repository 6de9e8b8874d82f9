"""Cell framing: a segmented cell cut to its own square before resizing, identical in training and prediction."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ml import data as mldata
from ml.checkpoint import update_payload
from ml.explain import overlay
from ml.predict import Predictor
from ml.runtime import preprocess


def segmented_cell(radius: int, centre: tuple[int, int] = (225, 225), size: int = 450) -> Image.Image:
    """A C-NMC-like image: a purple disc (cell) with a darker nucleus on a black background."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    x, y = centre
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(170, 120, 200))
    draw.ellipse((x - radius // 2, y - radius // 2, x + radius // 3, y + radius // 3), fill=(90, 40, 130))
    return image


def test_a_small_and_a_large_cell_of_one_shape_reach_the_model_alike():
    small, large = segmented_cell(70), segmented_cell(110, centre=(240, 200))
    unframed = [np.asarray(mldata.fit_to_input(c, 64), dtype=float) for c in (small, large)]
    framed = [np.asarray(mldata.fit_to_input(c, 64, "cell"), dtype=float) for c in (small, large)]
    # Without framing the model sees the size difference; framed, the cell fills the input the same way.
    assert np.abs(unframed[0] - unframed[1]).mean() > 15
    assert np.abs(framed[0] - framed[1]).mean() < 4


def test_the_frame_is_a_square_around_the_cell_with_a_margin_and_ignores_specks():
    image = segmented_cell(100)
    pixels = image.load()
    pixels[5, 5] = (255, 255, 255)  # one stray bright pixel far from the cell
    left, top, right, bottom = mldata.cell_box(image)
    assert right - left == bottom - top  # square: the cell's aspect ratio is kept
    assert left < 125 and top < 125 and right > 325 and bottom > 325  # the whole cell, with a margin
    assert left > 100 and top > 100  # the speck did not stretch the frame


def test_a_cell_at_the_edge_is_framed_with_black_where_the_frame_passes_the_image():
    framed = mldata.fit_to_input(segmented_cell(80, centre=(60, 225)), 64, "cell")
    array = np.asarray(framed)
    assert framed.size == (64, 64) and array[32, 0].max() < 10 and array[32, 32].max() > 60


def test_an_image_without_a_black_surround_or_a_blank_one_is_used_whole():
    field = Image.new("RGB", (90, 60), (200, 180, 190))  # a smear field: nothing to frame
    blank = Image.new("RGB", (90, 60))
    for image in (field, blank):
        assert np.array_equal(np.asarray(mldata.fit_to_input(image, 32, "cell")),
                              np.asarray(image.resize((32, 32), Image.BILINEAR)))


def test_an_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="unknown framing"):
        mldata.fit_to_input(segmented_cell(50), 32, "zoom")


@pytest.fixture(scope="module")
def framed_model(tiny_model_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("framed") / "framed.pt"
    shutil.copy(tiny_model_file, path)
    update_payload(path, framing="cell")
    return path


def test_the_predictor_frames_as_the_training_dataset_does(framed_model, tmp_path):
    path = tmp_path / "cell.png"
    segmented_cell(90, centre=(200, 260)).save(path)
    predictor = Predictor(framed_model)
    assert predictor.framing == "cell"
    dataset = mldata.ImageTensorDataset(tmp_path.parent, [mldata.Sample(f"{tmp_path.name}/cell.png", "Benign", "")],
                                         ["Benign"], predictor.input_size, framing="cell")
    training_view = mldata.normalise(dataset.images[0], predictor.input_norm)
    assert torch.equal(predictor.preprocess(path), training_view)
    # The numpy runtime (ONNX serving) prepares the same input.
    runtime_view, _ = preprocess.prepare(path, predictor.input_size, predictor.input_norm, framing="cell")
    assert np.allclose(runtime_view, training_view.numpy(), atol=1e-6)
    assert predictor.prepare_array(path)[0].tobytes() == runtime_view.tobytes()


def test_files_without_the_key_are_not_framed(tiny_model_file):
    assert Predictor(tiny_model_file).framing == "none"


def test_a_heat_map_of_a_framed_cell_is_laid_back_over_the_cell():
    image = segmented_cell(60, centre=(120, 300))
    heat = np.ones((32, 32), dtype=np.float32)  # everything the model saw is hot
    framed, plain = (np.asarray(overlay(image, heat, framing=f), dtype=float) for f in ("cell", "none"))
    left, top, right, bottom = mldata.cell_box(image)
    inside = framed[top + 5:bottom - 5, left + 5:right - 5]
    outside = framed[:top - 5, :]
    # Over the cell the framed overlay is as hot as a full map; far from it the framed map is cold (blue).
    assert np.abs(inside - plain[top + 5:bottom - 5, left + 5:right - 5]).max() < 2
    assert outside[..., 0].max() < 5 and outside[..., 2].mean() > 50


def test_a_heat_map_and_its_deletion_test_frame_a_cell_once_not_again_for_every_blurred_copy(
        framed_model, monkeypatch):
    from ml import explain
    from ml.runtime import images as mlimages

    predictor = Predictor(framed_model)
    cell = segmented_cell(90, centre=(200, 260))
    framings = []
    real_cell_box = mlimages.cell_box
    monkeypatch.setattr(mlimages, "cell_box", lambda image: framings.append(image.size) or real_cell_box(image))
    heat = explain.heatmap(predictor, cell)
    assert heat.shape == (predictor.input_size,) * 2
    assert framings == [(450, 450)]  # the upload, once; the ~100 blurred copies are scored as they are
    framings.clear()
    explain.deletion_test(predictor, [cell], explain.occlusion_map)
    assert framings == [(450, 450)]
    # The map's intact copy is exactly what the predictor sees for the upload.
    framed, view = explain._model_input(predictor, cell)
    assert np.allclose(view.predict_logits([framed]), predictor.predict_logits([cell]), atol=1e-5)
    assert predictor.framing == "cell"  # the caller's predictor is left as it was

"""Grad-CAM: a heat map per image, at the model's input size, over the original image for display."""
from __future__ import annotations

import numpy as np

from ml.explain import gradcam, overlay
from ml.predict import Predictor

from .conftest import draw_smear


def test_gradcam_heatmap_has_the_input_shape_and_unit_range(tiny_model_file):
    predictor = Predictor(tiny_model_file)
    heatmap, explained = gradcam(predictor, draw_smear("Pre", 3, 120))
    assert heatmap.shape == (predictor.input_size, predictor.input_size)
    assert heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
    assert explained == predictor.predict([draw_smear("Pre", 3, 120)])[0]["stage"]


def test_gradcam_for_a_chosen_class_and_overlay_at_the_original_size(tiny_model_file):
    predictor = Predictor(tiny_model_file)
    image = draw_smear("Early", 4, 150).convert("L")
    heatmap, explained = gradcam(predictor, image, target="Benign")
    assert explained == "Benign"
    blended = overlay(image, heatmap)
    assert blended.size == (150, 150) and blended.mode == "RGB"


def test_gradcam_leaves_the_predictor_usable(tiny_model_file):
    predictor = Predictor(tiny_model_file)
    before = predictor.predict_proba([draw_smear("Pro", 5)])
    gradcam(predictor, draw_smear("Pro", 5))
    assert np.allclose(before, predictor.predict_proba([draw_smear("Pro", 5)]))

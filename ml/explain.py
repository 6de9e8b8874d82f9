"""Grad-CAM heat maps (the maintained ``grad-cam`` package) for any registered model.

The heat map is taken at the backbone's last feature map (``model.feature_tap``) for the predicted
class (or a given one), resized to the original image and blended over it for display.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from . import data as mldata


def gradcam(predictor, image, target: str | None = None) -> tuple[np.ndarray, str]:
    """(heat map in [0, 1] of shape (input_size, input_size), the class it explains).

    Pass ``target`` (the label already predicted) to skip a second forward pass."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tensor = predictor.preprocess(image).unsqueeze(0)
    if target is None:
        target = predictor.result(predictor.predict_proba([image])[0])[
            "label" if predictor.task == "screening" else "stage"]
    index = predictor.classes.index(target)
    with predictor._lock, torch.enable_grad():  # the shared model is not re-entrant
        with GradCAM(model=predictor.model, target_layers=[predictor.model.feature_tap]) as cam:
            heatmap = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(index)])[0]
    return np.nan_to_num(heatmap.astype(np.float32)), target


def overlay(image, heatmap: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The heat map (jet colours) blended over the image at the image's own size."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = mldata.load_image(image)
    resized = np.asarray(Image.fromarray((heatmap * 255).astype(np.uint8)).resize(rgb.size, Image.BILINEAR),
                         dtype=np.float32) / 255.0
    blended = show_cam_on_image(np.asarray(rgb, dtype=np.float32) / 255.0, resized, use_rgb=True,
                                image_weight=1.0 - opacity)
    return Image.fromarray(blended)

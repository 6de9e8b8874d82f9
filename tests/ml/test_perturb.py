"""Acquisition changes: deterministic, one table covering every family the robustness suite needs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.perturb import FAMILIES, PERTURBATIONS, select

from .conftest import draw_smear


def test_every_acquisition_family_of_issue_11_is_in_the_table_with_mild_levels():
    needed = {"illumination", "stain", "stain (HED)", "saturation", "contrast", "focus", "JPEG", "resolution", "aspect",
              "rotation", "framing"}
    assert needed <= set(FAMILIES)
    levels = {p.name: p.level for p in PERTURBATIONS if p.mild}
    assert levels["bluer"] == "R x0.93, G x0.97, B x1.08"
    assert {"pinker", "paler", "brighter", "centre crop 75%", "JPEG q40", "half resolution"} <= set(levels)
    assert len({p.name for p in PERTURBATIONS}) == len(PERTURBATIONS), "names must be unique: they key the report"


@pytest.mark.parametrize("perturbation", PERTURBATIONS, ids=lambda p: p.name)
def test_each_perturbation_is_deterministic_and_gives_an_rgb_image(perturbation):
    image = draw_smear("Pro", 9, 96)
    first, second = perturbation(image), perturbation(image)
    assert first.mode == "RGB" and first.size[0] > 0
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert image.size == (96, 96) and np.array_equal(np.asarray(image), np.asarray(draw_smear("Pro", 9, 96)))


def test_bluer_applies_the_channel_gains_of_the_issue():
    image = Image.new("RGB", (4, 4), (200, 100, 100))
    bluer = next(p for p in PERTURBATIONS if p.name == "bluer")
    assert bluer(image).getpixel((0, 0)) == (186, 97, 108)


def test_centre_crop_keeps_the_middle_and_framing_changes_the_size():
    crop = next(p for p in PERTURBATIONS if p.name == "centre crop 75%")
    assert crop(draw_smear("Pre", 1, 100)).size == (75, 75)
    assert next(p for p in PERTURBATIONS if p.name == "4:3 frame")(draw_smear("Pre", 1, 100)).size == (100, 75)


def test_select_by_mildness_family_or_name_and_refuses_unknown_names():
    assert all(p.mild for p in select("mild"))
    assert {p.family for p in select("stain,focus")} == {"stain", "focus"}
    assert [p.name for p in select("bluer")] == ["bluer"]
    with pytest.raises(ValueError, match="unknown perturbations"):
        select("stain,sepia")

"""Calibration on errors that exist: the temperature is fitted on the perturbed validation split and
written into the model file with a record of how it was fitted."""
from __future__ import annotations

import shutil

import pytest

from ml.calibrate import calibrate
from ml.checkpoint import read_payload
from ml.cli import main
from ml.predict import Predictor

WHICH = "stain,focus,framing"


@pytest.fixture
def model_copy(tiny_model_file, tmp_path):
    """A copy of the tiny model next to its manifest (calibration rewrites the file it is given)."""
    copy = tmp_path / "model.pt"
    shutil.copyfile(tiny_model_file, copy)
    return copy


def test_calibrate_writes_the_fitted_temperature_and_how_it_was_fitted(model_copy, smear_folder, tmp_path):
    before = read_payload(model_copy)
    report = calibrate(model_copy, smear_folder, which=WHICH, limit=6, out=tmp_path / "cal")
    payload = read_payload(model_copy)
    record = payload["calibration"]
    assert payload["temperature"] == pytest.approx(record["temperature"]) == pytest.approx(
        report["calibration"]["temperature"])
    assert record["previous_temperature"] == pytest.approx(before["temperature"])
    assert record["fitted_on"].startswith("val split of") and record["images"] == 6
    assert record["examples"] == 6 * (1 + len(record["perturbations"])) and "bluer" in record["perturbations"]
    assert record["fit_nll_after"] <= record["fit_nll_before"] + 1e-6  # the fit never makes the NLL worse
    assert payload["state_dict"].keys() == before["state_dict"].keys()
    assert Predictor(model_copy).temperature == pytest.approx(record["temperature"])
    for when in ("before", "after"):
        assert {"clean_ece", "perturbed_ece", "worst_perturbation_ece"} <= set(report[when])
    assert (tmp_path / "cal" / "calibration.json").is_file()


def test_a_dry_run_leaves_the_model_file_unchanged(model_copy, smear_folder):
    original = model_copy.read_bytes()
    report = calibrate(model_copy, smear_folder, which="focus", limit=4, write=False)
    assert model_copy.read_bytes() == original and not report["written"]


def test_calibrate_command_line(model_copy, smear_folder, capsys):
    assert main(["calibrate", "--data", str(smear_folder), "--model", str(model_copy), "--perturbations", "JPEG",
                 "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "temperature" in printed and "ECE clean test" in printed and f"written into {model_copy}" in printed
    assert "calibration" in read_payload(model_copy)
    assert main(["calibrate", "--data", str(smear_folder), "--model", str(model_copy.parent / "missing.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err

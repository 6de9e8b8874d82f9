"""The robustness suite on a tiny model and a few generated images: the table, JSON, plot and card section."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ml import robustness
from ml.cli import main
from ml.perturb import FAMILIES, PERTURBATIONS


def test_robustness_run_writes_every_family_into_json_table_and_plot(tiny_model_file, smear_folder, tmp_path):
    report = robustness.run(tiny_model_file, smear_folder, out=tmp_path, limit=4)
    assert report["n"] == 4 and report["split"] == "test" and report["limited"]
    assert [r["name"] for r in report["perturbations"]] == [p.name for p in PERTURBATIONS]
    assert {r["family"] for r in report["perturbations"]} == set(FAMILIES)
    for row in report["perturbations"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        assert row["meets_target"] == (row["accuracy"] >= robustness.MILD_TARGET)
        assert 0.0 <= row["flagged"] <= 1.0  # the share of the changed images the domain check refuses
        if row["interval"]:  # over the split's groups of neighbouring images, around the row's own accuracy
            low, high = row["interval"]["accuracy"]
            assert low <= row["accuracy"] <= high
    assert report["mild_below_target"] == [r["name"] for r in report["perturbations"]
                                           if r["mild"] and r["accuracy"] < 0.97]
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["clean"] == report["clean"]
    table = (tmp_path / "robustness.md").read_text()
    for family in FAMILIES:
        assert f"| {family} |" in table
    assert "flagged out of domain |" in table
    assert "--split test --limit 4`" in table  # a subsample is reproduced only with the same limit
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_images_give_the_same_numbers_twice(tiny_model_file, smear_folder):
    runs = [robustness.run(tiny_model_file, smear_folder, which="stain,framing", limit=6) for _ in range(2)]
    assert runs[0]["perturbations"] == runs[1]["perturbations"]


def test_card_section_states_the_verdict_and_links_the_plot(tiny_model_file, smear_folder):
    report = robustness.run(tiny_model_file, smear_folder, which="mild", limit=4)
    section = robustness.card_section(report)
    assert section.startswith("## Robustness to acquisition changes")
    mild = len(report["perturbations"])
    assert f"of {mild} mild changes meet the target" in section
    assert "![accuracy per acquisition change](robustness.png)" in section
    assert "| stain | bluer | R x0.93, G x0.97, B x1.08 | mild |" in section


def test_robustness_command_line(tiny_model_file, smear_folder, tmp_path, capsys):
    assert main(["robustness", "--data", str(smear_folder), "--model", str(tiny_model_file), "--out", str(tmp_path),
                 "--perturbations", "focus,JPEG", "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "| focus | slightly out of focus |" in printed and "mild changes at accuracy >= 0.97" in printed
    assert (tmp_path / "robustness.json").is_file()
    assert main(["robustness", "--data", str(smear_folder), "--model", str(tiny_model_file), "--perturbations",
                 "sepia"]) == 2
    assert "unknown perturbations" in capsys.readouterr().err


def test_the_shipped_card_gets_the_section_of_its_own_weights_only(tiny_model_file, smear_folder, tmp_path):
    from ml.card import robustness_section

    report = robustness.run(tiny_model_file, smear_folder, which="rotation", limit=4, out=tmp_path)
    assert robustness_section(tmp_path / "absent", report["model_sha256"], "staging") == ""
    section = robustness_section(tmp_path, report["model_sha256"], "staging")
    assert "## Robustness to acquisition changes" in section and "../reports/staging/robustness.png" in section
    import pytest

    with pytest.raises(ValueError, match="other weights"):
        robustness_section(tmp_path, "0" * 64, "staging")


# A screen is judged as the portal uses it: flags at its stored cut, by sensitivity and specificity.

from .test_screening import cell_folder, subject_kfold_manifest  # noqa: E402,F401  (generated C-NMC-layout cells)


@pytest.fixture(scope="module")
def screen_run(cell_folder, tmp_path_factory):  # noqa: F811
    from ml import screening_probe

    out = tmp_path_factory.mktemp("screen-robustness")
    manifest = subject_kfold_manifest(cell_folder, out, folds=2)
    screening_probe.run(str(cell_folder), out / "run", manifest, img_size=64, grid=(1.0,), pretrained=None)
    return out / "run" / "model.pt", manifest


def with_cut(model_file, cut: float, folder):
    import shutil

    from ml.checkpoint import update_payload

    copy = shutil.copy(model_file, folder / f"cut-{cut}.pt")
    update_payload(copy, threshold=cut)
    return copy


def test_a_screen_is_scored_by_sensitivity_and_specificity_at_its_stored_cut(screen_run, cell_folder, tmp_path):  # noqa: F811
    from ml import screening
    from ml.predict import Predictor

    model_file, manifest = screen_run
    report = robustness.run(model_file, cell_folder, manifest, out=tmp_path, which="stain,rotation")
    assert report["kind"] == "screening" and report["screen_targets"] == {"sensitivity": 0.95, "specificity": 0.5}
    predictor = Predictor(model_file)
    images, labels, _ = robustness.load_split(predictor, cell_folder, manifest, "test")
    is_blast = labels == predictor.classes.index("blast")
    bluer = next(p for p in PERTURBATIONS if p.name == "bluer")
    p_blast = predictor.predict_proba([bluer(image) for image in images])[:, predictor.classes.index("blast")]
    expected = screening.screening_metrics(p_blast, is_blast, predictor.threshold)
    row = next(r for r in report["perturbations"] if r["name"] == "bluer")
    assert row["sensitivity"] == pytest.approx(expected["sensitivity"])
    assert row["specificity"] == pytest.approx(expected["specificity"])
    assert row["meets_target"] == (expected["sensitivity"] >= 0.95 and expected["specificity"] >= 0.5)
    table = (tmp_path / "robustness.md").read_text()
    assert "| sensitivity (95% interval) | change | specificity (95% interval) | change |" in table
    assert "| stain | bluer |" in table and "resampled whole with replacement within their truth" in table
    groups = report["clean"]["interval"]["groups"]
    for metric, truth in (("sensitivity", "blast"), ("specificity", "normal")):
        bounds = row["interval"][metric]
        assert (bounds is None) == (groups[truth] < 2)  # one subject of a class: no interval over subjects
        assert bounds is None or bounds[0] <= row[metric] <= bounds[1]
    assert "sensitivity >= 0.95 and specificity >= 0.5 at the stored cut" in table
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_screens_cut_not_the_larger_probability_decides_its_numbers(screen_run, cell_folder, tmp_path):  # noqa: F811
    model_file, manifest = screen_run
    flag_all = robustness.run(with_cut(model_file, 0.0, tmp_path), cell_folder, manifest, which="JPEG")
    flag_none = robustness.run(with_cut(model_file, 1.01, tmp_path), cell_folder, manifest, which="JPEG")
    for row in [flag_all["clean"], *flag_all["perturbations"]]:
        assert (row["sensitivity"], row["specificity"]) == (1.0, 0.0)
    for row in [flag_none["clean"], *flag_none["perturbations"]]:
        assert (row["sensitivity"], row["specificity"]) == (0.0, 1.0)
        assert not robustness.meets_target(row, screen=True)
    assert flag_none["mild_below_target"] == ["JPEG q40"]


def test_the_flagged_column_is_only_filled_for_a_model_with_a_fitted_domain_check(tiny_model_file, smear_folder,
                                                                                  tmp_path):
    """A run file before ``fit-domain`` has only the blank rule: its 0% must not read as "the check lets all through"."""
    import shutil

    from ml.domain_fit import fit_model_domain

    bare = robustness.card_section(robustness.run(tiny_model_file, smear_folder, which="focus", limit=4))
    assert "| no check fitted |" in bare and "has no fitted domain check" in bare
    fitted = tmp_path / "model.pt"
    shutil.copy(tiny_model_file, fitted)
    fit_model_domain(fitted, smear_folder, None, progress=False)
    report = robustness.run(fitted, smear_folder, which="focus", limit=4)
    section = robustness.card_section(report)
    assert report["domain_check"] and "no check fitted" not in section and "has no fitted domain check" not in section
    assert f"| {report['clean']['flagged']:.1%} |" in section


def test_the_accuracy_interval_spans_slide_groups_and_is_said_in_the_card():
    labels = np.array([0] * 40 + [1] * 40)
    groups = [f"a{i // 10}" for i in range(40)] + [f"b{i // 10}" for i in range(40)]
    predicted = labels.copy()
    predicted[:10] = 1  # every error on one slide of class 0
    interval = robustness.accuracy_interval(predicted, labels, groups, ["Benign", "Pre"])
    assert interval["groups"] == {"Benign": 4, "Pre": 4}
    low, high = interval["accuracy"]
    assert low < 0.875 < high and high - low > 0.1
    row = {"accuracy": 0.875, "interval": interval}
    assert robustness._with_interval(row, "accuracy") == f"0.8750 ({low:.3f}-{high:.3f})"
    note = robustness.interval_note({"kind": "classification", "clean": row})
    assert "about one slide each; Benign 4, Pre 4" in note[0]

"""Single-cell screening: subject-level splits, sensitivity-first threshold, metrics, and the predictor contract."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ml import data as mldata
from ml import screening
from ml.predict import Predictor
from ml.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
REAL_CNMC = ROOT.parent / "shared" / "data" / "cnmc-fold1"


def draw_cell(blast: bool, seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), "black")
    draw = ImageDraw.Draw(image)
    r = size // 3 + int(rng.integers(-3, 4))
    colour = (120, 40, 160) if blast else (200, 120, 200)
    draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], fill=colour)
    x, y = (int(v) for v in rng.integers(size // 2 - 6, size // 2 + 6, 2))
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(int(rng.integers(0, 255)), 30, 90))  # unique per cell
    return image


@pytest.fixture(scope="module")
def cell_folder(tmp_path_factory) -> Path:
    """C-NMC layout: all/UID_<subject>_<image>_<cell>_all.png and hem/UID_H<subject>_..._hem.png."""
    root = tmp_path_factory.mktemp("cnmc")
    subjects = {"all": ["3", "5", "7", "9", "11"], "hem": ["H1", "H2", "H4"]}
    for folder, ids in subjects.items():
        (root / folder).mkdir()
        for n, subject in enumerate(ids):
            for cell in range(8):
                draw_cell(folder == "all", {"all": 0, "hem": 1}[folder] * 10_000 + n * 100 + cell).save(root / folder / f"UID_{subject}_{cell}_1_{folder}.png")
    return root


def subject_kfold_manifest(cell_folder: Path, out: Path, folds: int) -> Path:
    """One blast and one normal subject held out as test, the rest in ``folds`` subject folds: ``out/base.csv``
    (the subject split) and ``out/manifest.csv`` (its k-fold manifest), as the screening runs read them."""
    from ml import screening_ensemble

    base = mldata.write_manifest(
        screening.make_subject_split(cell_folder, test_subjects={"all": 1, "hem": 1}, folds=2), out / "base.csv")
    return screening_ensemble.make_kfold_manifest(base, out / "manifest.csv", folds=folds)


def test_subject_ids_are_read_from_cnmc_names():
    assert screening.subject_of("all/UID_51_12_3_all.png") == "51"
    assert screening.subject_of("hem/UID_H10_100_1_hem.png") == "H10"
    with pytest.raises(ValueError):
        screening.subject_of("all/cell.png")


def test_subject_split_keeps_every_subject_on_one_side_with_normals_in_test_and_each_fold(cell_folder):
    scan = screening.make_subject_split(cell_folder, test_subjects={"all": 1, "hem": 1}, folds=2, seed=1)
    assert mldata.check_manifest(scan.samples, cell_folder) == []
    sides: dict[str, set] = {}
    for s in scan.samples:
        sides.setdefault(screening.subject_of(s.path), set()).add(s.split)
    assert all(len(v) == 1 for v in sides.values())
    for split in ("test", "fold0", "fold1"):
        labels = {s.label for s in scan.samples if s.split == split}
        assert labels == {"all", "hem"}, f"{split} lacks a class"


def test_threshold_is_the_highest_cut_keeping_sensitivity():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.6, 0.1])
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    t = screening.choose_threshold(p, y, min_sensitivity=0.8)
    assert t == pytest.approx(0.2)  # 8 of 10 blasts at >= 0.2
    m = screening.screening_metrics(p, y, t)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.5)
    assert m["confusion"] == {"tp": 8, "fn": 2, "tn": 1, "fp": 1}
    assert screening.screening_metrics(p, y, screening.choose_threshold(p, y, 1.0))["sensitivity"] == 1.0


def test_subject_transfer_scores_each_blast_subject_at_a_cut_chosen_without_it():
    # Subject A's blasts score high, B's low: a cut chosen on A alone misses B's blasts, and vice versa.
    subjects = np.array(["A"] * 10 + ["B"] * 10 + ["H"] * 10)
    is_blast = np.array([True] * 20 + [False] * 10)
    p_blast = np.concatenate([np.linspace(0.8, 0.99, 10), np.linspace(0.3, 0.7, 10), np.linspace(0.0, 0.5, 10)])
    transfer = screening.subject_transfer([(subjects, is_blast, p_blast)], targets=(0.95, 0.99))
    at95 = transfer["0.95"]
    assert at95["subjects"] == 2
    # Left out, B is scored at A's cut (0.8): none of its blasts reach it; A at B's cut (0.3 + ...) all do.
    assert {r["subject"]: r["sensitivity"] for r in at95["per_subject"]} == {"A": 1.0, "B": 0.0}
    assert at95["left_out_sensitivity"] == pytest.approx(0.5)
    assert at95["worst_subject_sensitivity"] == 0.0
    # Nothing reached 0.95 on a left-out subject: the largest target is the safest choice.
    assert screening.choose_sensitivity_target(transfer) == 0.99


def test_the_smallest_target_that_carries_over_is_chosen():
    transfer = {"0.95": {"target": 0.95, "left_out_sensitivity": 0.93},
                "0.97": {"target": 0.97, "left_out_sensitivity": 0.955},
                "0.99": {"target": 0.99, "left_out_sensitivity": 0.99}}
    assert screening.choose_sensitivity_target(transfer) == 0.97


@pytest.fixture(scope="module")
def screening_run(cell_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("screening-run")
    base = TrainConfig(data=str(cell_folder), arch="mobilenetv3_screen", out="", epochs=2, img_size=48,
                       batch_size=16, progress=False)
    report = screening.run(str(cell_folder), out, out / "manifest.csv", base, balance_modes=("undersample",))
    return out, report


def test_the_protocol_reports_cv_and_test_subjects_and_stores_the_threshold(screening_run):
    out, report = screening_run
    assert set(report["subjects"]) == {"test", "fold0", "fold1"}
    assert report["cv"]["undersample"]["oof"]["sensitivity"] >= 0.95
    assert report["sensitivity_target"] in screening.SENSITIVITY_TARGETS
    assert report["deployed_validation"]["sensitivity"] >= report["sensitivity_target"]
    assert set(report["cv"]["undersample"]["transfer"]) == {f"{t:.2f}" for t in screening.SENSITIVITY_TARGETS}
    assert "all_subjects" in report and report["deployed_fold_model"] in ("fold0", "fold1")
    for key in ("sensitivity", "specificity", "f1", "weighted_f1", "balanced_accuracy", "roc_auc"):
        assert key in report["test"]
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "Per test subject" in (out / "report.md").read_text()
    assert "How a cut carries over to a new subject" in (out / "report.md").read_text()
    predictor = Predictor(report["model_file"])
    assert predictor.threshold == pytest.approx(report["threshold"])
    assert predictor.positive_class == "blast" and predictor.classes == ("blast", "normal")


def test_screening_predictions_follow_the_contract_and_the_threshold(screening_run):
    out, report = screening_run
    predictor = Predictor(report["model_file"])
    results = predictor.predict([draw_cell(True, 1), draw_cell(False, 2).convert("L")])
    for result in results:
        assert set(result) - {"reason"} == {"label", "probabilities", "threshold", "model", "model_version", "in_domain",
                                            "domain_score"}
        assert set(result["probabilities"]) == {"blast", "normal"}
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
        assert result["label"] == ("blast" if result["probabilities"]["blast"] >= result["threshold"] else "normal")


def test_cli_predict_with_the_screening_model(screening_run, tmp_path):
    out, report = screening_run
    cell = tmp_path / "cell.png"
    draw_cell(True, 3).save(cell)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = subprocess.run([sys.executable, "-m", "ml", "predict", "--model", report["model_file"], "--json",
                             str(cell), str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["label"] in {"blast", "normal"} and "threshold" in lines[0]
    assert set(lines[1]) == {"path", "error"}
    assert result.returncode == 1


def test_committed_cnmc_manifest_is_subject_disjoint():
    manifest = ROOT / "ml" / "splits" / "cnmc-fold1.csv"
    if not manifest.is_file():
        pytest.fail("ml/splits/cnmc-fold1.csv is missing")
    samples = mldata.read_manifest(manifest)
    assert mldata.check_manifest(samples, REAL_CNMC if REAL_CNMC.is_dir() else None) == []
    assert {s.split for s in samples} == {"test", "fold0", "fold1"}


def test_cross_validation_only_compares_settings_without_reading_the_test_subjects(cell_folder, tmp_path, monkeypatch):
    base = TrainConfig(data=str(cell_folder), arch="mobilenetv3_screen", out="", epochs=1, img_size=48,
                       batch_size=16, progress=False)
    read = []
    real = screening.blast_probability
    monkeypatch.setattr(screening, "blast_probability",
                        lambda predictor, root, samples: read.extend(s.split for s in samples) or real(predictor, root, samples))
    summary = screening.run(str(cell_folder), tmp_path, tmp_path / "manifest.csv", base, balance_modes=("weight",),
                            cv_only=True)
    assert set(summary["cv"]) == {"weight"} and summary["cv"]["weight"]["oof"]["sensitivity"] >= 0.95
    assert read and "test" not in read
    assert (tmp_path / "cv.json").is_file() and not (tmp_path / "report.json").exists()
    assert "class weights" in (tmp_path / "cv-weight-fold0" / "train.log").read_text()


def test_the_card_tabulates_settings_compared_by_cross_validation(tmp_path):
    from ml.screening_cv_card import comparison_section

    oof = {"sensitivity": 0.95, "specificity": 0.5, "weighted_f1": 0.8, "roc_auc": 0.85}
    summary = {"arch": "efficientnet_b3_screen", "img_size": 128, "epochs": 8, "pretrained_weights": False,
               "cv": {"undersample": {"oof": oof, "folds": [{"train_wall_s": 60}, {"train_wall_s": 180}]}}}
    (tmp_path / "cv.json").write_text(json.dumps(summary))
    table = "\n".join(comparison_section([tmp_path / "cv.json"]))
    assert ("| `efficientnet_b3_screen` | random | 128 | 8 | undersample | 0.9500 | 0.5000 | 0.8000 | 0.8500 | 2.0 | "
            "not run |") in table
    assert comparison_section([]) == []
    # A candidate that was also run in full shows its test-subject result.
    report = {"chosen_balance": "undersample", "threshold": 0.4,
              "test": {"sensitivity": 0.9, "specificity": 0.6, "weighted_f1": 0.75}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert "| 0.9000 / 0.6000 / 0.7500 (0.4000) |" in "\n".join(comparison_section([tmp_path / "cv.json"]))
    # The deployed setting leads the table, and the row with the best OOF specificity is named.
    deployed = {**report, "img_size": 128, "config": {"arch": "efficientnet_lite0_screen", "epochs": 4,
                                                       "pretrained_weights": "lite0.pth"},
                "cv": {"undersample": {"oof": {**oof, "specificity": 0.6}, "folds": []}}}
    table = "\n".join(comparison_section([tmp_path / "cv.json"], deployed))
    assert table.index("`efficientnet_lite0_screen` (deployed) | ImageNet") < table.index("`efficientnet_b3_screen`")
    assert "`efficientnet_lite0_screen` at 128 px with undersample (deployed), 0.6000" in table


def test_cli_cross_validates_a_randomly_initialised_model(cell_folder, tmp_path):
    out = tmp_path / "cv"
    result = subprocess.run([sys.executable, "-m", "ml", "screening", "--data", str(cell_folder), "--out", str(out),
                             "--manifest", str(tmp_path / "manifest.csv"), "--arch", "mobilenetv3_screen",
                             "--pretrained-weights", "", "--epochs", "1", "--img-size", "48", "--balance-modes",
                             "undersample", "--cv-only", "--no-progress"],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert "out-of-fold sensitivity" in result.stdout
    assert json.loads((out / "cv.json").read_text())["pretrained_weights"] is False


def test_the_all_subjects_comparison_model_can_be_skipped(cell_folder, tmp_path):
    base = TrainConfig(data=str(cell_folder), arch="mobilenetv3_screen", out="", epochs=1, img_size=48,
                       batch_size=16, progress=False)
    report = screening.run(str(cell_folder), tmp_path, tmp_path / "manifest.csv", base, balance_modes=("undersample",),
                           all_subjects_model=False)
    assert report["all_subjects"] is None and not (tmp_path / "final").exists()
    assert "sensitivity" in report["test"]
    assert "model on all CV subjects" not in (tmp_path / "report.md").read_text()

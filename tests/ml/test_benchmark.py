"""Benchmark: one protocol for every model, resumable, and a page generated from the real runs."""
from __future__ import annotations

import json
import shutil

import pytest

from ml import benchmark
from ml.checkpoint import read_payload
from ml.train import TrainConfig


def test_seed_summary_of_no_runs_is_empty_rather_than_an_error():
    assert benchmark.seed_summary([])["n"] == 0


def test_seed_summary_gives_mean_spread_and_a_t_interval():
    s = benchmark.seed_summary([0.90, 0.92, 0.94])
    assert s["mean"] == pytest.approx(0.92)
    assert s["std"] == pytest.approx(0.02)
    assert s["ci95"][0] == pytest.approx(0.92 - 4.303 * 0.02 / 3 ** 0.5)


def test_a_tiny_benchmark_trains_evaluates_resumes_and_writes_the_page(smear_folder, tmp_path):
    from ml.data import make_split, write_manifest

    manifest = write_manifest(make_split(smear_folder, block_size=4), tmp_path / "manifest.csv")
    base = TrainConfig(data=str(smear_folder), arch="", out="", manifest=str(manifest), epochs=1, img_size=48,
                       batch_size=16, progress=False)
    archs = ["mobilenetv3_lstm", "efficientnet_lite0_bigru"]
    results = benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest), base, archs=archs, seeds=(0, 1),
                            docs=tmp_path / "docs", timing_runs=2)
    assert set(results) == {"mobilenetv3_lstm-s0", "mobilenetv3_lstm-s1", "efficientnet_lite0_bigru-s0"}
    page = (tmp_path / "docs" / "benchmark.md").read_text()
    for arch in archs:
        assert f"| `{arch}` |" in page
        assert f"(benchmark/results/{arch}-s0.png)" in page
        assert (tmp_path / "docs" / "benchmark" / "results" / f"{arch}-s0.png").is_file()
    assert "over 2 training seeds" in page and "Recommendation" in page
    row = results["mobilenetv3_lstm-s0"]
    assert row["latency"]["median_ms"] > 0 and row["mflops"] > 0 and row["params_m"] > 0
    # Resuming: finished runs are read back, not trained again.
    stamp = (tmp_path / "runs" / "mobilenetv3_lstm-s0" / "model.pt").stat().st_mtime_ns
    again = benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest), base, archs=archs, seeds=(0, 1),
                          docs=tmp_path / "docs")
    assert again == json.loads(json.dumps(results))
    assert (tmp_path / "runs" / "mobilenetv3_lstm-s0" / "model.pt").stat().st_mtime_ns == stamp
    # Costs can be timed again (on a quiet CPU) without retraining; the record keeps the new timing.
    timed = benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest), base, archs=archs[:1], seeds=(0,),
                          docs=tmp_path / "docs", timing_runs=3, remeasure_costs=True)
    assert timed["mobilenetv3_lstm-s0"]["latency"]["runs"] == 3 and timed["mobilenetv3_lstm-s0"]["costs_remeasured"]
    assert (tmp_path / "runs" / "mobilenetv3_lstm-s0" / "model.pt").stat().st_mtime_ns == stamp
    again = benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest), base, archs=archs, seeds=(0, 1),
                          docs=tmp_path / "docs")
    assert again["mobilenetv3_lstm-s0"] == timed["mobilenetv3_lstm-s0"]
    # The committed record alone is enough: with the scratch run folder gone, nothing is retrained.
    record = tmp_path / "docs" / "benchmark" / "results"
    assert (record / "mobilenetv3_lstm-s1.json").is_file() and (record / "mobilenetv3_lstm-s1.png").is_file()
    shutil.rmtree(tmp_path / "runs")
    from_record = benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest), base, archs=archs, seeds=(0, 1),
                                docs=tmp_path / "docs")
    assert from_record == again
    assert not (tmp_path / "runs" / "mobilenetv3_lstm-s0").exists()
    # Another protocol in the same folder is refused rather than mixed in.
    with pytest.raises(ValueError, match="another protocol"):
        benchmark.run(str(smear_folder), tmp_path / "runs", str(manifest),
                      TrainConfig(**{**base.__dict__, "epochs": 2}), archs=archs, docs=tmp_path / "docs")
    with pytest.raises(ValueError, match="another protocol"):
        benchmark.run(str(smear_folder), tmp_path / "fresh-runs", str(manifest),
                      TrainConfig(**{**base.__dict__, "epochs": 2}), archs=archs, docs=tmp_path / "docs")


def row(arch, macro_f1, latency_ms):
    return {"arch": arch, "macro_f1": macro_f1, "latency": {"median_ms": latency_ms}, "params_m": 1.0,
            "weights_mb": 4.0}


def test_the_recommendation_picks_the_best_model_within_the_latency_budget():
    rows = [row("mobilenetv3_lstm", 0.90, 8), row("xception_bigru", 0.95, 120), row("efficientnet_b3_bigru", 0.92, 25)]
    text = benchmark.recommendation(rows)
    assert "`efficientnet_b3_bigru` has the best macro-F1" in text
    assert "`xception_bigru` scores higher" in text and "beyond the budget" in text


def test_the_recommendation_weighs_imagenet_initialisation_against_the_deployed_model():
    rows = [row("mobilenetv3_lstm", 0.90, 8), row("efficientnet_lite0_bigru", 0.95, 20)]
    deployed = {"version": "v1", "accuracy": 0.97, "macro_f1": 0.97, "ece": 0.02, "img_size": 224, "epochs": 25,
                "distilled": True, "warm_start": True, "report": "r.json"}
    text = benchmark.recommendation(rows, deployed)
    assert "ImageNet initialisation adds" in text and "+0.0500" in text
    assert "distilled from an ImageNet-initialised teacher" in text
    assert "should not change on this evidence" in text
    assert "should change to `efficientnet_lite0_bigru`" in benchmark.recommendation(rows, {**deployed, "macro_f1": 0.93})
    # With both error lists known, a higher score alone is not enough: the paired test must agree.
    rows[1]["errors"] = ["a.jpg", "b.jpg"]
    close = {**deployed, "macro_f1": 0.93, "n": 400, "errors": ["a.jpg", "c.jpg", "d.jpg"]}
    text = benchmark.recommendation(rows, close)
    assert "within chance" in text and "should not change" in text
    far = {**close, "errors": [f"{i}.jpg" for i in range(20)]}
    assert "should change to `efficientnet_lite0_bigru`" in benchmark.recommendation(rows, far)


def test_mcnemar_counts_disagreements_and_gives_an_exact_p_value():
    test = benchmark.mcnemar(["a", "b"], ["b", "c", "d", "e", "f", "g", "h", "i", "j"])
    assert (test["only_a_wrong"], test["only_b_wrong"]) == (1, 8)
    assert test["p_value"] == pytest.approx(2 * (1 + 9) / 512)  # 2 * P(X <= 1), X ~ Bin(9, 0.5)
    assert benchmark.mcnemar(["a"], ["a"])["p_value"] == 1.0


def test_the_deployed_summary_reads_the_shipped_report_and_training_config():
    from pathlib import Path

    weights = Path(benchmark.__file__).parent / "weights" / "staging.pt"
    report = Path(benchmark.__file__).parent / "reports" / "staging" / "report.json"
    summary = benchmark.deployed_summary(report, weights)
    assert summary["accuracy"] == json.loads(report.read_text())["accuracy"]
    assert summary["img_size"] == 224 and summary["distilled"] == bool(
        read_payload(weights)["training"]["config"].get("teacher"))
    assert len(summary["errors"]) == round(summary["n"] * (1 - summary["accuracy"]))
    assert benchmark.deployed_summary(report.with_name("missing.json"), weights) is None

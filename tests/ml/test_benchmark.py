"""Benchmark: one protocol for every model, resumable, and a page generated from the real runs."""
from __future__ import annotations

import json
import shutil

import pytest

from ml import benchmark
from ml.train import TrainConfig


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
        assert (tmp_path / "docs" / "benchmark" / f"{arch}.png").is_file()
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
    assert timed["mobilenetv3_lstm-s0"]["latency"]["runs"] == 3
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

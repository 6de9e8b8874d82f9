"""scripts/performance_report.py: the results section of docs/performance.md
and its plot come from the stored load-test runs, nothing else."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("performance_report", REPO / "scripts" / "performance_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

RUN = {
    "started_at": "2026-11-24T07:18:38+00:00", "case": "LOADTEST-20261124-071838-ddf245", "kind": "field",
    "smears": 3, "finished": 3, "failed": 0, "unfinished": 0, "throughput_smears_per_s": 41.5,
    "latency_s": {"p50": 1.2, "p95": 2.5, "max": 2.6}, "timeline": [[0.0, 1.2], [0.0, 2.5], [0.1, 2.6]],
    "label": "onnx, CONCURRENCY=2",
    "workers": [{"worker": "classification", "role": "pool process", "rss_mib": 300.0, "peak_rss_mib": 310.0},
                {"worker": "classification", "role": "main process", "rss_mib": 80.0, "peak_rss_mib": 80.0}],
    "hardware": {"cores": 2, "cpu": "AMD EPYC"}, "configuration": {"database": "mysql", "broker": "redis",
                                                                   "batch_size": 32},
}


def test_the_results_section_is_rewritten_from_the_runs(tmp_path):
    pytest.importorskip("matplotlib")
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps(RUN))
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Title\n\nBefore.\n\n{report.START}\nold table\n{report.END}\n\nAfter.\n")
    plot = tmp_path / "performance" / "loadtest.png"
    runs = report.load([run_file])
    report.plot(runs, plot)
    report.render(doc, runs, plot)
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nBefore.") and text.endswith("After.\n")
    row = next(line for line in text.splitlines() if line.startswith("| onnx, CONCURRENCY=2 |"))
    assert "| 2026-11-24 07:18 | 3 | field | 41.5 | 1.2 / 2.5 / 2.6 | 0 | 0 | 300 (310) × 1 |" in row
    assert "(performance/loadtest.png)" in text and plot.stat().st_size > 1000


def test_a_run_without_its_start_time_is_dated_by_its_case():
    assert report.started({"case": "LOADTEST-20261124-064439-d8fcae"}) == "2026-11-24 06:44"

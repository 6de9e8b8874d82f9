"""The numbers quoted in the model cards and ml/README.md agree with the records they come from.

The cards (``ml/weights/{staging,screening}.md``) are read as text; each quoted number with a machine-readable
source is checked against it: the shipped files themselves (sha256, size), the model files' metadata (version,
temperature, threshold, domain cut: loaded, never run) and the JSON records under ``ml/reports/``. No inference:
the whole module takes about a second. A test whose record file is absent skips with the reason.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "ml" / "weights"
REPORTS = ROOT / "ml" / "reports"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.relative_to(ROOT)} is absent")
    return path


@lru_cache(maxsize=None)
def text(relative: str) -> str:
    return need(ROOT / relative).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def record(relative: str) -> dict:
    return json.loads(need(REPORTS / relative).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with need(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def payload(name: str) -> dict:
    """The model file's metadata (weights_only load of the .pt, no forward pass)."""
    torch = pytest.importorskip("torch", reason="torch is needed to read the model file's metadata")
    stored = torch.load(need(WEIGHTS / f"{name}.pt"), map_location="cpu", weights_only=True)
    return {key: value for key, value in stored.items() if key != "state_dict"}


def card(name: str) -> str:
    return text(f"ml/weights/{name}.md")


def find(pattern: str, haystack: str, what: str) -> re.Match:
    match = re.search(pattern, haystack, flags=re.S)
    assert match, f"{what}: pattern {pattern!r} not found"
    return match


def quoted(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def section(card_text: str, heading: str) -> str:
    start = card_text.index(heading)
    end = card_text.find("\n## ", start + len(heading))
    return card_text[start:end if end >= 0 else None]


# --- both cards: the shipped files -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["staging", "screening"])
def test_header_sha256_size_and_version_match_the_model_file(name):
    header = find(r"Version `([^`]+)` · weights `ml/weights/" + name + r"\.pt` \(([\d.]+) MB\) · sha256 `([0-9a-f]{64})`",
                  card(name), f"{name}.md header")
    version, megabytes, digest = header.groups()
    model = WEIGHTS / f"{name}.pt"
    assert digest == sha256(model)
    assert megabytes == quoted(model.stat().st_size / 1e6, 2)
    assert version == payload(name)["model_version"]


@pytest.mark.parametrize("name", ["staging", "screening"])
def test_onnx_section_matches_the_export_files_and_its_record(name):
    onnx = section(card(name), "## ONNX Runtime")
    export = record(f"{name}/export.json")
    served = find(rf"from `{name}\.onnx` \(([\d.]+) MB, sha256 `([0-9a-f]{{64}})`\), exported from this model file "
                  r"\(sha256 `([0-9a-f]{64})`\)", onnx, f"{name}.md ONNX line")
    megabytes, onnx_digest, pt_digest = served.groups()
    onnx_file = WEIGHTS / f"{name}.onnx"
    assert onnx_digest == sha256(onnx_file) == export["onnx_sha256"]
    assert megabytes == quoted(onnx_file.stat().st_size / 1e6, 2) == quoted(export["onnx_mb"], 2)
    assert pt_digest == sha256(WEIGHTS / f"{name}.pt") == export["model_sha256"]
    assert export["model_version"] == payload(name)["model_version"]
    latency = find(r"ONNX Runtime \(what the worker serves\) \*\*([\d.]+) ms\*\* \(p90 ([\d.]+)\), PyTorch ([\d.]+) ms",
                   onnx, f"{name}.md serving latency").groups()
    measured = export["latency"]
    assert latency == (quoted(measured["onnxruntime"]["median_ms"], 1), quoted(measured["onnxruntime"]["p90_ms"], 1),
                       quoted(measured["torch"]["median_ms"], 1))


@pytest.mark.parametrize("name", ["staging", "screening"])
def test_domain_cut_is_the_one_in_the_model_file(name):
    cut = find(r"The cut \*\*([\d.]+)\*\*", section(card(name), "## Domain check"), f"{name}.md domain cut").group(1)
    assert cut == quoted(payload(name)["domain"]["cut"], 4) == quoted(record(f"{name}/domain.json")["cut"], 4)


# --- staging card ------------------------------------------------------------------------------------------

def test_staging_records_are_of_the_shipped_file():
    digest = sha256(WEIGHTS / "staging.pt")
    version = payload("staging")["model_version"]
    for name in ("report.json", "robustness.json", "domain.json", "export.json"):
        rec = record(f"staging/{name}")
        assert rec["model_sha256"] == digest, name
        assert rec["model_version"] == version, name
    for name in ("calibration.json", "explain.json"):
        assert record(f"staging/{name}")["model_version"] == version, name


def test_staging_test_metrics_match_report_json():
    report = record("staging/report.json")
    metrics = section(card("staging"), "## Test metrics")
    for label, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"),
                       ("expected calibration error \\(15 bins\\)", "ece"),
                       ("ECE without temperature scaling", "uncalibrated_ece")):
        value = find(rf"\| {label} \| ([\d.]+) \|", metrics, f"staging.md {label}").group(1)
        assert value == quoted(report[key], 4), label
    for metric in ("accuracy", "macro_f1"):
        interval = report["intervals"]["metrics"][metric]
        label = "accuracy" if metric == "accuracy" else "macro-F1"
        quoted_interval = find(rf"{label} ([\d.]+) \(95% interval ([\d.]+)-([\d.]+)\)", metrics,
                               f"staging.md {label} interval").groups()
        assert quoted_interval == (quoted(interval["estimate"], 4), quoted(interval["low"], 3),
                                   quoted(interval["high"], 3))
    for klass, row in report["per_class"].items():
        cells = find(rf"\| {klass} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|", metrics, f"staging.md {klass}").groups()
        assert cells == (quoted(row["precision"], 4), quoted(row["recall"], 4), quoted(row["f1"], 4), str(row["support"]))


def test_staging_error_counts_match_report_json():
    report = record("staging/report.json")
    errors = report["errors"]
    confident, total = find(r"(\d+) of the (\d+) test errors were made with confidence >= 0\.95", card("staging"),
                            "staging.md Limitations").groups()
    assert int(total) == len(errors) == report["n"] - round(report["accuracy"] * report["n"])
    assert int(confident) == sum(error["confidence"] >= 0.95 for error in errors)
    shipped_row = find(r"test\s+0\.9830 / 0\.9830 \((\d+) errors, B \d+\)", card("staging"), "staging.md session 13")
    assert int(shipped_row.group(1)) == len(errors)


def test_staging_temperature_and_calibration_match_the_records():
    staging = card("staging")
    calibration = record("staging/calibration.json")
    fit = calibration["calibration"]
    temperature = payload("staging")["temperature"]
    assert abs(temperature - fit["temperature"]) < 1e-6
    output_t = find(r"temperature T = ([\d.]+), fitted on (\d+) examples", staging, "staging.md Output line").groups()
    assert output_t == (quoted(temperature, 3), str(fit["examples"]))
    assert find(r"\((\d+) errors to calibrate on", staging, "staging.md Output line").group(1) == str(fit["errors"])
    assert find(r"classified by `[^`]+` \(T = ([\d.]+)\)", staging, "staging.md Robustness").group(1) == quoted(temperature, 3)
    heat = section(staging, "## Heat maps and calibration")
    refit = find(r"\(([\d,]+) examples, (\d+) errors\): T\s+([\d.]+) \(the source weights' fit\) -> \*\*([\d.]+)\*\*", heat,
                 "staging.md calibration refit").groups()
    assert refit == (f"{fit['examples']:,}", str(fit["errors"]), quoted(fit["previous_temperature"], 3),
                     quoted(fit["temperature"], 3))
    ece = find(r"ECE on the clean test split ([\d.]+) ->\s+\*\*([\d.]+)\*\*, pooled over the 38 changed copies of the test "
               r"split ([\d.]+) ->\s+\*\*([\d.]+)\*\* \(worst: ([^,]+), ([\d.]+)\)", heat, "staging.md calibration ECE").groups()
    before, after = calibration["before"], calibration["after"]
    assert ece == (quoted(before["clean_ece"], 4), quoted(after["clean_ece"], 4), quoted(before["perturbed_ece"], 4),
                   quoted(after["perturbed_ece"], 4), after["worst_perturbation"],
                   quoted(after["worst_perturbation_ece"], 3))
    assert quoted(after["clean_ece"], 4) == quoted(record("staging/report.json")["ece"], 4)


def test_staging_deletion_test_matches_explain_json():
    greedy = record("staging/explain.json")["methods"]["greedy"]
    row = find(r"\| \*\*greedy deletion \(shipped\), these weights\*\* \| \*\*([-\d.]+)\*\* \| ([-\d.]+) \| "
               r"([-\d.]+) / ([-\d.]+) \| (\d+) / (\d+) \| ([\d.]+) \|", card("staging"), "staging.md deletion row").groups()
    assert row == (quoted(greedy["hottest_drop"], 3), quoted(greedy["coldest_drop"], 3),
                   quoted(greedy["hottest_log_odds_drop"], 2), quoted(greedy["coldest_log_odds_drop"], 2),
                   str(sum(drop >= 0.2 for drop in greedy["hottest_drops"])), str(greedy["n"]),
                   quoted(greedy["seconds_per_map"], 1))
    ml_readme = find(r"On the shipped staging\s+model, (\d+) test images: greedy ([\d.]+) / ([-\d.]+) \(met\), ([\d.]+) s per map",
                     text("ml/README.md"), "ml/README.md deletion test").groups()
    assert ml_readme == (str(greedy["n"]), quoted(greedy["hottest_drop"], 3), quoted(greedy["coldest_drop"], 3),
                         quoted(greedy["seconds_per_map"], 1))


def test_staging_mild_change_count_matches_robustness_json():
    suite = record("staging/robustness.json")
    mild = [row for row in suite["perturbations"] if row["mild"]]
    met = sum(row["meets_target"] for row in mild)
    generated = find(r"\*\*(\d+) of (\d+) mild changes meet the target\.\*\*", card("staging"), "staging.md Robustness")
    assert generated.groups() == (str(met), str(len(mild)))
    jpeg = next(row for row in suite["perturbations"] if row["name"] == "JPEG q40")
    shipped = find(r"\(B [\d.]+\);\s+(\d+) of (\d+) mild changes, as B \(JPEG q40 ([\d.]+)", card("staging"),
                   "staging.md session 13 mild changes")
    assert shipped.groups() == (str(met), str(len(mild)), quoted(jpeg["accuracy"], 3))


def test_ml_readme_example_names_the_shipped_staging_version():
    example = find(r'"model_version": "([^"]+)"', text("ml/README.md"), "ml/README.md predict example").group(1)
    assert example == payload("staging")["model_version"]


# --- screening card ----------------------------------------------------------------------------------------

def test_screening_threshold_matches_the_model_file_and_report_json():
    threshold = payload("screening")["threshold"]
    report = record("screening/report.json")
    assert abs(threshold - report["threshold"]) < 1e-9
    assert report["model_version"] == payload("screening")["model_version"]
    header = find(r"is >= the stored threshold \*\*([\d.]+)\*\*", card("screening"), "screening.md header").group(1)
    assert header == quoted(threshold, 4)
    grid_row = find(r"\| \*\*([\de.-]+)\*\* \| ([\d.]+) \| ([\d.]+) \|", card("screening"), "screening.md C grid").groups()
    assert float(grid_row[0]) == report["probe"]["C"] == payload("screening")["probe"]["C"]
    assert grid_row[2] == quoted(threshold, 4)


def test_screening_results_table_matches_the_reports():
    results = section(card("screening"), "## Results")
    estimate, shipped = record("screening/estimate-report.json"), record("screening/report.json")
    keys = ("sensitivity", "specificity", "f1", "weighted_f1", "balanced_accuracy", "roc_auc")
    for label, metrics in (("\\*\\*test subjects \\(estimate run\\)\\*\\*", estimate["test"]),
                           ("out-of-fold, estimate run", estimate["oof"]),
                           ("out-of-fold, shipped run \\(all subjects\\)", shipped["oof"])):
        row = find(rf"\| {label} \| \d+ \| (\d+) \((\d+)/(\d+)\) \| " + r" \| ".join([r"([\d.]+)"] * 6) + r" \|",
                   results, f"screening.md row {label}").groups()
        assert row[:3] == (str(metrics["n"]), str(metrics["blasts"]), str(metrics["normals"])), label
        assert row[3:] == tuple(quoted(metrics[key], 4) for key in keys), label
    fitted = find(r"Fitted on (\d+) cells of (\d+) subjects", card("screening"), "screening.md Model").groups()
    assert fitted == (str(payload("screening")["probe"]["cells"]), str(len(payload("screening")["probe"]["subjects"])))
    tried = find(r"against the shipped recipe's ([\d.]+) / ([\d.]+):", card("screening"), "screening.md What else").groups()
    assert tried == (quoted(estimate["oof"]["specificity"], 3), quoted(shipped["oof"]["specificity"], 3))


def test_screening_robustness_section_is_of_the_estimate_probe_at_its_cut():
    suite, estimate = record("screening/robustness.json"), record("screening/estimate-report.json")
    assert suite["model_sha256"] == estimate["model_sha256"]
    screened = find(r"screened by `([^`]+)` at its stored cut .*? at the stored cut ([\d.]+) under every mild change",
                    card("screening"), "screening.md Robustness").groups()
    assert screened == (estimate["model_version"], quoted(estimate["threshold"], 4))
    assert abs(suite["threshold"] - estimate["threshold"]) < 1e-9
    mild = [row for row in suite["perturbations"] if row["mild"]]
    generated = find(r"\*\*(\d+) of (\d+) mild changes meet the target\.\*\*", card("screening"), "screening.md Robustness")
    assert generated.groups() == (str(sum(row["meets_target"] for row in mild)), str(len(mild)))

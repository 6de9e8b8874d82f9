"""Render the load-test results (JSON files written by `manage.py loadtest --json`)
into the results section of docs/performance.md and a plot beside it.

    python scripts/performance_report.py                       # docs/performance/runs/*.json
    python scripts/performance_report.py runs/a.json runs/b.json --doc docs/performance.md

Rewrites only the text between the RESULTS markers of the document, so the
table and the plot always come from the stored runs. Needs matplotlib (plot only).
"""
import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs" / "performance" / "runs"
DOC = REPO / "docs" / "performance.md"
PLOT = REPO / "docs" / "performance" / "loadtest.png"
START, END = "<!-- RESULTS:START (scripts/performance_report.py) -->", "<!-- RESULTS:END -->"


def load(paths):
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        data["file"] = Path(path).name
        runs.append(data)
    return sorted(runs, key=started)


def started(run):
    """When the run began: its own record, else the time in its case's name (LOADTEST-YYYYMMDD-HHMMSS-…)."""
    if run.get("started_at"):
        return run["started_at"][:16].replace("T", " ")  # UTC
    parts = run.get("case", "").split("-")
    return f"{parts[1][:4]}-{parts[1][4:6]}-{parts[1][6:]} {parts[2][:2]}:{parts[2][2:4]}" if len(parts) > 2 else ""


def classification_rss(run):
    """Resident memory of each classification pool process (MiB): "now (peak)", the largest."""
    pool = [p for p in run.get("workers", []) if p["worker"] == "classification" and p["role"] == "pool process"]
    if not pool:
        pool = [p for p in run.get("workers", []) if p["worker"] == "classification"]
    if not pool:
        return "not found"
    biggest = max(pool, key=lambda p: p["peak_rss_mib"])
    return f"{biggest['rss_mib']:.0f} ({biggest['peak_rss_mib']:.0f}) × {len(pool)}"


def table(runs):
    head = ("| run | when (UTC) | smears | kind | throughput (smears/s) | latency p50 / p95 / max (s) | failed | "
            "unfinished | classification process RSS, MiB now (peak) × processes | machine | database, broker, batch |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in runs:
        lat = r.get("latency_s") or {}
        hw, conf = r.get("hardware", {}), r.get("configuration", {})
        lines.append(
            f"| {r.get('label') or r['file']} | {started(r)} | {r['smears']} | {r['kind']} | "
            f"{r.get('throughput_smears_per_s')} | {lat.get('p50')} / {lat.get('p95')} / {lat.get('max')} | "
            f"{r['failed']} | {r['unfinished']} | {classification_rss(r)} | "
            f"{hw.get('cores')} cores, {hw.get('cpu', '')} | "
            f"{conf.get('database')}, {conf.get('broker')}, {conf.get('batch_size')} |"
        )
    return "\n".join(lines)


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (done_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        timeline = r.get("timeline") or []
        if not timeline:
            continue
        name = r.get("label") or r["file"]
        finished = sorted(t for _, t in timeline)
        done_ax.step(finished, range(1, len(finished) + 1), where="post", label=name)
        latencies = sorted(t - q for q, t in timeline)
        lat_ax.step(latencies, [100 * (i + 1) / len(latencies) for i in range(len(latencies))], where="post",
                    label=name)
    done_ax.set(xlabel="seconds since the first upload", ylabel="smears with a result",
                title="Results over time")
    lat_ax.axvline(5, color="grey", linestyle=":", linewidth=1)
    lat_ax.axhline(95, color="grey", linestyle=":", linewidth=1)
    lat_ax.set(xlabel="upload-to-result latency (s)", ylabel="% of smears at or below", title="Latency")
    for ax in (done_ax, lat_ax):
        ax.grid(alpha=0.3)
    done_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def render(doc, runs, plot_path):
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no results markers ({START} ... {END}).")
    rel = plot_path.relative_to(doc.parent) if plot_path.is_relative_to(doc.parent) else plot_path
    files = ", ".join(f"`{r['file']}`" for r in runs)
    body = f"{table(runs)}\n\n![Results over time and latency of each run]({rel.as_posix()})\n\n" \
           f"Runs: {files} (in `docs/performance/runs/`)."
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    doc.write_text(f"{before}{START}\n{body}\n{END}{after}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="loadtest JSON files (default: docs/performance/runs/*.json)")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args()
    runs = load(args.runs or sorted(RUNS.glob("*.json")))
    if not runs:
        raise SystemExit("No load-test results to render.")
    plot(runs, args.plot)
    render(args.doc, runs, args.plot)
    print(table(runs))


if __name__ == "__main__":
    main()

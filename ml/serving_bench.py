"""``python -m ml bench``: what serving costs, per runtime and batch size.

For each runtime (PyTorch when installed, ONNX Runtime when a current export is there) and batch size:
the bare forward pass on a prepared batch (``predictor.forward``), and ``predictor.predict`` on the same
number of image files (decode, resize, normalise, forward, softmax, domain check): median milliseconds
of ``runs`` timed runs after warm-up, images per second, and ``predict`` over ``forward`` (the overhead
the serving code adds to the runtime; target <= 1.3 at batch 32). Torch is imported only to time it.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from . import data as mldata
from .runtime.loader import installed, resolve_model_path


def median_ms(call, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        call()
        times.append((time.perf_counter() - tick) * 1000)
    return statistics.median(times)


def image_sources(predictor, images=None, data=None, count: int = 32, scratch: Path | None = None) -> tuple[list, str]:
    """(``count`` image sources, what they are): the given files, else the model's test images, else
    generated smear-like PNG files written to ``scratch``."""
    if images:
        return [images[i % len(images)] for i in range(count)], f"{len(images)} given files"
    config = predictor.payload.get("training", {}).get("config", {})
    data, manifest = data or config.get("data"), config.get("manifest")
    if data and manifest and Path(data).is_dir() and Path(manifest).is_file():
        test = [s for s in mldata.read_manifest(manifest) if s.split == "test"][:count]
        if test:
            return [str(Path(data) / s.path) for s in test], f"test images of {manifest}"
    scratch = Path(scratch or Path.cwd() / "var" / "bench")
    scratch.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        field = np.full((predictor.input_size, predictor.input_size, 3), (230, 215, 225), dtype=np.uint8)
        field = np.clip(field.astype(int) + rng.integers(-40, 40, field.shape), 0, 255).astype(np.uint8)
        path = scratch / f"generated-{predictor.input_size}-{i:02d}.png"
        from PIL import Image

        Image.fromarray(field).save(path)
        paths.append(str(path))
    return paths, "generated images (no data set found)"


def make_predictor(runtime: str, model_file: Path, threads: int):
    """(predictor, None) or (None, why the runtime cannot be timed here)."""
    if runtime == "onnx":
        if not installed("onnxruntime"):
            return None, "onnxruntime is not installed"
        from .runtime.export_files import StaleExport
        from .runtime.onnx_predictor import OnnxPredictor

        try:
            return OnnxPredictor(model_file, threads=threads), None
        except StaleExport as exc:
            return None, str(exc)
    if not installed("torch"):
        return None, "PyTorch is not installed (runtime profile)"
    import torch

    from .predict import Predictor

    torch.set_num_threads(threads)
    return Predictor(model_file), None


def prepared_batch(predictor, sources: list):
    if predictor.runtime == "torch":
        import torch

        return torch.stack([predictor.prepare(s)[0] for s in sources])
    return np.stack([predictor.prepare_array(s)[0] for s in sources])


def run(model=None, images=None, data=None, batches=(1, 32), runs: int = 20, threads: int = 2,
        runtimes=("torch", "onnx"), out=None, warmup: int = 3, scratch=None) -> dict:
    model_file = resolve_model_path(model).resolve()
    report = {"model_file": str(model_file), "batches": list(batches), "runs": runs, "warmup": warmup,
              "threads": threads, "machine": f"{platform.machine()}, {platform.processor() or '?'}",
              "rows": [], "skipped": {}}
    sources = None
    for runtime in runtimes:
        predictor, why = make_predictor(runtime, model_file, threads)
        if predictor is None:
            report["skipped"][runtime] = why
            continue
        if sources is None:
            sources, report["images"] = image_sources(predictor, images, data, max(batches), scratch)
            report["model"], report["model_version"] = predictor.name, predictor.version
        for batch in batches:
            chosen = [sources[i % len(sources)] for i in range(batch)]
            prepared = prepared_batch(predictor, chosen)
            forward = median_ms(lambda: predictor.forward(prepared), runs, warmup)
            predict = median_ms(lambda: predictor.predict(chosen, batch_size=batch), runs, warmup)
            report["rows"].append({"runtime": runtime, "batch": batch, "forward_ms": forward, "predict_ms": predict,
                                   "forward_images_per_s": 1000 * batch / forward,
                                   "predict_images_per_s": 1000 * batch / predict,
                                   "predict_over_forward": predict / forward})
    by = {(r["runtime"], r["batch"]): r for r in report["rows"]}
    report["onnx_speedup"] = {str(b): {k: by[("torch", b)][k] / by[("onnx", b)][k] for k in ("forward_ms", "predict_ms")}
                              for b in batches if ("torch", b) in by and ("onnx", b) in by}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def table(report: dict) -> list[str]:
    lines = [f"{report.get('model', '?')} ({report.get('model_version', '?')}), {report['threads']} threads, "
             f"median of {report['runs']} runs; predict() on {report.get('images', '-')}",
             "| runtime | batch | forward (ms) | predict (ms) | predict / forward | predict (images/s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['forward_ms']:.2f} | {r['predict_ms']:.2f} | "
                     f"{r['predict_over_forward']:.2f} | {r['predict_images_per_s']:.0f} |")
    for batch, s in report["onnx_speedup"].items():
        lines.append(f"ONNX Runtime vs PyTorch at batch {batch}: forward {s['forward_ms']:.2f}x, "
                     f"predict {s['predict_ms']:.2f}x faster")
    for runtime, why in report["skipped"].items():
        lines.append(f"{runtime}: not timed ({why})")
    return lines

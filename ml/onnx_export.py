"""``python -m ml export --model NAME``: the model file's network as ONNX, for serving without PyTorch.

Writes ``NAME.onnx`` + ``NAME.runtime.json`` + ``NAME.runtime.npz`` beside ``NAME.pt``
(``ml.runtime.export_files``), then measures the export against PyTorch on real test images of the
model's own manifest: max |difference| of logits, embeddings, probabilities and domain scores, and whether
every label and domain verdict is the same. The measurement goes to ``ml/reports/<stem>/export.json`` and
the model card's "## ONNX Runtime" section. An export whose logits or labels differ is deleted again,
so a wrong network is never left where the loader would serve it.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) with a dynamic batch dimension: the
TorchScript exporter baked the export batch size into the LSTM's initial state and gave wrong outputs at
other batch sizes (|logit difference| 4.9 at batch 5 after export at batch 2), hence the checks at 1, 5, 32.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import data as mldata
from .predict import WEIGHTS_DIR, Predictor, resolve_model_path
from .runtime.export_files import INPUT_NAME, OUTPUT_NAMES, ExportFiles, write_runtime_files
from .runtime.onnx_predictor import OnnxPredictor

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
TOLERANCE = 1e-3  # max |logit| or |embedding| difference an export may have and still be served
BATCH_SIZES = (1, 5, 32)


class _WithEmbedding(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_embedding(x)


def write_onnx(predictor: Predictor, path: Path, float16: bool = True) -> dict:
    """Export the network with a dynamic batch dimension; the exporter's record."""
    size = predictor.input_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_suffix(".tmp.onnx")
    stored = predictor.payload.get("weights_dtype") or (
        "float16" if any(v.dtype == torch.float16 for v in predictor.payload["state_dict"].values()) else "float32")
    half = float16 and stored in ("float16", "int8")
    log = io.StringIO()
    # The exporter narrates each step and warns about its own internals; kept quiet unless it fails.
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_WithEmbedding(predictor.model).eval(), (example,), str(tmp), dynamo=True,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                              external_data=False, verbose=False,
                              # float16 weights stay exact only if the exporter does not fold them into new
                              # values (batch norm into convolutions); ONNX Runtime fuses them in float32 instead
                              optimize=not half)
        except Exception:
            print(log.getvalue(), file=sys.stderr)
            raise
    import onnx

    if half:  # the model file keeps float16 (or int8) weights: so does its export, at the same size, losing nothing
        model = onnx.load(str(tmp))
        for node in model.graph.node:  # the exporter's per-node notes (source locations): megabytes, never read
            node.doc_string = ""
            del node.metadata_props[:]
        scales = store_initializers_as_int8(model) if stored == "int8" else set()
        store_initializers_as_float16(model, keep=scales)  # the scales stay float32: they are exact only so
        onnx.save(model, str(tmp))
    os.replace(tmp, path)
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)
    return {"exporter": f"torch.onnx.export dynamo=True (torch {torch.__version__})", "opset": opset,
            "dynamic_batch": True,
            "weights": ("int8 per output channel and float16, dequantized to float32 when the session starts"
                        if half and stored == "int8" else "float16, cast to float32 when the session starts" if half
                        else "float32")}


def store_initializers_as_int8(model, min_elements: int = 256) -> set[str]:
    """Every float32 weight of >= 2 dimensions that is exactly an int8 tensor times one scale per output channel
    (the weights of a ``checkpoint.store_int8`` file) stored as int8 + scale and restored by a DequantizeLinear
    node: the file shrinks to a quarter, the arithmetic stays float32. Weights that are not int8-exact (within
    float32 rounding of the scale) are left for ``store_initializers_as_float16``. Returns the scales' names."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    nodes = []
    for index, tensor in enumerate(list(graph.initializer)):
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) < 2:
            continue
        values = numpy_helper.to_array(tensor)
        if values.size < min_elements:
            continue
        peak = np.abs(values).reshape(len(values), -1).max(axis=1)
        scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
        shape = (-1,) + (1,) * (values.ndim - 1)
        quantized = np.rint(values / scale.reshape(shape)).clip(-127, 127)
        if np.abs(quantized * scale.reshape(shape) - values).max() > 1e-6 * max(float(peak.max()), 1e-12):
            continue  # not int8 weights (a constant the exporter made, or a float file)
        name = tensor.name  # read before CopyFrom: ``tensor`` is the message being overwritten
        graph.initializer[index].CopyFrom(numpy_helper.from_array(quantized.astype(np.int8), name + "__int8"))
        graph.initializer.append(numpy_helper.from_array(scale, name + "__scale"))
        nodes.append(helper.make_node("DequantizeLinear", [name + "__int8", name + "__scale"], [name], axis=0,
                                      name=name + "__dequantize"))
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return {node.input[1] for node in nodes}


def store_initializers_as_float16(model, min_elements: int = 16, keep: set[str] = frozenset()) -> None:
    """Every float32 weight (initializer) of at least ``min_elements`` values stored as float16 and cast
    back to float32 by a Cast node: the file halves, the arithmetic stays float32 (ONNX Runtime folds the
    casts when the session starts). Exact for weights that came from float16."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for index, tensor in enumerate(list(graph.initializer)):
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep:
            continue
        values = numpy_helper.to_array(tensor)
        if values.size < min_elements:
            continue
        name = tensor.name  # read before CopyFrom: ``tensor`` is the message being overwritten
        half_name = name + "__float16"
        graph.initializer[index].CopyFrom(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [name], to=TensorProto.FLOAT, name=name + "__to_float32"))
    for node in reversed(casts):
        graph.node.insert(0, node)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max()) if len(a) else 0.0


def compare(torch_predictor: Predictor, onnx_predictor: OnnxPredictor, images) -> dict:
    """Both runtimes on the same images (batch 32): differences and agreement of every output."""
    t_logits, t_emb, t_stats = torch_predictor.predict_outputs(images)
    o_logits, o_emb, o_stats = onnx_predictor.predict_outputs(images)
    t_prob, o_prob = torch_predictor.probabilities(t_logits), onnx_predictor.probabilities(o_logits)
    t_labels = [torch_predictor.decide(p) for p in t_prob]
    o_labels = [onnx_predictor.decide(p) for p in o_prob]
    t_dom = torch_predictor.domain_results(t_emb, t_stats)
    o_dom = onnx_predictor.domain_results(o_emb, o_stats)
    return {
        "n": len(images),
        "max_abs_logit_diff": _diff(t_logits, o_logits), "max_abs_embedding_diff": _diff(t_emb, o_emb),
        "max_abs_probability_diff": _diff(t_prob, o_prob), "max_abs_input_stats_diff": _diff(t_stats, o_stats),
        "max_abs_domain_score_diff": _diff([d["domain_score"] for d in t_dom], [d["domain_score"] for d in o_dom]),
        "labels_identical": sum(a == b for a, b in zip(t_labels, o_labels)),
        "in_domain_identical": sum(a["in_domain"] == b["in_domain"] for a, b in zip(t_dom, o_dom)),
    }


def batch_size_check(torch_predictor: Predictor, onnx_predictor: OnnxPredictor, images) -> dict:
    """Max |logit difference| with ONNX Runtime run at each batch size in ``BATCH_SIZES`` (torch at 32)."""
    reference = torch_predictor.predict_logits(images)
    return {str(b): _diff(reference, onnx_predictor.predict_logits(images, batch_size=b)) for b in BATCH_SIZES}


def test_images(predictor: Predictor, data: str | Path | None, limit: int | None):
    """(images, manifest, data root) of the model's test split, or (None, why, None) without the data."""
    config = predictor.payload.get("training", {}).get("config", {})
    data = data or config.get("data")
    if not data or not Path(data).is_dir():
        return None, f"data folder {data!r} not found", None
    from .robustness import load_split

    try:
        images, _, manifest = load_split(predictor, data, None, "test", limit)
        return images, str(manifest), str(data)
    except ValueError as exc:  # a model trained on every subject has no test split: its validation split will do
        from .checkpoint import held_out_splits

        if "has no 'test' images" not in str(exc) or not held_out_splits(predictor.payload):
            raise
        split = held_out_splits(predictor.payload)[0]
        images, _, manifest = load_split(predictor, data, None, split, limit)
        return images, f"{manifest} ({split} split: the model has no test split; parity needs no untouched images)", str(data)


def export(name: str | Path, data: str | Path | None = None, limit: int | None = None,
           report: str | Path | None = None, card: str | Path | None = None, float16: bool = True) -> dict:
    """Export one model file and measure the export; returns the report (also written to ``report`` and,
    for a shipped model, ``ml/reports/<stem>/export.json`` and the card ``ml/weights/<stem>.md``)."""
    model_file = resolve_model_path(name).resolve()
    files = ExportFiles.beside(model_file)
    torch_predictor = Predictor(model_file)
    tick = time.perf_counter()
    record = write_onnx(torch_predictor, files.onnx, float16)
    write_runtime_files(files, torch_predictor.payload, record)
    onnx_predictor = OnnxPredictor(model_file)
    images, manifest, data = test_images(torch_predictor, data, limit)
    synthetic = images is None
    if synthetic:  # no data set here: random fields still check the network, not real-image parity
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (torch_predictor.input_size,) * 2 + (3,), dtype=np.uint8) for _ in range(37)]
        from PIL import Image

        images = [Image.fromarray(a) for a in images]
    result = {
        "model": torch_predictor.name, "model_version": torch_predictor.version,
        "model_file": str(model_file.relative_to(Path.cwd())) if model_file.is_relative_to(Path.cwd()) else str(model_file),
        "model_sha256": mldata.sha256_file(model_file), "onnx_file": files.onnx.name,
        "onnx_sha256": mldata.sha256_file(files.onnx), "onnx_mb": round(files.onnx.stat().st_size / 1e6, 2),
        **record, "onnxruntime": _ort_version(), "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images": "random (no data set found: " + manifest + ")" if synthetic else "test split",
        "manifest": None if synthetic else manifest, "data": data, "limited": bool(limit) and not synthetic,
        "parity": compare(torch_predictor, onnx_predictor, images),
        "batch_sizes": batch_size_check(torch_predictor, onnx_predictor, images[:37]),
        "tolerance": TOLERANCE, "seconds": None,
    }
    p = result["parity"]
    result["passes"] = (p["max_abs_logit_diff"] <= TOLERANCE and p["max_abs_embedding_diff"] <= TOLERANCE
                        and max(result["batch_sizes"].values()) <= TOLERANCE and p["labels_identical"] == p["n"])
    if not result["passes"] and record["weights"] != "float32":
        # Some weights were not float16-exact in the exported graph (constants the exporter derived from
        # them): export again with float32 weights rather than ship a less faithful copy.
        return export(name, data, limit, report, card, float16=False)
    if not synthetic:
        result["latency"] = serving_latency(torch_predictor, model_file, images[0])
    result["seconds"] = round(time.perf_counter() - tick, 1)
    shipped = model_file.parent == WEIGHTS_DIR.resolve()
    report = report or (REPORTS_DIR / model_file.stem / "export.json" if shipped else None)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(result, indent=1) + "\n")
    if not result["passes"]:
        for path in (files.onnx, files.meta, files.arrays):
            path.unlink(missing_ok=True)
        raise ValueError(f"the ONNX export of {model_file.name} differs from PyTorch beyond {TOLERANCE} or in labels "
                         f"({json.dumps(p)}, batch sizes {result['batch_sizes']}); export files removed")
    card = card or (model_file.with_suffix(".md") if shipped else None)
    if card and Path(card).is_file():
        from .card_file import replace_section

        replace_section(card, "## ONNX Runtime", card_section(result, name))
    return result


def serving_latency(torch_predictor: Predictor, model_file: Path, image, threads: int = 2) -> dict:
    """Milliseconds from an encoded image (the first parity image as PNG bytes) to the answer, batch 1, ``threads``
    threads, in both runtimes: the worker serves ONNX Runtime, so its number is the one the budget is about."""
    from .profile import measure_latency

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = buffer.getvalue()
    return {"image": f"the first parity image, {image.width}x{image.height} PNG bytes",
            "onnxruntime": measure_latency(OnnxPredictor(model_file, threads=threads), encoded, threads=threads),
            "torch": measure_latency(torch_predictor, encoded, threads=threads)}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def card_section(result: dict, name) -> str:
    p, b = result["parity"], result["batch_sizes"]
    where = (f"the {p['n']} test images of `{result['manifest']}`" + (" (a subset)" if result["limited"] else "")
             if result["manifest"] else f"{p['n']} random images (no data set was found)")
    return "\n".join([
        "## ONNX Runtime",
        f"- Served by ONNX Runtime ({result['onnxruntime']}) from `{result['onnx_file']}` ({result['onnx_mb']:.2f} MB, "
        f"sha256 `{result['onnx_sha256']}`), exported from this model file (sha256 `{result['model_sha256']}`) by "
        f"`python -m ml export --model {name}` with {result['exporter']}, opset {result['opset']}, batch size dynamic. "
        "The worker serves it only while that sha256 matches the model file; a retrained model file needs a new export.",
        f"- Parity with PyTorch on {where}, batch 32: max |logit difference| {p['max_abs_logit_diff']:.2e}, "
        f"max |embedding difference| {p['max_abs_embedding_diff']:.2e}, max |probability difference| "
        f"{p['max_abs_probability_diff']:.2e}, max |domain score difference| {p['max_abs_domain_score_diff']:.2e}; "
        f"labels identical for {p['labels_identical']}/{p['n']}, domain verdicts identical for "
        f"{p['in_domain_identical']}/{p['n']}.",
        "- ONNX Runtime at batch sizes " + ", ".join(f"{k}: {v:.2e}" for k, v in b.items())
        + " (max |logit difference| against PyTorch on the first "
        f"{min(37, p['n'])} of those images). Measured in `ml/reports/<stem>/export.json`.".replace(
            "<stem>", Path(result["model_file"]).stem),
        *latency_lines(result.get("latency")),
    ]) + "\n"


def latency_lines(latency: dict | None) -> list[str]:
    if not latency:
        return []
    o, t = latency["onnxruntime"], latency["torch"]
    return [f"- Serving latency, one image ({latency['image']}) to the answer, batch 1, {o['threads']} threads, median of "
            f"{o['runs']} runs: ONNX Runtime (what the worker serves) **{o['median_ms']:.1f} ms** (p90 {o['p90_ms']:.1f}), "
            f"PyTorch {t['median_ms']:.1f} ms (p90 {t['p90_ms']:.1f})."]

"""Ship a trained model: copy its weights into ml/weights/ and write its model card from
the model file, its evaluation report and a fresh latency measurement."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from . import data as mldata
from . import models, profile
from .card_file import with_section, write_card
from .predict import WEIGHTS_DIR, Predictor
from .distill import teacher_files
from .train import TEMPERATURE_BOUNDS, TrainConfig

REPORTS_DIR = Path(__file__).resolve().parent / "reports"

TARGETS = {"accuracy": (">=", 0.99), "macro_f1": (">=", 0.99), "ece": ("<=", 0.03)}  # issue 11


def train_command(config: dict) -> str:
    """The ``python -m ml train`` line that reproduces a run: every option that differs from the default."""
    defaults = TrainConfig(data="", arch="", out="")
    parts = [f"python -m ml train --data {config.get('data')} --arch {config.get('arch')} --out {config.get('out')}"]
    for key in ("manifest", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "img_size", "seed", "balance",
                "augment_strength", "stain_augment", "stain_strength", "illumination", "blur_prob", "blur_sigma", "rgb_gain",
                "crop_prob", "crop_scale", "jpeg_prob", "downscale_prob", "affine_fill", "scale_jitter", "input_norm", "framing",
                "min_epochs",
                "threshold", "factor", "patience", "stop_patience", "pretrained_weights",
                "init_weights", "teacher", "distill_alpha", "distill_temperature", "ema_decay"):
        value = config.get(key)
        if key == "manifest" or (value is not None and value != getattr(defaults, key)):
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value  # --teacher A.pt B.pt
            parts.append(f"--{key.replace('_', '-')} {shown}")
    return " ".join(parts)


def confident_errors(report: dict, confidence: float = 0.95) -> list[str]:
    """How many test errors the model made with near-certain confidence, and where they cluster."""
    errors = report.get("errors", [])
    if not errors:
        return []
    sure = [e for e in errors if e["confidence"] >= confidence]
    groups = Counter(f"{e['true']} → {e['predicted']}" for e in sure).most_common(2)
    return [f"- {len(sure)} of the {len(errors)} test errors were made with confidence >= {confidence} "
            f"(most often {', '.join(f'{name} ({n})' for name, n in groups)}); several are consecutive files of one "
            "class, probably one slide that looks unlike the rest. A confident answer is no guarantee: the low-"
            "confidence flag catches uncertain smears, not these. Every smear needs the pathologist's review."]


def met(value: float, rule: tuple[str, float]) -> str:
    op, bound = rule
    ok = value >= bound if op == ">=" else value <= bound
    return "met" if ok else "**not met**"


def uncertainty_lines(report: dict) -> list[str]:
    """How far the test numbers could move with other slides: the evaluation's intervals over the split's groups
    of neighbouring files ([] for a report without them)."""
    from .uncertainty import against_target, interval_text

    intervals = report.get("intervals")
    if not intervals:
        return []
    per_class = ", ".join(f"{k} {v}" for k, v in intervals["groups_per_stratum"].items())
    return [f"Uncertainty: the {report['n']} test images come from {intervals['groups']} groups of neighbouring files "
            f"(about one slide each; {per_class}), and errors cluster by slide. Resampling whole groups within their "
            f"class ({intervals['resamples']} resamples, `ml.uncertainty`): accuracy "
            f"{interval_text(intervals, 'accuracy')}, macro-F1 {interval_text(intervals, 'macro_f1')}. Target "
            f"{TARGETS['accuracy'][1]}: for accuracy {against_target(intervals, 'accuracy', TARGETS['accuracy'][1])}, "
            f"for macro-F1 {against_target(intervals, 'macro_f1', TARGETS['macro_f1'][1])}"
            + (" (this test split can neither confirm nor rule it out)." if any(
                against_target(intervals, k, TARGETS[k][1]) == "inside the interval" for k in ("accuracy", "macro_f1"))
               else "."), ""]


def ship(model_path: str | Path, report_dir: str | Path, name: str, latency_image: str | Path) -> Path:
    model_path, report_dir = Path(model_path), Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    target = WEIGHTS_DIR / f"{name}.pt"
    WEIGHTS_DIR.mkdir(exist_ok=True)
    previous = None  # the model being replaced, loaded before it is overwritten: its latency is the yardstick
    if model_path.resolve() != target.resolve():
        if target.is_file() and mldata.sha256_file(target) != report["model_sha256"]:
            try:
                previous = Predictor(target)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:  # an older format: no yardstick
                print(f"{target}: the replaced model could not be loaded for a paired latency ({exc})")
        shutil.copyfile(model_path, target)
    reports = REPORTS_DIR / name
    if report_dir.resolve() != reports.resolve():
        shutil.copytree(report_dir, reports, dirs_exist_ok=True)
    predictor = Predictor(target)
    if mldata.sha256_file(target) != report["model_sha256"]:
        raise ValueError("the evaluation report was made with other weights than the ones being shipped")
    latency = profile.measure_latency(predictor, latency_image)
    if previous is not None:
        latency["against_previous"] = {"model_version": previous.payload.get("model_version"),
                                       **profile.paired_latency(predictor, previous, latency_image)}
    card = model_card(predictor, target, report, latency,
                      Path(latency_image).name, name) + robustness_section(report_dir, report["model_sha256"], name)
    domain = domain_section(report_dir, report["model_sha256"])
    if domain:
        card = with_section(card, "## Domain check", domain)
    return write_card(WEIGHTS_DIR / f"{name}.md", card, report["model_sha256"])


def _own_report(report_dir: Path, filename: str, model_sha256: str, what: str) -> dict | None:
    """A report in the folder made on the weights being shipped, or None when there is none; a report of
    other weights (another model, or this one before its check was refitted) is refused."""
    path = Path(report_dir) / filename
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("model_sha256") != model_sha256:
        raise ValueError(f"the {what} report was made with other weights than the ones being shipped: run "
                         "fit-domain --report on the file, then the robustness suite, then ship")
    return report


def domain_section(report_dir: Path, model_sha256: str) -> str:
    """The card's domain-check section from ``domain.json`` in the report folder (``python -m ml fit-domain
    --report`` on the run file before the robustness suite, so that the suite's flagged column is the check's),
    or "" when there is none."""
    from .domain_eval import markdown_section

    domain = _own_report(report_dir, "domain.json", model_sha256, "domain-check")
    return markdown_section(domain) if domain else ""


def robustness_section(report_dir: Path, model_sha256: str, name: str) -> str:
    """The card's robustness section from ``robustness.json`` in the report folder (written by
    ``python -m ml robustness --out`` into it), or "" when there is none."""
    from .robustness import card_section

    suite = _own_report(report_dir, "robustness.json", model_sha256, "robustness")
    return "\n" + card_section(suite, plot=f"../reports/{name}/robustness.png") if suite else ""


def describe_model_file(path: str | None, recorded: dict | None = None, own_versions: tuple = ()) -> str:
    """A model named on a card: from the summary the run ``recorded`` when it read the file (the file may
    have been overwritten since, as shipping does), else from the file as it is now, unless that file is
    now the model the card describes (``own_versions``): then it was shipped over, and is not described."""
    if not path:
        return ""
    summary = recorded
    if summary is None:
        try:
            from .checkpoint import model_summary, read_payload

            summary = model_summary(read_payload(path))
        except (OSError, ValueError):
            return f"`{path}` (file not available here)"
        if summary["model_version"] in own_versions:
            return (f"`{path}` as it was before these weights were shipped over it (not recorded in the weights "
                    "file; the earlier card is in git history)")
    spec = models.get_spec(summary["arch"])
    return (f"`{summary['model_version']}` ({spec.description}; "
            f"{'backbone from ImageNet weights' if summary['pretrained'] else 'from random initialisation'}; "
            f"{summary['epochs_run']} epochs, {(summary['wall_time_s'] or 0) / 60:.1f} min; trained on the "
            f"same split, manifest sha256 `{str(summary['manifest_sha256'])[:12]}…`)")


def lineage(config: dict, ancestors: dict | None = None, own_versions: tuple = ()) -> list[str]:
    """How the weights came to be, when more than one run led to them (``ancestors``: the run's record of
    its init and teacher models, ``payload["training"]["ancestors"]``; ``own_versions``: the described
    model's own version names, see ``describe_model_file``)."""
    ancestors = ancestors or {}
    lines = []
    if config.get("init_weights"):
        lines.append("- Warm start: every weight initialised from "
                     f"{describe_model_file(config['init_weights'], ancestors.get('init_weights'), own_versions)}.")
    if config.get("teacher"):
        files = teacher_files(config["teacher"])
        recorded = ancestors.get("teachers") or [ancestors.get("teacher")]
        described = [describe_model_file(file, recorded[i] if i < len(recorded) else None)
                     for i, file in enumerate(files)]
        whose = (f"the teacher {described[0]}" if len(files) == 1 else
                 f"{len(files)} teachers, their probabilities averaged (an ensemble in one model): " + "; ".join(described))
        lines.append(f"- Knowledge distillation (Hinton et al.): loss = {1 - config.get('distill_alpha', 0.5):.2f} x "
                     f"cross-entropy + {config.get('distill_alpha', 0.5):.2f} x T² KL to the soft labels of {whose}, "
                     f"at T = {config.get('distill_temperature')}. The soft labels were computed on training images "
                     "only (mean over the 8 flips and 90° rotations). Teachers and student used the validation split "
                     "only for learning-rate decisions and temperature fitting; none ever saw a test image.")
    if config.get("ema_decay"):
        lines.append(f"- Weight averaging: the shipped weights are an exponential moving average of the weights along "
                     f"the run (decay {config['ema_decay']} per optimiser step), not the last or best raw weights; "
                     "the average was validated each epoch beside them.")
    return lines


def speed_against_previous(paired: dict | None) -> list[str]:
    if not paired:
        return []
    return [f"- Against the model it replaced (`{paired['model_version']}`), measured in turn in one process "
            f"({paired['rounds']} rounds of {paired['runs']} runs, `ml.profile.paired_latency`): median ratio "
            f"**{paired['median_ratio']:.2f}** (rounds {min(paired['ratios']):.2f}-{max(paired['ratios']):.2f}; "
            f"this model {min(paired['ms']):.1f}-{max(paired['ms']):.1f} ms, the replaced one "
            f"{min(paired['reference_ms']):.1f}-{max(paired['reference_ms']):.1f} ms). The machine is shared and "
            "its speed drifts: the ratio holds where one absolute number may not."]


def own_versions(payload: dict) -> tuple:
    """The version names a model file goes by: its own and, for a test-time copy, its source's."""
    return tuple(v for v in (payload.get("model_version"), payload.get("test_time_from", {}).get("model_version")) if v)


def flip_averaging_lines(payload: dict) -> list[str]:
    source = payload.get("test_time_from", {})
    weights = (f"the weights are those of `{source.get('model_version', '?')}` (sha256 "
               f"`{str(source.get('sha256', '?'))[:12]}…`), trained as described under Training")
    record = "Chosen on the validation split: see `ml/reports/staging/test-time-flips/README.md`."
    if payload.get("test_time_flips"):
        return [f"- Test-time augmentation: each field and its horizontal mirror image go through the network and their "
                "logits and embeddings are averaged (`ml.models.FlipAveraged`, made by `python -m ml tta`): "
                f"{weights}; the MFLOPs above count both passes. {record}"]
    if payload.get("token_flips"):
        from .checkpoint import FLIP_PLACES

        axis = payload.get("token_flip_axis", "left-right")  # files made before up-down existed are left-right
        where = next(w for w, (_, _, a) in FLIP_PLACES.items() if a == axis)
        return [f"- Test-time augmentation at the token grid: the backbone runs once, the sequence head reads its "
                f"feature map and the feature map's {axis} mirror image, and the two logits are averaged "
                f"(`ml.models.TokenFlipAveraged`, made by `python -m ml tta --where {where}`): "
                f"{weights}; only the head runs twice. {record}"]
    return []


def model_card(predictor: Predictor, weights: Path, report: dict, latency: dict, latency_image: str, name: str) -> str:
    payload = predictor.payload
    training = payload.get("training", {})
    config = training.get("config", {})
    spec = models.get_spec(payload["arch"])
    manifest = mldata.read_manifest(report["manifest"])
    counts = Counter((s.split, s.label) for s in manifest)
    classes = list(predictor.classes)
    flops = profile.count_flops(predictor.model, predictor.input_size)
    split_rows = [f"| {split} | " + " | ".join(str(counts[(split, c)]) for c in classes) +
                  f" | {sum(counts[(split, c)] for c in classes)} |" for split in mldata.SPLITS]
    per_class = [f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
                 for c, m in report["per_class"].items()]
    history = training.get("history", [])
    return "\n".join([
        f"# Model card: `{name}`",
        "",
        f"Version `{predictor.version}` · weights `ml/weights/{weights.name}` "
        f"({profile.file_megabytes(weights):.2f} MB) · sha256 `{mldata.sha256_file(weights)}`",
        "",
        "Decision support for staging B-lineage acute lymphoblastic leukaemia from one peripheral blood smear "
        "field. It is a pre-classification for a pathologist to confirm or override, not a diagnosis.",
        "",
        "## Architecture",
        f"- Registry name `{payload['arch']}`: {spec.description}.",
        f"- Backbone `timm.{spec.backbone}` "
        + (f"initialised from ImageNet weights (`{Path(str(config['pretrained_weights'])).name}`, loaded from a local "
           "file; nothing is downloaded)" if config.get("pretrained_weights") else "trained from random initialisation")
        + f"; its last feature map is read as {predictor.input_size // 32}x{predictor.input_size // 32} = "
        f"{(predictor.input_size // 32) ** 2} spatial tokens in raster order, projected to 128 dimensions and "
        f"fed to {SEQUENCE_MODELS.get(spec.head, spec.head)}; its summary is classified by a linear layer.",
        f"- {models.count_parameters(predictor.model) / 1e6:.2f} M parameters, {flops / 1e6:.0f} MFLOPs per image "
        f"at {predictor.input_size}x{predictor.input_size}.",
        *flip_averaging_lines(payload),
        "",
        "## Input and output",
        f"- Input: any image Pillow reads (EXIF orientation applied, converted to 8-bit RGB), resized to "
        f"{predictor.input_size}x{predictor.input_size} (bilinear, aspect not kept: the training fields are square).",
        ("- Normalisation: each image standardised per RGB channel by its own mean and standard deviation "
         "(`ml.data.normalise(..., \"image\")`, the same function in training and prediction), so a stain, white "
         "balance, exposure or contrast change that scales or shifts a channel does not reach the model."
         if payload.get("input_norm") == "image" else
         f"- Normalisation: mean {payload['mean']}, std {payload['std']} (ImageNet statistics)."),
        f"- Class order: {classes} (Early = Early Pre-B, Pre = Pre-B, Pro = Pro-B ALL; Benign = hematogones).",
        (f"- Output: softmax of logits / T with temperature T = {predictor.temperature:.3f}, fitted on "
         f"{payload['calibration']['examples']} examples: the {payload['calibration']['fitted_on']}, clean and under "
         f"{len(payload['calibration']['perturbations'])} acquisition changes ({payload['calibration']['errors']} "
         "errors to calibrate on; `python -m ml calibrate`); the stage is the most probable class."
         if "calibration" in payload else
         f"- Output: softmax of logits / T with temperature T = {predictor.temperature:.3f}, fitted on the "
         "validation split (temperature scaling); the stage is the most probable class.")
        + (" The NLL optimum lay below the search bound (the validation split has almost no errors), so T sits "
           "at the bound: probabilities are sharpened but stay informative for the low-confidence review flags."
           if abs(predictor.temperature - TEMPERATURE_BOUNDS[0]) < 1e-9 else ""),
        "",
        "## Data and split",
        f"- Training data: `{config.get('data')}`, the Taleqani Hospital ALL image set less the hold-out "
        "that the project is scored on (Ghaderzadeh et al., 2022; images not redistributed).",
        f"- Split manifest: `{report['manifest']}` (sha256 `{report['manifest_sha256']}`). Images are grouped in "
        f"runs of {config.get('block_size', 20)} consecutive file numbers per class (neighbours often come from "
        "the same slide) merged with exact duplicates (sha256); whole groups go to one side, class proportions kept. "
        "Balancing (oversampling) and augmentation were applied to the training split only, after the split.",
        "",
        "| split | " + " | ".join(classes) + " | total |",
        "| --- " * (len(classes) + 2) + "|",
        *split_rows,
        "",
        "## Test metrics (untouched test split)",
        "",
        "| metric | value | target |",
        "| --- | --- | --- |",
        f"| accuracy | {report['accuracy']:.4f} | >= {TARGETS['accuracy'][1]}, {met(report['accuracy'], TARGETS['accuracy'])} |",
        f"| macro-F1 | {report['macro_f1']:.4f} | >= {TARGETS['macro_f1'][1]}, {met(report['macro_f1'], TARGETS['macro_f1'])} |",
        f"| expected calibration error (15 bins) | {report['ece']:.4f} | <= 0.03, {met(report['ece'], TARGETS['ece'])} |",
        f"| ECE without temperature scaling | {report['uncalibrated_ece']:.4f} | |",
        "",
        *uncertainty_lines(report),
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
        *per_class,
        "",
        f"Confusion matrix and misclassified files: [`ml/reports/{name}/report.md`](../reports/{name}/report.md). "
        f"Reproduce: `python -m ml evaluate --data ../shared/data/taleqani-all --model {name}`.",
        "",
        "## Speed",
        f"- One {predictor.input_size}x{predictor.input_size} image, once loaded, from a JPEG path to probabilities "
        f"(decode, resize, normalise, forward, softmax): median **{latency['median_ms']:.1f} ms**, "
        f"p90 {latency['p90_ms']:.1f} ms over {latency['runs']} runs after warm-up, batch 1, "
        f"{latency['threads']} torch threads (`{latency_image}`); target <= 30 ms, "
        f"{'met' if latency['median_ms'] <= 30 else '**not met**'}.",
        *speed_against_previous(latency.get("against_previous")),
        "",
        "## Training",
        f"- `{train_command(config)}`",
        f"- AdamW (lr {config.get('lr')}, weight decay {config.get('weight_decay')}), batch {config.get('batch_size')}, "
        f"label smoothing {config.get('label_smoothing')}, LRA learning-rate adjuster (threshold "
        f"{config.get('threshold')}, factor {config.get('factor')}, patience {config.get('patience')}, "
        f"stop after {config.get('stop_patience')} reductions without improvement).",
        f"- Augmentation (training only): {augmentation_text(config)}.",
        *([f"- Weights stored in float16 (`ml.checkpoint.store_float16`, {profile.file_megabytes(weights):.1f} MB); "
           "computed in float32; every number on this card was measured on the stored file."]
          if payload.get("weights_dtype") == "float16" else []),
        *([f"- Stopped by hand after {training.get('epochs_run')} of {config.get('epochs')} epochs (time budget), "
           "with the best weights by validation loss so far (`python -m ml export`)."]
          if history and not history[-1].get("stop") and training.get("epochs_run", 0) < config.get("epochs", 0) else []),
        *lineage(config, training.get("ancestors"), own_versions(payload)),
        f"- {training.get('epochs_run')} epochs run, best epoch {training.get('best_epoch', -1) + 1}; "
        f"wall time {training.get('wall_time_s', 0) / 60:.1f} min on {training.get('hardware')}; "
        f"finished {training.get('finished')}.",
        f"- Final validation accuracy {history[-1]['val_acc']:.4f} (last epoch)." if history else "",
        "",
        "## Limitations",
        *confident_errors(report),
        "- Trained on one hospital's images (one camera, one staining protocol); other labs' smears may differ "
        "in stain and illumination. Validate locally before use.",
        "- The split keeps runs of neighbouring images together but patient identities are not available, so "
        "images of one patient may still fall on both sides; the hold-out score may be lower than the test score.",
        "- Not a medical device. A pathologist signs out the diagnosis.",
        "",
    ])


SEQUENCE_MODELS = {"lstm": "a one-layer LSTM (128 hidden)", "bigru": "a bidirectional GRU (128 hidden per direction)",
                   "vit": "a small ViT encoder", "pool": "global average pooling"}


def augmentation_text(config: dict) -> str:
    """The training augmentation of a run's config, in words."""
    s = config.get("augment_strength", 1.0)
    parts = []
    if s > 0:
        fill = " (corners filled with the image's median colour)" if config.get("affine_fill") == "median" else ""
        jitter = config.get("scale_jitter") or 0
        low, high = (1 - jitter, 1 + jitter) if jitter > 0 else (1 - 0.08 * s, 1 + 0.12 * s)
        parts.append(f"horizontal/vertical flips, 90° rotations, affine ±{15 * s:.0f}°{fill}, ±{6 * s:.0f}% shift, scale "
                     f"{low:.2f}-{high:.2f}, brightness/contrast/saturation ±{20 * s:.0f}%, hue "
                     f"±{0.03 * s:.3f}")
    if config.get("crop_prob"):
        parts.append(f"with probability {config['crop_prob']} a random crop of {config.get('crop_scale', 0.5)}-1 of "
                     "the area at aspect 3:4-4:3 (framing, camera aspect)")
    if config.get("stain_augment") == "hed":
        parts.append(f"HED stain jitter ±{config.get('stain_strength')}")
    if config.get("rgb_gain"):
        parts.append(f"white-balance gains ±{config['rgb_gain']}")
    if config.get("illumination"):
        parts.append(f"brightness and gamma ±{config['illumination']}")
    if config.get("blur_prob"):
        parts.append(f"with probability {config['blur_prob']} a focus blur up to sigma {config.get('blur_sigma')} px")
    if config.get("jpeg_prob"):
        parts.append(f"with probability {config['jpeg_prob']} a JPEG re-encoding at quality 30-95")
    if config.get("downscale_prob"):
        parts.append(f"with probability {config['downscale_prob']} a lower camera resolution (down to x0.3-1 and back "
                     "up, bilinear or bicubic)")
    return "; ".join(parts) or "none"

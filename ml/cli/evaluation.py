"""Commands that measure a model: evaluate, fit-domain, robustness, calibrate, explain-eval."""
from __future__ import annotations

from pathlib import Path

def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate

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
    from ..domain_eval import evaluate_domain, markdown_section
    from ..domain_fit import fit_model_domain
    from ..predict import Predictor, resolve_model_path

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
            from ..card_file import refresh_weights_line, replace_section

            replace_section(args.card, "## Domain check", markdown_section(report))
            refresh_weights_line(args.card, resolve_model_path(args.model))
            print(f"model card section written: {args.card}")
    return 0


def domain_evaluation_split(fit_record: dict) -> str:
    """The untouched test split, or for a model trained on every subject (no test split) the check's own
    validation split: the card then says the rates are not from untouched images."""
    from .. import data as mldata

    manifest = fit_record["manifest"]
    has_test = any(s.split == "test" for s in mldata.read_manifest(manifest))
    return "test" if has_test else fit_record["val_splits"][0]


def cmd_robustness(args) -> int:
    from .. import robustness

    out = args.out or f"runs/robustness/{Path(str(args.model)).stem}-{args.split}"
    report = robustness.run(args.model, args.data, args.manifest, args.split, out, which=args.perturbations,
                            limit=args.limit)
    print("\n".join(robustness.table(report)))
    mild = [r for r in report["perturbations"] if r["mild"]]
    print(f"{len(mild) - len(report['mild_below_target'])} of {len(mild)} mild changes at "
          f"{robustness.target_text(report)}; report in {out}/ ({report['seconds']:.0f} s)")
    return 0


def cmd_calibrate(args) -> int:
    from ..calibrate import calibrate

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


def cmd_explain_eval(args) -> int:
    from ..explain import evaluate

    out = args.out or f"runs/explain/{Path(str(args.model)).stem}-{args.split}"
    report = evaluate(args.model, args.data, args.manifest, args.split, args.methods, args.limit, out)
    for name, r in report["methods"].items():
        print(f"{name}: blurring the hottest {r['fraction']:.0%} costs the predicted class {r['hottest_drop']:.4f}, "
              f"the coldest {r['coldest_drop']:.4f} (ratio {r['ratio']:.2f}; log-odds {r['hottest_log_odds_drop']:.3f} "
              f"vs {r['coldest_log_odds_drop']:.3f}); {'passes' if r['passes'] else 'fails'} the target "
              f"(>= 0.2 and >= 3x); {r['seconds_per_map']:.2f} s per map; n={r['n']}")
    print(f"report in {out}/explain.json")
    return 0


def add_split_arguments(parser, default_out: str) -> None:
    """--data, --model, --manifest, --split and --out: a model scored on one split of its manifest."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="model file or shipped name")
    parser.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", help=f"report folder (default {default_out}/NAME-SPLIT)")


def add_commands(commands) -> None:
    """Register this stage's commands on the ``python -m ml`` subparsers."""
    evaluate = commands.add_parser("evaluate", help="score a model on a manifest split")
    add_split_arguments(evaluate, "runs/eval")
    evaluate.add_argument("--other-data", help="the other model's data set (C-NMC for staging, Taleqani for "
                          "screening): its untouched split is one of the out-of-domain sets")
    evaluate.add_argument("--no-domain", action="store_true", help="skip the domain check's out-of-domain sets")
    evaluate.set_defaults(handler=cmd_evaluate)

    fit_domain = commands.add_parser("fit-domain", help="fit a model's domain check on its own splits, store it in "
                                     "the model file, and measure it")
    fit_domain.add_argument("--model", required=True, help="model file or shipped name (the file is updated)")
    fit_domain.add_argument("--data", required=True, help="the model's data set (its manifest's root)")
    fit_domain.add_argument("--other-data", help="the other model's data set, for the kind classifier")
    fit_domain.add_argument("--rate", type=float, default=0.01, help="target false-flag rate on the validation split")
    fit_domain.add_argument("--report", help="write the measurement (JSON) here")
    fit_domain.add_argument("--card", help="model card (markdown) whose '## Domain check' section is rewritten")
    fit_domain.add_argument("--no-progress", action="store_true")
    fit_domain.set_defaults(handler=cmd_fit_domain)

    rob = commands.add_parser("robustness", help="accuracy per acquisition change (stain, light, focus, framing...)")
    add_split_arguments(rob, "runs/robustness")
    rob.add_argument("--perturbations", default="all", help="all, mild, or comma-separated families/names")
    rob.add_argument("--limit", type=int, help="score only N images of the split (smoke runs)")
    rob.set_defaults(handler=cmd_robustness)

    cal = commands.add_parser("calibrate", help="refit a model file's temperature on the perturbed validation split")
    cal.add_argument("--data", required=True)
    cal.add_argument("--model", required=True, help="model file (rewritten in place unless --dry-run)")
    cal.add_argument("--manifest", help="defaults to the manifest the model was trained with")
    cal.add_argument("--perturbations", default="all", help="all, mild, or comma-separated families/names")
    cal.add_argument("--limit", type=int, help="use only N images per split (smoke runs)")
    cal.add_argument("--out", help="folder for calibration.json")
    cal.add_argument("--dry-run", action="store_true", help="report only; leave the model file as it is")
    cal.set_defaults(handler=cmd_calibrate)

    exe = commands.add_parser("explain-eval", help="deletion test of the heat map methods on a split")
    add_split_arguments(exe, "runs/explain")
    exe.add_argument("--methods", nargs="+", default=["greedy", "occlusion", "gradcam"],
                     choices=["greedy", "occlusion", "gradcam"])
    exe.add_argument("--limit", type=int, help="use only N images of the split")
    exe.set_defaults(handler=cmd_explain_eval)

"""One command line: ``python -m ml {split,train,evaluate,predict,...}``.

The commands live with their workflow stage: ``training`` (split, models, train, tta, benchmark, screening),
``evaluation`` (evaluate, fit-domain, robustness, calibrate, explain-eval) and ``serving`` (predict, explain,
export, bench, ship). Each registers its parsers and handlers; ``main`` parses and dispatches.
"""
from __future__ import annotations

import argparse
import sys

from . import evaluation, serving, training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in (training, evaluation, serving):
        stage.add_commands(commands)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``smr`` command: one entry point, one sub-command per job.

Each module listed in ``COMMAND_MODULES`` exposes ``add_parsers(subparsers)``, which registers its
sub-commands with ``set_defaults(func=...)``. Those modules import only argparse-level things at
the top, so ``smr --help`` stays fast; heavy imports (torch, onnxruntime) happen inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from smr import __version__

COMMAND_MODULES = [
    "smr.data.cli",  # data check
    "smr.synth.cli",  # synth, synth-slide
    "smr.train.cli",  # train, evaluate, cv
    "smr.export.cli",  # export
    "smr.serving.cli",  # serve, bench
    "smr.clients.cli",  # classify, score-slide, score-slides
    "smr.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smr",
        description="Spatial Maturity Regression: classify bone-marrow cells and place each one "
        "on a learnt maturation curve.",
    )
    parser.add_argument("--version", action="version", version=f"smr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `smr data check DIR --json | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

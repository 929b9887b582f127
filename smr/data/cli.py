"""``smr data ...``: tools for folder data sets (only argparse is imported at the top)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="inspect a folder data set",
        description="Tools for folder data sets: ROOT/<class>/**/*.{png,jpg,jpeg,tif,tiff} plus "
        "ROOT/lineages.toml (see docs/data.md).",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data.set_defaults(func=lambda args: _no_subcommand(data))

    check = data_sub.add_parser(
        "check",
        help="counts, lineages, image sizes and problems of a data set",
        description="Check a folder data set: per-class image counts, the lineages and their stage "
        "order, image size statistics, damaged files and mismatches between the spec and the class "
        "folders. Exit status: 0 usable, 1 not usable (errors listed), 2 bad arguments.",
    )
    check.add_argument("root", metavar="DIR", help="data set folder (one sub-folder per class)")
    check.add_argument(
        "--spec", metavar="FILE", default=None, help="lineage spec to use instead of DIR/lineages.toml"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(func=run_check)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    print("\nsmr data: error: choose a command: check", file=sys.stderr)
    return 2


def run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .check import check_dataset, format_report

    root = Path(args.root)
    if not root.is_dir():
        print(f"smr data check: error: {root} is not a folder", file=sys.stderr)
        return 2
    if args.spec is not None and not Path(args.spec).is_file():
        print(f"smr data check: error: spec file {args.spec} not found", file=sys.stderr)
        return 2
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    report = check_dataset(root, args.spec, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.usable else 1

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

    crop = data_sub.add_parser(
        "crop",
        help="cut the labelled cells of annotated slides into a folder data set",
        description="Crop every labelled detection of each SLIDE (its detections: SLIDE's folder's "
        "detections.csv, or --detections) into OUT/<class>/<slide>_<id>.png at --mpp microns per "
        "pixel, as score-slide crops cells, and write OUT/lineages.toml (the --spec's lineages with "
        "that scale). Detections without a class, or of a class the spec does not name, are left out "
        "and counted. Several slides, or several calls with the same OUT, make one data set.",
    )
    crop.add_argument("slides", metavar="SLIDE", nargs="+", help="slide files (TIFF, ... or an image)")
    crop.add_argument("--out", metavar="DIR", required=True, help="data set folder (created)")
    crop.add_argument("--spec", metavar="FILE", required=True, help="lineages.toml naming the classes")
    crop.add_argument("--size", type=int, required=True, metavar="PX", help="patch side in pixels")
    crop.add_argument("--mpp", type=float, required=True, metavar="UM", help="microns per pixel of patches")
    crop.add_argument(
        "--detections",
        metavar="FILE",
        help="detections (CSV id,x,y,class or QuPath GeoJSON) of a single SLIDE "
        "(default: detections.csv beside each slide)",
    )
    crop.add_argument(
        "--slide-mpp", type=float, metavar="UM", help="level-0 resolution of slides that do not state it"
    )
    crop.set_defaults(func=run_crop)


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    print("\nsmr data: error: choose a command: check, crop", file=sys.stderr)
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


def run_crop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smr.clients.errors import InputError
    from smr.core.lineages import MPP_RANGE, SpecError, load_spec

    from .crop import crop_slide

    def fail(message: str) -> int:
        print(f"smr data crop: error: {message}", file=sys.stderr)
        return 2

    if args.detections and len(args.slides) > 1:
        return fail("--detections is for one SLIDE; for several, put detections.csv beside each slide")
    if not 16 <= args.size <= 1024:
        return fail(f"--size {args.size}: choose 16..1024 pixels")
    if not MPP_RANGE[0] <= args.mpp <= MPP_RANGE[1]:
        return fail(f"--mpp {args.mpp}: choose {MPP_RANGE[0]}..{MPP_RANGE[1]} microns per pixel")
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        return fail(str(exc))
    jobs = [
        (Path(s), Path(args.detections) if args.detections else Path(s).parent / "detections.csv")
        for s in args.slides
    ]
    missing = [str(d) for _, d in jobs if not d.is_file()]
    if missing:
        return fail(f"no detections file {missing[0]}; pass --detections FILE")
    total = 0
    for slide, detections in jobs:
        try:
            result = crop_slide(
                slide, detections, args.out, spec, size=args.size, mpp=args.mpp, slide_mpp=args.slide_mpp
            )
        except (InputError, ValueError) as exc:
            return fail(f"{slide}: {exc}")
        n = sum(result.written.values())
        total += n
        left_out = result.unlabelled + sum(result.unknown.values()) + result.outside
        print(
            f"{slide}: {n} patches"
            + (f"; left out {result.unlabelled} without a class, {sum(result.unknown.values())} of unknown "
               f"classes, {result.outside} off the slide" if left_out else "")
        )  # fmt: skip
    print(f"{total} patches of {args.size} px at {args.mpp:g} µm/px in {args.out}")
    return 0

"""``smr synth`` and ``smr synth-slide``: synthetic marrow patches and whole slides.

Only argparse is imported at the top; the generator is imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys


def add_parsers(subparsers) -> None:
    """Add ``smr synth`` and ``smr synth-slide`` to the ``smr`` command's sub-parsers."""
    _add_synth_parser(subparsers)
    _add_slide_parser(subparsers)


def _add_synth_parser(subparsers) -> None:
    """``smr synth OUT``: a patch data set."""
    synth = subparsers.add_parser(
        "synth",
        help="write a synthetic bone-marrow patch data set (15 classes, true maturity known)",
        description="Write a synthetic bone-marrow cell data set: one folder of PNG patches per class "
        "(the paper's 15 classes), lineages.toml, manifest.csv (path, class, lineage, maturity) and "
        "synth.json. Lineage cells are drawn from a continuous latent maturity; their class is the stage "
        "it falls in, with label noise near stage boundaries. Same seed, same bytes. See docs/synthetic.md.",
    )
    synth.add_argument("out", metavar="OUT", help="output folder (created; must not exist or be empty)")
    synth.add_argument(
        "--n-cells", type=int, default=1000, metavar="N", help="number of patches (default 1000)"
    )
    synth.add_argument(
        "--size", type=int, default=96, metavar="PX", help="patch width = height in pixels (96)"
    )
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    synth.add_argument(
        "--workers", type=int, default=1, metavar="W", help="processes to render with (default 1)"
    )
    _add_population_arguments(synth)
    synth.add_argument("--overwrite", action="store_true", help="replace OUT if it is not empty")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)


def _add_population_arguments(synth: argparse.ArgumentParser) -> None:
    """``smr synth``'s class balance, label noise, stains and neighbours."""
    synth.add_argument(
        "--min-per-class",
        type=int,
        default=20,
        metavar="K",
        help="at least K cells of every class, capped at N/15 (default 20); the rest follow marrow "
        "proportions",
    )
    synth.add_argument(
        "--label-noise",
        type=float,
        default=0.1,
        metavar="T",
        help="width of the zone of annotator disagreement at stage boundaries, as a fraction of a stage "
        "(default 0.1; 0 for exact labels)",
    )
    synth.add_argument(
        "--slides",
        type=int,
        default=12,
        metavar="K",
        help="virtual slides, each with its own stain (default 12)",
    )
    synth.add_argument(
        "--stain-variation",
        type=float,
        default=1.0,
        metavar="F",
        help="scale of the slide-to-slide stain variation (default 1; 0 stains every slide alike)",
    )
    synth.add_argument(
        "--no-neighbours", action="store_true", help="no fragments of neighbouring cells at patch borders"
    )


def _add_slide_parser(subparsers) -> None:
    """``smr synth-slide OUT``: a whole slide with its detections."""
    slide = subparsers.add_parser(
        "synth-slide",
        help="write a synthetic whole slide (pyramidal TIFF) with its cell detections",
        description="Write a synthetic bone-marrow slide: OUT/slide.tiff (tiled pyramidal TIFF that "
        "tiffslide and OpenSlide open), OUT/detections.csv (id,x,y,class in level-0 pixels), "
        "OUT/detections.geojson (QuPath-style detections with classification and true maturity), "
        "OUT/slide.json and OUT/thumbnail.png. Cells are drawn like `smr synth` patches at the slide's "
        "pixel size. See docs/synthetic.md.",
    )
    slide.add_argument("out", metavar="OUT", help="output folder (created; must not exist or be empty)")
    slide.add_argument(
        "--cells", type=int, default=500, metavar="N", help="nucleated cells on the slide (500)"
    )
    slide.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    slide.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="level-0 size in pixels (default: square, about 1000 square micrometres of smear per cell)",
    )
    slide.add_argument(
        "--mpp", type=float, default=0.25, help="micrometres per pixel at level 0 (default 0.25)"
    )
    slide.add_argument("--tile", type=int, default=512, metavar="PX", help="TIFF tile size (default 512)")
    slide.add_argument(
        "--compression", choices=("jpeg", "deflate"), default="jpeg", help="tile compression (default jpeg)"
    )
    slide.add_argument("--quality", type=int, default=90, metavar="Q", help="JPEG quality (default 90)")
    slide.add_argument(
        "--geometry",
        choices=("polygon", "point"),
        default="polygon",
        help="GeoJSON geometry of a detection: the cell outline or its centre (default polygon)",
    )
    slide.add_argument(
        "--label-noise", type=float, default=0.1, metavar="T", help="label noise at stage boundaries (0.1)"
    )
    slide.add_argument("--overwrite", action="store_true", help="replace OUT if it is not empty")
    slide.add_argument("--no-progress", action="store_true", help="no progress bar")
    slide.set_defaults(func=run_synth_slide)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def run_synth(args: argparse.Namespace) -> int:
    from .patches import SynthSettings, write_patches
    from .summary import format_patch_summary

    settings = SynthSettings(
        n_cells=args.n_cells,
        size=args.size,
        seed=args.seed,
        min_per_class=args.min_per_class,
        label_noise=args.label_noise,
        slides=args.slides,
        stain_variation=args.stain_variation,
        neighbours=not args.no_neighbours,
    )
    try:
        summary = write_patches(
            args.out, settings, workers=args.workers, overwrite=args.overwrite, progress=_progress(args)
        )
    except (ValueError, FileExistsError) as e:
        print(f"smr synth: error: {e}", file=sys.stderr)
        return 2
    print(format_patch_summary(summary))
    return 0


def run_synth_slide(args: argparse.Namespace) -> int:
    from .slide import SlideSettings, write_slide
    from .summary import format_slide_summary

    width, height = args.size if args.size else (None, None)
    settings = SlideSettings(
        cells=args.cells,
        seed=args.seed,
        width=width,
        height=height,
        mpp=args.mpp,
        tile=args.tile,
        compression=args.compression,
        quality=args.quality,
        label_noise=args.label_noise,
        geometry=args.geometry,
    )
    try:
        summary = write_slide(args.out, settings, overwrite=args.overwrite, progress=_progress(args))
    except (ValueError, FileExistsError) as e:
        print(f"smr synth-slide: error: {e}", file=sys.stderr)
        return 2
    print(format_slide_summary(summary))
    return 0

"""``smr classify``, ``smr score-slide`` and ``smr score-slides``: the SMR server from the command line."""

from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial
from pathlib import Path

from smr.clients.retry import DEFAULT_RETRIES, RETRY_BUDGET
from smr.core.contract import ENSEMBLE
from smr.core.lineages import MPP_RANGE

from .defaults import DEFAULT_FLAGGED, DEFAULT_MARGIN, DEFAULT_PER_CLASS

DEFAULT_URL = os.environ.get("SMR_URL", "127.0.0.1:8001")
COMPRESSIONS = ("none", "gzip", "deflate")


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _bounded(kind: type, lo: float, hi: float, what: str, *, open_low: bool = False):
    """An argparse type: a ``kind`` in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``), else a message."""

    def convert(text: str) -> int | float:
        value = _number(text, kind)
        if value > hi or value < lo or (open_low and value == lo):
            low = f"> {lo:g}" if open_low else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what} must be {low} and <= {hi:g}")
        return value

    convert.__name__ = what  # argparse names the type in its messages
    return convert


_positive_int = _bounded(int, 1, 4096, "a count")
_margin = _bounded(float, 0.0, 1.0, "an SVM probability margin")
_port = _bounded(int, 1, 65535, "a TCP port")
_timeout = _bounded(float, 0.0, 86400.0, "seconds", open_low=True)
_retries = _bounded(int, 0, 100, "retries")
_in_flight = _bounded(int, 1, 256, "requests in flight")
_parallel = _bounded(int, 1, 64, "slides at once")
_gallery = _bounded(int, 0, 10000, "cells")
_level = _bounded(int, 0, 64, "a pyramid level")
_mpp = _bounded(float, MPP_RANGE[0], MPP_RANGE[1], "microns per pixel")


def _url(text: str) -> str:
    """One ``HOST:PORT`` or several, comma-separated: the client spreads its requests over them."""
    from smr.clients.client import check_urls

    try:
        return ",".join(check_urls(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def _add_server_args(p: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """The "server" options: where, how to send requests, TLS, the review margin and client metrics."""
    g = p.add_argument_group("server")
    _add_connection_args(g)
    _add_request_args(g)
    _add_tls_args(g)
    g.add_argument(
        "--margin",
        type=_margin,
        default=None,
        metavar="T",
        help="flag a cell for review when its two most probable classes differ by less than T in SVM "
        f"probability (0..1; default: the server's, the model's own; {DEFAULT_MARGIN:g} where it serves "
        "none)",
    )
    if metrics:
        g.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="serve client metrics for Prometheus on this port (/metrics)",
        )


def _add_connection_args(g) -> None:
    """Where the server is, which model, and how long and how often a request is tried."""
    g.add_argument(
        "--url",
        type=_url,
        default=DEFAULT_URL,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="gRPC address of the SMR server, no scheme (default: $SMR_URL or %(default)s; Triton serves "
        "gRPC on 8001, HTTP on 8000); several servers of the same repository comma-separated: each batch "
        "goes to the one with the fewest requests outstanding, and to another when one fails (--max-in-"
        "flight counts the requests to all of them)",
    )
    g.add_argument("--model", default=ENSEMBLE, help="name of the ensemble (default: %(default)s)")
    g.add_argument(
        "--timeout",
        type=_timeout,
        default=120.0,
        metavar="S",
        help="seconds one request (a whole batch) may take (default: %(default)s)",
    )
    g.add_argument(
        "--retries",
        type=_retries,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="most retries of a request, with exponential back-off, while the server is unavailable or "
        f"restarting; they stop {RETRY_BUDGET:g} s after its first attempt (default: %(default)s)",
    )


def _add_request_args(g) -> None:
    """How requests are sent: their size, how many at once, their compression."""
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="B",
        help="images per request (default and maximum: the server's max_batch_size)",
    )
    g.add_argument(
        "--max-in-flight",
        type=_in_flight,
        default=4,
        metavar="N",
        help="requests awaiting an answer at once (default: %(default)s)",
    )
    g.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="compress requests (default: %(default)s; gzip helps on slow networks)",
    )


def _add_tls_args(g) -> None:
    """TLS, optionally with a client certificate."""
    g.add_argument("--ssl", action="store_true", help="connect with TLS")
    g.add_argument(
        "--root-certs", metavar="PEM", help="CA certificates to trust (with --ssl; default: the system's)"
    )
    g.add_argument(
        "--client-key", metavar="PEM", help="private key for client-certificate TLS (with --client-cert)"
    )
    g.add_argument("--client-cert", metavar="PEM", help="certificate chain for client-certificate TLS")


def _add_geometry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patches")
    res = g.add_mutually_exclusive_group()
    res.add_argument(
        "--mpp",
        type=_mpp,
        metavar="UM",
        help="microns per pixel of the patches sent; the best pyramid level is read and rescaled "
        "(default: the scale the model was trained at, as its server states it)",
    )
    res.add_argument("--level", type=_level, metavar="N", help="read this pyramid level as it is, unscaled")
    g.add_argument(
        "--slide-mpp",
        type=_mpp,
        metavar="UM",
        help="the slide's microns per pixel at level 0, when its file does not say (or says wrong)",
    )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--restart",
        "--overwrite",
        dest="restart",
        action="store_true",
        help="discard the results of an earlier run in the output folder and score again",
    )
    p.add_argument(
        "--gallery",
        type=_gallery,
        default=DEFAULT_FLAGGED,
        metavar="N",
        help="cells flagged for review shown in the report, least confident first (default: %(default)s)",
    )
    p.add_argument(
        "--per-class",
        type=_gallery,
        default=DEFAULT_PER_CLASS,
        metavar="N",
        help="cells shown in each class's gallery, least confident first (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parsers(subparsers) -> None:
    """The ``classify``, ``score-slide`` and ``score-slides`` commands."""
    _add_classify_parser(subparsers)
    _add_score_slide_parser(subparsers)
    _add_score_slides_parser(subparsers)


def _add_classify_parser(subparsers) -> None:
    classify = subparsers.add_parser(
        "classify",
        help="classify cell images with an SMR server",
        description="Classify cell patches (image files, or folders searched recursively) with an SMR "
        "server: class, probability, position on the lineage's maturation curve, the stage read from the "
        "curve and a borderline flag. Prints a table; --out writes CSV or JSON (by extension).",
    )
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    classify.add_argument("--out", metavar="FILE", help="write the results to FILE (.csv or .json)")
    classify.add_argument(
        "--resize",
        action="store_true",
        help="resize images of another size to the server's (default: refuse them)",
    )
    classify.add_argument("--embeddings", action="store_true", help="include the embeddings in --out JSON")
    classify.add_argument("--quiet", action="store_true", help="no table on screen")
    _add_server_args(classify, metrics=False)
    classify.set_defaults(func=run_classify)


def _add_score_slide_parser(subparsers) -> None:
    slide = subparsers.add_parser(
        "score-slide",
        help="score every detected cell of a whole slide and write a differential-count report",
        description="Crop a patch around each detection of a slide (SVS, NDPI, pyramidal TIFF, MRXS with "
        "OpenSlide, PNG/JPEG), classify them with an SMR server and write OUT/cells.csv, OUT/cells.geojson "
        "(QuPath import), OUT/report.html and OUT/summary.json. Interrupted, the same command continues "
        "where it stopped.",
    )
    slide.add_argument("slide", metavar="SLIDE", help="the slide file")
    slide.add_argument(
        "--detections",
        required=True,
        metavar="FILE",
        help="cell centres: CSV with x,y (and id, class) in level-0 pixels, or QuPath GeoJSON",
    )
    slide.add_argument("--out", required=True, metavar="DIR", help="output folder")
    slide.add_argument("--title", help="report title (default: the slide's name)")
    _add_geometry_args(slide)
    _add_output_args(slide)
    _add_server_args(slide)
    slide.set_defaults(func=run_score_slide)


def _add_score_slides_parser(subparsers) -> None:
    slides = subparsers.add_parser(
        "score-slides",
        help="score many slides, a few at a time, and summarise them",
        description="Score every slide of a folder (slide + detections found by name; see docs/clients.md) "
        "or of a list file (lines 'slide,detections[,name]'), --parallel at a time, into OUT/<name>/, and "
        "write OUT/summary.csv with one row per slide.",
    )
    slides.add_argument("source", metavar="LIST_OR_DIR", help="folder of slides, or a list file")
    slides.add_argument("--out", required=True, metavar="DIR", help="output folder")
    slides.add_argument(
        "--parallel",
        type=_parallel,
        default=2,
        metavar="N",
        help="slides scored at once (default: %(default)s)",
    )
    slides.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="score the slides as Ray tasks, one per slide (needs `pip install 'smr[ray]'`): on the cluster "
        "at ADDRESS ('auto', ray://HOST:10001), or on a local one started for the run when no address "
        "is given; --out and the slides must be on a filesystem every node shares (docs/scaling.md)",
    )
    _add_geometry_args(slides)
    _add_output_args(slides)
    _add_server_args(slides)
    slides.set_defaults(func=run_score_slides)


# -- running --------------------------------------------------------------------------------------


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"smr {command}: error: {message}", file=sys.stderr)
    return code


def make_client(args: argparse.Namespace, **extra):
    """An :class:`SMRClient` from the server options (and metrics, when --metrics-port is given)."""
    from smr.clients.errors import InputError
    from smr.clients.metrics import ClientMetrics

    metrics = None
    if getattr(args, "metrics_port", None) is not None:
        metrics = ClientMetrics()
        try:
            metrics.serve(args.metrics_port)
        except OSError as exc:
            raise InputError(f"--metrics-port {args.metrics_port}: cannot listen there ({exc})") from None
    try:
        return _client(args, metrics, extra)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _client(args: argparse.Namespace, metrics, extra: dict):
    from smr.clients.client import SMRClient

    return SMRClient(
        args.url,
        model=args.model,
        timeout=args.timeout,
        retries=args.retries,
        ssl=args.ssl or bool(args.root_certs or args.client_cert),
        root_certificates=args.root_certs,
        private_key=args.client_key,
        certificate_chain=args.client_cert,
        compression=args.compression,
        batch_size=args.batch_size,
        max_in_flight=args.max_in_flight,
        margin=args.margin,
        metrics=metrics,
        **extra,
    )


def run_classify(args: argparse.Namespace) -> int:
    from smr.clients.errors import InputError, SMRClientError
    from smr.clients.images import find_images, load_image

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        return _fail("classify", f"--out {out}: unknown format {out.suffix!r}; valid: .csv, .json")
    skipped: list[str] = []  # "path: reason" of the images that could not be read
    try:
        found = find_images(args.paths)
        if not found:
            return _fail("classify", "no image files found in " + ", ".join(args.paths))
        with make_client(args, resize=args.resize, embeddings=args.embeddings) as client:
            size = client.info.image_size
            files, images = [], []
            for f in found:
                try:
                    image = load_image(f)
                except InputError as exc:  # a damaged file: skip it, classify the others
                    skipped.append(str(exc))
                    continue
                if not args.resize and image.shape[:2] != (size, size):
                    return _fail(
                        "classify",
                        f"{f}: size {image.shape[1]}x{image.shape[0]} but the server "
                        f"expects {size}x{size}; pass --resize to resize",
                    )
                files.append(f)
                images.append(image)
            cells = client.classify(images, progress=len(images) > 256 and not args.quiet)
    except SMRClientError as exc:
        return _fail("classify", str(exc), 2 if isinstance(exc, ValueError) else 1)
    except ValueError as exc:
        return _fail("classify", str(exc))
    if not args.quiet and files:
        print(format_table(files, cells))
    if out is not None and files:
        from smr.clients.outputs import write_classify_output

        write_classify_output(out, files, cells)
        print(f"wrote {out}", file=sys.stderr)
    if skipped:
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        return _fail(
            "classify",
            f"{len(skipped)} of {len(found)} images were skipped because they could not be read (listed "
            f"above); the other {len(files)} were classified",
            1,
        )
    return 0


def format_table(files, cells) -> str:
    """The classify results as a fixed-width table."""
    rows = [("file", "class", "prob", "lineage", "position", "curve stage", "borderline")]
    for f, c in zip(files, cells, strict=True):
        rows.append(
            (
                str(f),
                c.class_name,
                f"{c.probability:.3f}",
                c.lineage or "-",
                "-" if c.position is None else f"{c.position:.3f}",
                c.stage_estimate or "-",
                c.borderline_reason if c.borderline else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_provenance(prov) -> str:
    """summary.json's ``"provenance"`` as terminal lines."""
    if not prov:
        return "model provenance: unknown"

    def show(key: str) -> str:
        value = prov.get(key)
        return "unknown" if value is None or value == "" else str(value)

    scale = prov.get("model_microns_per_pixel")
    lines = [
        f"model: run {show('run_id')}, trained on {show('training_data')} "
        f"({show('training_images')} images), validation macro F1 {show('val_macro_f1')}, scale "
        + ("unknown" if scale is None else f"{scale:.4g} µm/px"),
        f"       manifest sha256 {show('manifest_sha256')}, SMR {show('smr_version')}, "
        f"Triton {show('triton_version')}",
        f"{show('notice')}",
    ]
    return "\n".join(lines)


def _print_slide_summary(score) -> None:
    from smr.clients.summary import format_count, headline

    print(format_count(score.count, score.reference))
    print(format_provenance(score.provenance))
    c = score.count
    print(f"{score.slide.name}: {headline(c)}; {len(score.outside_ids)} detections outside the slide")
    if score.review is not None:
        print(f"review against the detections' labels: {score.review.line()}")
    if c.low_count:
        print(
            f"warning: only {c.total} cells counted (fewer than 500); the differential count is weak",
            file=sys.stderr,
        )
    print(f"report: {score.paths['report']}")


def run_score_slide(args: argparse.Namespace) -> int:
    from smr.clients.errors import InputError, SMRClientError
    from smr.clients.scoring import ScoringInterrupted, score_slide

    try:
        with make_client(args) as client:
            score = score_slide(
                args.slide,
                args.detections,
                args.out,
                client,
                mpp=args.mpp,
                level=args.level,
                slide_mpp=args.slide_mpp,
                restart=args.restart,
                progress=not args.no_progress,
                gallery=args.gallery,
                per_class=args.per_class,
                title=args.title,
            )
    except InputError as exc:
        return _fail("score-slide", str(exc))
    except ScoringInterrupted as exc:
        return _fail("score-slide", str(exc), 1)
    except SMRClientError as exc:
        return _fail(
            "score-slide", f"{exc}\nnothing was scored; run the same command again once the server is up", 1
        )
    _print_slide_summary(score)
    return 0


def run_score_slides(args: argparse.Namespace) -> int:
    from smr.clients.errors import InputError, SMRClientError

    out = Path(args.out)
    try:
        jobs = _slide_jobs(args)
        client = _checked_client(args)
    except SMRClientError as exc:
        return _fail("score-slides", str(exc), 2 if isinstance(exc, InputError) else 1)
    info = client.info
    out.mkdir(parents=True, exist_ok=True)
    try:
        outcomes = _score_jobs(args, jobs, out, client)
    except InputError as exc:
        return _fail("score-slides", str(exc))
    finally:
        client.close()
    return _summarise_jobs(outcomes, info, out)


def _slide_jobs(args: argparse.Namespace) -> list:
    """The slides of ``args.source`` (the ones skipped named on stderr); :class:`InputError` when
    none can be found, or when some do not state their resolution and no option makes up for it."""
    from smr.clients.batch import find_jobs
    from smr.clients.errors import InputError

    jobs, skipped = find_jobs(args.source)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    if args.level is None and args.slide_mpp is None:
        unknown = _slides_without_resolution([job.slide for job in jobs])
        if unknown:
            names = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise InputError(
                f"{len(unknown)} of {len(jobs)} slides do not state their resolution (microns per pixel): "
                f"{names}; pass --slide-mpp UM, or read a pyramid level as it is with --level N"
            )
    return jobs


def _checked_client(args: argparse.Namespace):
    """A client whose server answers with a model that states its scale (or the options give one);
    the client is closed again when not."""
    from smr.clients.errors import SMRClientError
    from smr.clients.scoring import model_scale

    client = None
    try:
        client = make_client(args)
        model_scale(client.info, client.url, args.mpp, args.level)
    except SMRClientError:
        if client is not None:
            client.close()
        raise
    return client


def _score_jobs(args: argparse.Namespace, jobs: list, out: Path, client) -> list:
    """Score every slide into ``out/<name>``, ``--parallel`` at a time or as Ray tasks (``--ray``);
    their outcomes. One progress bar of slides, or one of cells when the slides go one by one."""
    from smr.clients.batch import run_jobs
    from smr.clients.scoring import score_slide

    per_slide_bars = args.parallel == 1 and not args.no_progress and args.ray is None
    options = {  # score_slide's, for each slide (also in Ray tasks)
        "mpp": args.mpp,
        "level": args.level,
        "slide_mpp": args.slide_mpp,
        "restart": args.restart,
        "gallery": args.gallery,
        "per_class": args.per_class,
    }

    def score(job):
        return score_slide(
            job.slide, job.detections, out / job.name, client, progress=per_slide_bars, **options
        )

    bar = None
    if not args.no_progress and not per_slide_bars:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="slide", desc="slides", dynamic_ncols=True)
    try:
        if args.ray is not None:  # one Ray task per slide, each with its own client and journal
            return _score_jobs_on_ray(args, jobs, out, options, partial(_slide_done, bar))
        return run_jobs(jobs, score, parallel=args.parallel, on_done=partial(_slide_done, bar))
    finally:
        if bar is not None:
            bar.close()


def _score_jobs_on_ray(args: argparse.Namespace, jobs: list, out: Path, options: dict, done) -> list:
    """The slides scored as Ray tasks, each making its own client (without a metrics port)."""
    from smr.clients.distributed import run_jobs_on_ray

    task_args = argparse.Namespace(**{**vars(args), "metrics_port": None})
    return run_jobs_on_ray(
        jobs, out, partial(make_client, task_args), options, address=args.ray, on_done=done
    )


def _slide_done(bar, outcome) -> None:
    """A slide finished: the progress bar moves on; a failure is named on stderr."""
    if bar is not None:
        bar.update(1)
    if not outcome.ok:
        msg = f"{outcome.job.name}: failed: {outcome.error}"
        (bar.write if bar is not None else print)(msg, file=sys.stderr)


def _summarise_jobs(outcomes: list, info, out: Path) -> int:
    """Write ``out/summary.csv`` (and its companions), print the table; 1 when a slide failed."""
    from smr.clients.batch import summary_rows, write_summary

    rows = summary_rows(outcomes, info)
    csv_path, _ = write_summary(out, rows)
    print(format_summary(rows))
    print(f"summary: {csv_path}")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(
            f"{len(failed)} of {len(outcomes)} slides failed; run the same command again to continue them",
            file=sys.stderr,
        )
        return 1
    return 0


def _slides_without_resolution(paths) -> list[str]:
    """Names of the slides whose files do not state their microns per pixel (unreadable ones are left
    to fail on their own, with their own message)."""
    from smr.clients.errors import InputError
    from smr.clients.slides import open_slide

    unknown = []
    for path in paths:
        try:
            with open_slide(path) as slide:
                if slide.mpp is None:
                    unknown.append(Path(path).name)
        except InputError:
            continue
    return unknown


def format_summary(rows) -> str:
    cols = ("name", "status", "cells", "outside", "me_ratio", "blast_pct", "borderline")
    table = [cols] + [tuple(str(r.get(c, "")) for c in cols) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table)

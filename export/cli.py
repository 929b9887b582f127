"""``smr export``: a run directory -> a Triton model repository; ``smr export --check DIR`` validates one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parsers", "run"]

_DESCRIPTION = """\
Turn a training run directory into a self-contained Triton model repository: the ensemble `smr`
(IMAGE uint8 [H, W, 3] -> PROBABILITIES, CLASS_ID, MATURITY, CURVE_DISTANCE, STAGE, BORDERLINE,
EMBEDDING) made of `smr_backbone` (the network as ONNX, normalisation inside the graph) and
`smr_postprocess` (python backend, numpy: SVM probabilities, curve projections, stages and review
flags, Prometheus cell counters), plus a MANIFEST.json with the SHA-256 of every file. The export
checks the ONNX graph and its parity with PyTorch (max abs difference <= 1e-4), and the finished
repository (as --check does).
"""

_EPILOG = """\
examples:
  smr export runs/pbc --repository model_repository
  smr export runs/pbc --runtime python            # for servers with only the python backend
  smr export runs/pbc --runtime openvino --precision auto   # fastest precision that passes here
  smr export runs/pbc --runtime openvino --precision bf16   # refused if it loses > 1 pp macro F1
  smr export runs/pbc --runtime openvino-backend --precision auto   # for docker-compose's NGC Triton
  smr export runs/pbc --instance-kind gpu --tensorrt fp16
  smr export runs/pbc --quantize int8             # reports macro-F1 change and speed ratio
  smr export --check model_repository
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run directory to a Triton model repository (or --check one)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dir", nargs="?", type=Path, metavar="RUN", help="run directory written by `smr train`"
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        metavar="DIR",
        help="model repository to write (default: ./model_repository, the folder `smr serve` reads by "
        "default); its SMR models are replaced only after the new ones passed every check",
    )
    p.add_argument(
        "--check",
        type=Path,
        metavar="DIR",
        help="validate an exported repository instead of exporting: configs parse as Triton model "
        "configs, files match MANIFEST.json, tensor names agree; exit status 1 on any problem",
    )
    _add_backbone_arguments(p.add_argument_group("backbone"))
    _add_postprocess_arguments(p.add_argument_group("postprocess"))
    _add_scheduling_arguments(p.add_argument_group("scheduling"))
    p.add_argument(
        "--force",
        action="store_true",
        help="replace smr/, smr_backbone/, smr_postprocess/ even when no SMR manifest accounts for them",
    )
    p.set_defaults(func=run)


def _add_backbone_arguments(g) -> None:
    """The backbone's runtime, precision and its accuracy check, quantisation, data, opset."""
    from .pbtxt import RUNTIMES, TENSORRT_PRECISIONS
    from .precision import MAX_F1_LOSS, MIN_AGREEMENT, PRECISION_CHOICES

    g.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="onnxruntime",
        help="onnxruntime: Triton's onnxruntime backend (platform onnxruntime_onnx); python: a python "
        "backend model running the same model.onnx with onnxruntime; openvino: a python backend model "
        "running it with OpenVINO (compiled once at load); openvino-backend: Triton's own openvino "
        "backend running model.onnx (full Triton, e.g. docker-compose's NGC image; not `smr serve`'s "
        "embedded server, which has the python backend only) (default: %(default)s)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="the backbone's precision: fp32; bf16 (openvino, openvino-backend; fast with avx512_bf16 or "
        "AMX); int8 "
        "(the calibrated QDQ graph); auto: the fastest that passes, measured on this machine. Every "
        "precision but fp32 is checked against FP32 on the run's validation images and refused beyond "
        "--max-f1-loss / --min-agreement (default: %(default)s)",
    )
    g.add_argument(
        "--max-f1-loss",
        type=float,
        default=MAX_F1_LOSS,
        metavar="F",
        help="the accuracy check: the largest macro-F1 loss against FP32, as a fraction "
        "(default: %(default)s = 1 pp)",
    )
    g.add_argument(
        "--min-agreement",
        type=float,
        default=MIN_AGREEMENT,
        metavar="F",
        help="the accuracy check: the smallest share of validation images given the FP32 class "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--tensorrt",
        choices=TENSORRT_PRECISIONS,
        default=None,
        help="add the TensorRT execution accelerator with this precision "
        "(onnxruntime runtime, GPU instances)",
    )
    g.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="the same as --precision int8: static INT8 quantisation (QDQ) calibrated on training images, "
        "checked on the validation split (macro-F1 change, same class, speed ratio)",
    )
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the data set's root, if it moved since training (split.json's 'data'); used for parity "
        "images and INT8 calibration",
    )
    g.add_argument("--opset", type=int, default=21, help="ONNX opset (default: %(default)s)")


def _add_postprocess_arguments(g) -> None:
    """What smr_postprocess returns besides the SVM and the curves: the review flags' margin."""
    from smr.core.contract import DEFAULT_REVIEW_MARGIN

    g.add_argument(
        "--review-margin",
        type=float,
        default=None,
        metavar="F",
        help="the served BORDERLINE flag: a cell whose two most probable classes differ by less than "
        "this in SVM probability is flagged for review (clients with another --margin derive their own "
        "flags) (default: the run's own, chosen on its validation split so that the flags hold half of "
        f"the misclassified images while flagging at most a fifth; {DEFAULT_REVIEW_MARGIN:g} for runs "
        "trained before runs chose one)",
    )


def _add_scheduling_arguments(s) -> None:
    """Batch sizes, instances, dynamic batching, warm-up, threads."""
    from .pbtxt import INSTANCE_KINDS

    s.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=64,
        help="max_batch_size of every model (default: %(default)s)",
    )
    s.add_argument(
        "--instance-kind",
        choices=INSTANCE_KINDS,
        default=None,
        help="instance_group kind of smr_backbone (default: gpu with --tensorrt, else cpu); "
        "smr_postprocess always runs on the CPU",
    )
    s.add_argument(
        "--instances",
        type=_positive_int,
        default=1,
        help="instances of each composing model (default: %(default)s)",
    )
    s.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=500,
        help="dynamic batching: how long a request may wait for others, microseconds (default: %(default)s)",
    )
    s.add_argument(
        "--warmup-batch-sizes",
        type=_batch_sizes,
        default=(1,),
        metavar="B[,B...]",
        help="model_warmup batch sizes of the composing models (default: 1)",
    )
    s.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="onnxruntime (or OpenVINO) threads per backbone instance; 0 leaves the runtime's default "
        "(default: %(default)s)",
    )


def _fail(message: str, code: int = 2) -> int:
    """Print ``smr export: error: ...``; 2 for what the user can fix (usage), 1 for a failed export."""
    print(f"smr export: error: {message}", file=sys.stderr)
    return code


def _digest_problem(directory: Path) -> tuple[str | None, str | None]:
    """(the manifest's digest, a problem) for an exported repository that passed check_repository."""
    from .manifest import ManifestError, read_manifest
    from .pbtxt import ConfigFormatError, parse_config
    from .repository import ENSEMBLE_CONFIG, manifest_digest

    try:
        digest = manifest_digest(read_manifest(directory))
        params = parse_config(directory / ENSEMBLE_CONFIG).parameters
    except (ManifestError, ConfigFormatError, OSError) as exc:
        return None, str(exc)
    served = params["manifest_sha256"].string_value if "manifest_sha256" in params else None
    if served is None:
        return digest, None  # exported before the ensemble carried it
    if served != digest:
        return digest, (
            f"{ENSEMBLE_CONFIG}: manifest_sha256 {served[:12]}... does not match MANIFEST.json "
            f"({digest[:12]}...); export the repository again"
        )
    return digest, None


# what a check or an export of a backbone on Triton's openvino backend says about serving it
_OPENVINO_BACKEND_NOTE = (
    "note: smr_backbone runs on Triton's openvino backend: serve it with a full Triton (docker compose "
    "--profile cpu up -d, NGC image), not `smr serve`, whose embedded server has the python backend only"
)


def _check(directory: Path) -> int:
    from .check import check_repository
    from .openvino_backend import BACKEND as OPENVINO

    result = check_repository(directory)
    digest, problem = _digest_problem(directory) if result.ok else (None, None)
    problems = list(result.problems) + ([problem] if problem else [])
    if problems:
        print(f"{directory}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    facts = result.facts
    print(
        f"{directory}: OK ({facts.get('backbone')} backbone, {facts.get('image_size')} px, "
        f"{facts.get('classes')} classes, lineages {facts.get('lineages')}, "
        f"max batch {facts.get('max_batch_size')}; files match MANIFEST.json)\n"
        f"manifest sha256: {digest}"
    )
    if facts.get("backbone") == OPENVINO:
        print(_OPENVINO_BACKEND_NOTE)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.run_dir is not None:
            return _fail("give either RUN (to export) or --check DIR, not both")
        return _check(args.check)
    if args.run_dir is None:
        return _fail("missing RUN (a run directory written by `smr train`), or use --check DIR")

    from smr.train.rundir import RunDirError

    from .onnx_backbone import ExportError
    from .openvino_backend import computed_note
    from .pbtxt import OPENVINO_BACKEND, ServingOptions
    from .repository import DEFAULT_REPOSITORY, ExportOptions, export_repository
    from .run_images import ImagesUnavailable

    instance_kind = args.instance_kind or ("gpu" if args.tensorrt else "cpu")
    precision = args.precision
    if args.quantize:
        if precision not in ("fp32", args.quantize):
            return _fail(f"--quantize {args.quantize} and --precision {precision} disagree; give one of them")
        precision = args.quantize
    if not 0 <= args.max_f1_loss <= 1 or not 0 <= args.min_agreement <= 1:
        return _fail("--max-f1-loss and --min-agreement are fractions in [0, 1] (0.01 is 1 pp)")
    if args.review_margin is not None and not 0 <= args.review_margin <= 1:
        return _fail(f"--review-margin {args.review_margin} is not a difference of probabilities in [0, 1]")
    try:
        serving = ServingOptions(
            runtime=args.runtime,
            precision="fp32" if precision == "auto" else precision,
            tensorrt=args.tensorrt,
            max_batch_size=args.max_batch_size,
            instance_kind=instance_kind,
            instances=args.instances,
            max_queue_delay_us=args.max_queue_delay_us,
            warmup_batch_sizes=args.warmup_batch_sizes,
            intra_op_threads=args.intra_op_threads,
        ).validate()
    except ValueError as exc:
        return _fail(str(exc))
    options = ExportOptions(
        serving=serving,
        precision=precision,
        max_f1_loss=args.max_f1_loss,
        min_agreement=args.min_agreement,
        opset=args.opset,
        data_root=args.data,
        force=args.force,
        review_margin=args.review_margin,
    )
    repository = args.repository or DEFAULT_REPOSITORY
    try:
        result = export_repository(args.run_dir, repository, options)
    except (RunDirError, ImagesUnavailable, FileExistsError) as exc:  # the user can fix the input
        return _fail(str(exc))
    except ExportError as exc:  # the export itself failed (graph, parity, check)
        return _fail(str(exc), 1)
    n_files = len(result.manifest["files"])
    computed = computed_note(result.precision, result.manifest["export"]["precision"].get("computed_in"))
    print(
        f"exported {args.run_dir} -> {result.repository} ({n_files} files, {serving.runtime} backbone "
        f"at {result.precision.upper()}{computed}, "
        f"{result.seconds:.1f} s); check it with: smr export --check {result.repository}"
    )
    if serving.runtime == OPENVINO_BACKEND:
        print(_OPENVINO_BACKEND_NOTE)
    params = result.parameters
    scale = params.get("microns_per_pixel")
    print(
        f"model scale: {float(scale):.4g} µm/px at the network input"
        if scale
        else "model scale: unknown (the data set's lineages.toml has no [imaging] microns_per_pixel); "
        "score-slide will need --mpp"
    )
    return 0

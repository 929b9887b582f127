"""``smr train``, ``smr evaluate`` and ``smr cv``: the arguments and the commands.

Every :class:`~smr.train.config.TrainConfig` field has a flag here. Flags left out keep the
config's default (or the value from ``--config FILE``), so ``--help`` shows the real defaults.

The commands (:func:`train_command`, :func:`evaluate_command`, :func:`cv_command`) import torch and
the training modules when they run, so ``smr --help`` stays fast. The library raises exceptions
(:class:`~smr.train.config.ConfigError`, :class:`~smr.train.engine.TrainError`, ...); the commands
turn them into ``SystemExit("smr <cmd>: error: ...")``, which :func:`smr.cli.run_command` prints as one
line with status 2, or 1 for a failure (an error that is a ``RuntimeError``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .config import (
    CURVES,
    DEVICES,
    LOSSES,
    MINERS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TARGETS,
    ConfigError,
    TrainConfig,
)

__all__ = [
    "add_parsers",
    "add_config_arguments",
    "get_args_parser",
    "config_from_args",
    "parse_gamma",
    "train_command",
    "evaluate_command",
    "cv_command",
]

_DEFAULTS = TrainConfig()


def parse_gamma(value: str) -> float | str:
    """An SVM gamma: a positive number, ``scale`` or ``auto``."""
    if value in ("scale", "auto"):
        return value
    try:
        g = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid gamma {value!r}; use a positive number, 'scale' or 'auto'"
        ) from None
    if not g > 0:
        raise argparse.ArgumentTypeError(f"gamma must be > 0, got {value}")
    return g


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


# (field, flag, keyword arguments for add_argument, help)
_OPTIONS: list[tuple[str, str, dict[str, Any], str]] = [
    ("loss", "--loss", {"choices": LOSSES}, "training loss: the TML baseline or an SMR variant"),
    ("curve", "--curve", {"choices": CURVES}, "curve model per lineage"),
    ("targets", "--targets", {"choices": TARGETS}, "regression targets along the curve"),
    ("alpha", "--alpha", {"type": float}, "weight of the SMR term (default: 0.2, 0.6 for the dimred losses)"),
    (
        "smr_warmup_epochs",
        "--smr-warmup-epochs",
        {"type": int},
        "epochs of TML alone before the SMR term is switched on",
    ),
    ("margin", "--margin", {"type": float}, "triplet margin"),
    ("miner", "--miner", {"choices": MINERS}, "triplet miner"),
    ("fixed_length", "--fixed-length", {"type": float}, "length of the 'fixed' curve model"),
    ("tsne_perplexity", "--tsne-perplexity", {"type": float}, "per-batch perplexity of the t-SNE map"),
    ("tsne_hidden", "--tsne-hidden", {"type": int, "nargs": "+"}, "hidden widths of the t-SNE network"),
    ("tsne_lr", "--tsne-lr", {"type": float}, "learning rate of the t-SNE map"),
    ("tsne_warmup_epochs", "--tsne-warmup-epochs", {"type": int}, "t-SNE-only epochs before training"),
    ("embedding_dim", "--embedding-dim", {"type": int}, "embedding size"),
    ("dropout", "--dropout", {"type": float}, "dropout before the embedding layer"),
    (
        "weights",
        "--weights",
        {"metavar": "PATH|imagenet"},
        "backbone weights: a local state dict file, or 'imagenet' for torchvision's (needs them cached or "
        "internet); none: random init",
    ),
    ("image_size", "--image-size", {"type": int}, "network input size in pixels"),
    ("mean", "--mean", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}, "normalisation mean"),
    ("std", "--std", {"type": float, "nargs": 3, "metavar": ("R", "G", "B")}, "normalisation std"),
    (
        "crop_scale",
        "--crop-scale",
        {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")},
        "area range of the random resized crop",
    ),
    (
        "stain_jitter",
        "--stain-jitter",
        {"type": float, "metavar": "S"},
        "per-image stain jitter: each colour's optical density scaled by 1±S and shifted by ±S/2 (0: off)",
    ),
    (
        "blur",
        "--blur",
        {"type": float, "metavar": "B"},
        "per-image Gaussian blur of U(0, B) pixels, for models that score whole-slide crops (0: off)",
    ),
    ("optimizer", "--optimizer", {"choices": OPTIMIZERS}, "optimiser"),
    ("lr", "--lr", {"type": float}, "learning rate"),
    ("weight_decay", "--weight-decay", {"type": float}, "weight decay"),
    ("schedule", "--schedule", {"choices": SCHEDULES}, "learning-rate schedule after the warm-up"),
    ("lr_warmup_epochs", "--lr-warmup-epochs", {"type": int}, "epochs of linear learning-rate warm-up"),
    (
        "min_lr_ratio",
        "--min-lr-ratio",
        {"type": float},
        "final learning rate of the cosine, a fraction of --lr",
    ),
    (
        "ema_decay",
        "--ema-decay",
        {"type": float},
        "decay of the weights' moving average, evaluated and saved (0: off)",
    ),
    ("precision", "--precision", {"choices": PRECISIONS}, "bf16 autocast; auto: where the hardware has bf16"),
    ("batch_size", "--batch-size", {"type": int}, "images per batch (per process with DDP)"),
    ("samples_per_class", "--samples-per-class", {"type": int}, "images of each drawn class per batch"),
    ("epochs", "--epochs", {"type": int}, "maximum number of epochs"),
    ("patience", "--patience", {"type": int}, "early stopping: epochs without validation macro-F1 gain"),
    ("seed", "--seed", {"type": int}, "random seed (split, sampler, initialisation, augmentation)"),
    ("workers", "--workers", {"type": int}, "data loader worker processes"),
    ("device", "--device", {"choices": DEVICES}, "training device"),
    ("eval_batch_size", "--eval-batch-size", {"type": int}, "batch size for computing embeddings"),
    ("svm_c", "--svm-c", {"type": float, "nargs": "+"}, "SVM C values to search"),
    ("svm_gamma", "--svm-gamma", {"type": parse_gamma, "nargs": "+"}, "SVM gamma values to search"),
    ("svm_cv", "--svm-cv", {"type": int}, "folds of the SVM grid search"),
    ("val_fraction", "--val-fraction", {"type": float}, "validation fraction (without --folds)"),
    ("folds", "--folds", {"type": int}, "K of stratified K-fold cross-validation"),
    ("fold", "--fold", {"type": int}, "the validation fold with --folds (0-based)"),
]
_SWITCHES = [
    ("rotation", "--no-rotation", "no random rotation"),
    ("flips", "--no-flips", "no random flips"),
    ("channels_last", "--no-channels-last", "NCHW instead of channels-last (NHWC) tensors"),
]


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """Add one flag per TrainConfig field (``exclude``: field names to leave out)."""
    skip = set(exclude)
    group = parser.add_argument_group("hyper-parameters (see docs/training.md)")
    group.add_argument(
        "--config",
        metavar="FILE",
        dest="config_file",
        default=None,
        help="start from a TrainConfig JSON (a run's config.json works too); flags override it",
    )
    for name, flag, kwargs, text in _OPTIONS:
        if name in skip:
            continue
        shown = "" if "default:" in text else _default(name)
        group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=text + shown, **kwargs)
    for name, flag, text in _SWITCHES:
        if name not in skip:
            group.add_argument(flag, dest=name, action="store_false", default=argparse.SUPPRESS, help=text)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """The TrainConfig of parsed arguments: defaults < ``--config`` file < flags < ``overrides``.

    Raises :class:`ConfigError` with a message naming the bad value and the valid choices.
    """
    values: dict[str, Any] = {}
    path = getattr(args, "config_file", None)
    if path:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read --config {path}: {exc}") from exc
        values.update(doc.get("config", doc) if isinstance(doc, dict) else {})
    names = {name for name, *_ in _OPTIONS + _SWITCHES}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(overrides)
    try:
        return TrainConfig.from_dict(values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data", metavar="DATA", help="folder data set: one sub-folder per class plus lineages.toml"
    )
    p.add_argument("--out", metavar="RUN", required=True, help="run directory to write")
    p.add_argument("--spec", metavar="FILE", default=None, help="lineage spec instead of DATA/lineages.toml")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty RUN")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in RUN after its last complete epoch (same flags as before)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="where decoded images are kept between runs (default: $SMR_CACHE_DIR or ~/.cache/smr/images)",
    )
    p.add_argument("--no-cache", action="store_true", help="decode the images into memory, keep no cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_config_arguments(p)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``smr train`` parser on its own (also used by ``python -m smr.train`` under torchrun)."""
    p = argparse.ArgumentParser(
        prog="smr train",
        description=_TRAIN_DESCRIPTION,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_arguments(p)
    return p


_TRAIN_DESCRIPTION = """\
Train an SMR model: DenseNet-121 embeddings with the triplet margin loss plus the Spatial
Maturity Regression term, curves and targets refitted every epoch, an RBF SVM picked by 5-fold CV
every epoch, early stopping on validation macro F1. Writes RUN/ (config.json, model.safetensors,
curves.json, svm.json, metrics.csv, split.json) for smr export and smr evaluate.

Multi-process (DDP): torchrun --nproc_per_node=2 -m smr.train DATA --out RUN [options]
"""


def add_parsers(subparsers: Any) -> None:
    """Add ``smr train``, ``smr evaluate`` and ``smr cv`` to the ``smr`` command's sub-parsers."""
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_cv_parser(subparsers)


def _add_train_parser(subparsers: Any) -> None:
    """``smr train DATA --out RUN [hyper-parameters]``."""
    train = subparsers.add_parser(
        "train",
        help="train an SMR model into a run directory",
        description=_TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_arguments(train)
    train.set_defaults(func=train_command)


def _add_evaluate_parser(subparsers: Any) -> None:
    """``smr evaluate RUN DATA``: scores, figures, a comparison run."""
    ev = subparsers.add_parser(
        "evaluate",
        help="score a trained run on a data set (F1, confusion matrix, maturity correlation)",
        description="Evaluate RUN on DATA: per-class precision/recall/F1, macro F1, the confusion "
        "matrix, and - where DATA has a manifest.csv with true maturities - the Spearman correlation "
        "of each cell's position on its lineage's curve with its true maturity. Predictions use the "
        "numpy SVM and curves exactly as served.",
    )
    ev.add_argument("run_dir", metavar="RUN", help="run directory written by smr train")
    ev.add_argument("data", metavar="DATA", help="folder data set with the run's classes")
    ev.add_argument(
        "--subset",
        choices=("all", "val", "train"),
        default="all",
        help="evaluate all images of DATA, or only the run's validation/training images (DATA must "
        "then be the data set the run was trained on) (default: all)",
    )
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--out", metavar="FILE", default=None, help="also write the JSON report to FILE")
    ev.add_argument(
        "--figures",
        metavar="DIR",
        default=None,
        help="write figures (curve positions per lineage, confusion matrix) to DIR",
    )
    ev.add_argument(
        "--compare",
        metavar="RUN2",
        default=None,
        help="a second run (e.g. the TML baseline) drawn beside RUN in the figures",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    ev.add_argument("--spec", metavar="FILE", default=None, help="lineage spec instead of DATA/lineages.toml")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=evaluate_command)


def _add_cv_parser(subparsers: Any) -> None:
    """``smr cv DATA --out DIR``: cross-validation over a grid of variants."""
    cv = subparsers.add_parser(
        "cv",
        help="stratified K-fold cross-validation over loss/curve/target variants",
        description="Run stratified K-fold cross-validation of several SMR variants on DATA and "
        "tabulate macro F1 (mean and std over folds) and the maturity correlation. Each (variant, "
        "fold) trains into OUT/<variant>/fold<i>/; complete runs are skipped, so an interrupted cv "
        "resumes where it stopped. Variants are 'tml' or CURVE/TARGETS/LOSS (e.g. "
        "linear/uniform/normal; '*' matches all), or 'paper' for the paper's 25.",
    )
    cv.add_argument("data", metavar="DATA", help="folder data set with lineages.toml")
    cv.add_argument("--out", metavar="DIR", required=True, help="output folder (runs, table, chart)")
    cv.add_argument(
        "--grid",
        metavar="VARIANT",
        nargs="+",
        default=["paper"],
        help="variants to compare (default: paper = tml + 3 curves x 2 targets x 4 losses)",
    )
    cv.add_argument("--folds", type=int, default=6, help="K of the stratified K-fold split (default: 6)")
    cv.add_argument(
        "--only-fold",
        type=int,
        nargs="+",
        default=None,
        metavar="I",
        help="run only these folds (e.g. one per machine); the table uses what is complete",
    )
    cv.add_argument("--jobs", type=int, default=1, help="training processes at once (default: 1)")
    cv.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per training process (default: CPU count / jobs)",
    )
    cv.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    cv.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(cv, exclude=("loss", "curve", "targets", "folds", "fold"))
    cv.set_defaults(func=cv_command)


# ----------------------------------------------------------------------------------------------
# the commands


@contextlib.contextmanager
def _errors_of(command: str, *errors: type[Exception]) -> Iterator[None]:
    """``errors`` raised inside become ``smr <command>: error: <message>``; the error stays the
    ``SystemExit``'s context, so :func:`smr.cli.run_command` gives a ``RuntimeError`` status 1."""
    try:
        yield
    except errors as exc:
        raise SystemExit(f"smr {command}: error: {exc}") from None


def train_command(args: argparse.Namespace) -> int:
    """``smr train`` / ``python -m smr.train`` with parsed arguments."""
    import torch
    import torch.distributed as dist

    from .engine import TrainError, train

    with _errors_of("train", ConfigError, TrainError):
        config = config_from_args(args)
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        try:
            train(
                args.data,
                args.out,
                config,
                spec=args.spec,
                overwrite=args.overwrite,
                resume=args.resume,
                cache_dir=args.cache_dir,
                cache=not args.no_cache,
                progress=not args.no_progress and sys.stderr.isatty(),
            )
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """``smr evaluate RUN DATA``."""
    from smr.core.lineages import SpecError
    from smr.data.folder import DatasetError, FolderDataset

    from .evaluate import (
        EvaluateError,
        evaluate_run,
        format_report,
        select_subset,
        warn_about_training_images,
    )
    from .rundir import RunDirError, load_run

    with _errors_of("evaluate", RunDirError):
        trained = load_run(args.run_dir)
        other = load_run(args.compare) if args.compare else None
    with _errors_of("evaluate", DatasetError, SpecError):
        dataset = FolderDataset.scan(args.data, args.spec or trained.spec, progress=not args.no_progress)
    if list(dataset.spec.classes) != list(trained.spec.classes):
        raise SystemExit(
            f"smr evaluate: error: {args.data} has classes {list(dataset.spec.classes)} but the run was "
            f"trained on {list(trained.spec.classes)}"
        )
    if args.subset == "all":
        warn_about_training_images(dataset, Path(args.run_dir))
    with _errors_of("evaluate", EvaluateError):
        dataset = select_subset(dataset, Path(args.run_dir), args.subset)
    if len(dataset) == 0:
        raise SystemExit(f"smr evaluate: error: no images to evaluate in {args.data}")
    progress = not args.no_progress and sys.stderr.isatty()
    result = evaluate_run(trained, dataset, batch_size=args.batch_size, progress=progress)
    print(json.dumps(result.report, indent=2) if args.json else format_report(result.report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.report, indent=2) + "\n")
    if args.figures:
        _write_figures(Path(args.figures), trained, result, other, dataset, args.batch_size, progress)
    return 0


def _write_figures(
    folder: Path, trained: Any, result: Any, other: Any, dataset: Any, batch_size: int, progress: bool
) -> None:
    """``smr evaluate --figures``: curve positions (beside ``other``'s), nearest patches, confusion."""
    from .evaluate import evaluate_run
    from .figures import confusion_figure, nearest_patches_figure, positions_figure

    folder.mkdir(parents=True, exist_ok=True)
    panels = [(trained, result)]
    if other is not None:
        panels.insert(0, (other, evaluate_run(other, dataset, batch_size=batch_size, progress=progress)))
    written = [
        positions_figure(panels, folder / "curve_positions.png"),
        nearest_patches_figure(trained, result, folder / "nearest_patches.png"),
        confusion_figure(result.report, folder / "confusion_matrix.png"),
    ]
    print("figures: " + ", ".join(str(p) for p in written), file=sys.stderr)


def cv_command(args: argparse.Namespace) -> int:
    """``smr cv DATA --out DIR --folds K --grid ...``."""
    from smr.core.lineages import SpecError
    from smr.data.folder import DatasetError, resolve_spec

    from .cv import CVError, check_settings, expand_grid, plan, run_jobs
    from .rundir import is_complete

    with _errors_of("cv", ValueError):
        variants = expand_grid(args.grid)
    if args.folds < 2:
        raise SystemExit(f"smr cv: error: --folds {args.folds}: need at least 2")
    if args.jobs < 1:
        raise SystemExit(f"smr cv: error: --jobs {args.jobs}: need at least 1")
    with _errors_of("cv", DatasetError, SpecError, ConfigError):
        spec = resolve_spec(args.data, None)
        base = config_from_args(args, folds=args.folds, fold=0)
    out = Path(args.out)
    with _errors_of("cv", ValueError):
        jobs = plan(out, variants, args.folds, args.only_fold)
    todo = [j for j in jobs if not is_complete(j.run_dir)]
    print(
        f"{len(variants)} variant(s) x {len(jobs) // max(len(variants), 1)} fold(s): "
        f"{len(jobs) - len(todo)} complete, {len(todo)} to train",
        file=sys.stderr,
    )
    if args.dry_run:
        for j in jobs:
            print(f"{'done ' if j not in todo else 'todo '} {j.name:<40} {j.run_dir}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with _errors_of("cv", CVError):
        check_settings(out, _cv_settings(args, base, variants))
    failures = run_jobs(
        todo,
        args.data,
        base,
        args.folds,
        out,
        processes=args.jobs,
        threads=args.threads,
        progress=not args.no_progress,
    )
    _report_cv(out, variants, args.folds, [lin.name for lin in spec.lineages])
    if failures:
        for job, why in failures:
            print(f"smr cv: {job.name} failed: {why}", file=sys.stderr)
        return 1
    return 0


def _cv_settings(args: argparse.Namespace, base: TrainConfig, variants: Any) -> dict[str, Any]:
    """What a cv folder is made with (``cv.json``): a later cv there must use the same."""
    return {
        "data": str(Path(args.data).resolve()),
        "folds": args.folds,
        "base_config": {
            k: v for k, v in base.to_dict().items() if k not in ("loss", "curve", "targets", "fold")
        },
        "grid": [v.name for v in variants],
    }


def _report_cv(out: Path, variants: Any, folds: int, lineages: list[str]) -> None:
    """Tabulate the complete runs in ``out``: print the table, write it (and its chart) to ``out``."""
    from .cv import collect, write_tables

    rows = collect(out, variants, folds, lineages)
    written = write_tables(out, rows, lineages, folds)
    print((out / "cv_results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)

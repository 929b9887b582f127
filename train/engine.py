"""The SMR training loop (in the style of torchvision's classification reference).

One epoch:

1. ``train_one_epoch``: class-balanced batches, augmented; loss = (1 - alpha) TML + alpha SMR term
   with the curves and targets of the previous epoch (for the first epoch: fitted on the initial
   network's embeddings);
2. embeddings of the training and validation splits without augmentation (eval mode);
3. curves and targets refitted on the new training embeddings (:func:`fit_lineage_curves`): in the
   embedding space always (what is saved and served), and for the ``dimred`` losses also in the
   2-D parametric t-SNE map, where their SMR term lives;
4. ``evaluate``: an RBF SVM picked by 5-fold CV on the training embeddings, scored by macro F1 on
   the validation split. A better score saves the model, curves and SVM; ``patience`` epochs
   without one stop the run.

Under ``torchrun`` every process trains on its own share of the batches (DDP, gloo on CPU), the
embeddings are computed in shards and gathered, and rank 0 fits the SVM and writes the run dir.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from smr.core.curves import fit_curve
from smr.core.curves_json import LineageCurve, curves_from_json, curves_to_json
from smr.core.lineages import LineageSpec
from smr.core.targets import make_targets, stage_boundaries

from . import rundir
from .classifier import EmbeddingSVM
from .config import TrainConfig
from .dataset import BatchAugment, CellImages, ClassBalancedBatchSampler, normalize
from .losses import TERM_NAMES, SMRCriterion, build_criterion
from .model import smr_net
from .recipe import build_scheduler, cpu_features, ema_model, resolve_precision

__all__ = [
    "DistEnv",
    "EpochState",
    "TrainResult",
    "seed_everything",
    "select_device",
    "compute_embeddings",
    "fit_lineage_curves",
    "train_one_epoch",
    "evaluate",
    "train",
    "TrainError",
]

RUN_FILES = (
    rundir.CONFIG_FILE,
    rundir.MODEL_FILE,
    rundir.CURVES_FILE,
    rundir.SVM_FILE,
    rundir.METRICS_FILE,
    rundir.SPLIT_FILE,
    rundir.CHECKPOINT_FILE,
)


class TrainError(RuntimeError):
    """Training cannot start with this data or configuration (message says how to fix it)."""


# ----------------------------------------------------------------------------------------------
# processes, devices, seeds


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _say(env: DistEnv, message: str) -> None:
    if env.is_main:
        tqdm.write(message, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# embeddings, curves


@torch.no_grad()
def compute_embeddings(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 128,
    env: DistEnv = DistEnv(),
    progress: bool = False,
    desc: str = "embedding",
) -> np.ndarray:
    """Embeddings (N, D) float32 of in-memory uint8 images, in eval mode, without augmentation.

    Under DDP each process embeds every ``world_size``-th image and the shards are gathered, so
    every process returns the full array.
    """
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    indices = np.arange(env.rank, len(images), env.world_size)
    out = np.zeros((len(indices), net.embedding_dim), dtype=np.float32)
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not (progress and env.is_main)):
        chunk = indices[start : start + batch_size]
        batch = torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2)
        out[start : start + len(chunk)] = net(normalize(batch, mean, std, device)).float().cpu().numpy()
    net.train(was_training)
    if not env.distributed:
        return out
    shards: list[Any] = [None] * env.world_size
    dist.all_gather_object(shards, (indices, out))
    full = np.zeros((len(images), net.embedding_dim), dtype=np.float32)
    for idx, emb in shards:
        full[idx] = emb
    return full


def fit_lineage_curves(
    features: np.ndarray,
    labels: np.ndarray,
    spec: LineageSpec,
    *,
    curve: str,
    targets: str,
    fixed_length: float = 1.0,
) -> list[LineageCurve]:
    """Per lineage: class means and counts of ``features`` -> curve (``fit_curve``) and targets.

    ``features`` (N, D) are the embeddings (or their t-SNE map) of the training split, ``labels``
    their class indices into ``spec.classes``. Every lineage class needs at least one sample.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    out: list[LineageCurve] = []
    for li, (lineage, class_idx) in enumerate(zip(spec.lineages, spec.lineage_class_indices(), strict=True)):
        counts = np.array([(labels == c).sum() for c in class_idx], dtype=np.int64)
        empty = [lineage.classes[i] for i, n in enumerate(counts) if n == 0]
        if empty:
            raise TrainError(
                f"lineage {lineage.name!r}: no training samples of {empty}; cannot fit its curve"
            )
        means = np.stack([features[labels == c].mean(axis=0) for c in class_idx])
        fitted = fit_curve(
            curve, means, counts, lineage_index=li % features.shape[1], fixed_length=fixed_length
        )
        t = make_targets(targets, counts)
        out.append(
            LineageCurve(
                name=lineage.name,
                classes=tuple(lineage.classes),
                targets=t,
                boundaries=stage_boundaries(t),
                curve=fitted,
            )
        )
    return out


def _spread(x: np.ndarray) -> float:
    """Root-mean-square distance of the points to their mean (the scale of a point cloud)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())) if len(x) else 1.0


# ----------------------------------------------------------------------------------------------
# one epoch


def train_one_epoch(
    model: nn.Module,
    criterion: SMRCriterion,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    env: DistEnv = DistEnv(),
    progress: bool = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: AveragedModel | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """One pass over the class-balanced batches.

    Per batch: ``augment`` (uint8), normalise, forward (bf16 autocast with ``precision="bf16"``),
    loss, backward, optimiser step, ``scheduler`` step and ``ema`` update. Returns the
    sample-weighted mean of every loss term, plus ``data_seconds`` (loading, augmentation,
    normalisation) and ``step_seconds`` (forward, backward, optimiser, EMA) of this process.
    """
    model.train()
    criterion.train()
    sums: dict[str, float] = {}
    seen = 0
    data_seconds = step_seconds = 0.0
    bar = tqdm(
        loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not (progress and env.is_main)
    )
    crit_params = [p for p in criterion.parameters() if p.requires_grad]
    batches = iter(bar)
    while True:
        t0 = time.perf_counter()
        try:
            images, labels, _ = next(batches)
        except StopIteration:
            break
        x, y = _batch_inputs(images, labels, augment, config, device)
        t1 = time.perf_counter()
        total, terms = _forward_loss(model, criterion, x, y, device=device, precision=precision, epoch=epoch)
        _optimizer_step(total, model, optimizer, crit_params, env=env, scheduler=scheduler, ema=ema)
        t2 = time.perf_counter()
        data_seconds += t1 - t0
        step_seconds += t2 - t1
        n = int(y.shape[0])
        seen += n
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        bar.set_postfix(loss=f"{sums['total'] / seen:.4f}")
    out = _mean_terms(sums, seen, env)
    out["data_seconds"] = round(data_seconds, 3)
    out["step_seconds"] = round(step_seconds, 3)
    return out


def _batch_inputs(
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of uint8 images as the network's input (augmented, normalised) and its labels."""
    if augment is not None:
        images = augment(images)
    x = normalize(images, config.mean, config.std, device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device)


def _forward_loss(
    model: nn.Module,
    criterion: SMRCriterion,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    precision: str,
    epoch: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass (bf16 autocast with ``precision="bf16"``) and the loss on fp32 embeddings."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        embeddings = model(x)
    total, terms = criterion(embeddings.float(), y)
    if not torch.isfinite(total):
        raise TrainError(f"epoch {epoch}: the loss became {float(total)}; lower --lr")
    return total, terms


def _optimizer_step(
    total: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    crit_params: Sequence[torch.Tensor],
    *,
    env: DistEnv,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ema: AveragedModel | None,
) -> None:
    """Backward, the optimiser step, then the ``scheduler`` step and the ``ema`` update."""
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if env.distributed and crit_params:  # the t-SNE map is not inside DDP: average its gradients
        for p in crit_params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= env.world_size
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update_parameters(getattr(model, "module", model))


def _mean_terms(sums: dict[str, float], seen: int, env: DistEnv) -> dict[str, float]:
    """Sample-weighted mean of each loss term over the epoch (over all processes under DDP)."""
    names = [k for k in TERM_NAMES if k in sums] + sorted(k for k in sums if k not in TERM_NAMES)
    stats = torch.tensor([seen] + [sums[k] for k in names], dtype=torch.float64)
    if env.distributed:
        dist.all_reduce(stats)
    return {k: float(stats[i + 1] / stats[0]) for i, k in enumerate(names)}


def evaluate(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    val_labels: np.ndarray,
    *,
    config: TrainConfig,
    num_classes: int,
) -> tuple[EmbeddingSVM, dict[str, Any]]:
    """Fit the SVM stage on the training embeddings and score it on the validation embeddings."""
    svm = EmbeddingSVM(C=config.svm_c, gamma=config.svm_gamma, cv=config.svm_cv, random_state=config.seed)
    svm.fit(train_embeddings, train_labels)
    pred = svm.predict(val_embeddings)
    labels = np.arange(num_classes)
    scores = {
        "val_macro_f1": float(f1_score(val_labels, pred, labels=labels, average="macro", zero_division=0)),
        "val_accuracy": float(accuracy_score(val_labels, pred)),
        "svm_cv_f1": svm.best_score_,
        "svm_C": svm.best_params_["C"],
        "svm_gamma": svm.best_params_["gamma"],
    }
    return svm, scores


# ----------------------------------------------------------------------------------------------
# what a run reports


@dataclass
class EpochState:
    """What an ``on_epoch_end`` callback sees after each epoch (rank 0)."""

    epoch: int
    metrics: dict[str, Any]
    curves: list[LineageCurve]  # fitted in the embedding space at the end of this epoch
    loss_curves: list[LineageCurve] | None  # the ones the loss uses next epoch (t-SNE map for dimred)
    train_embeddings: np.ndarray
    val_embeddings: np.ndarray
    improved: bool


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_macro_f1: float
    epochs: int
    stopped_early: bool
    seconds: float
    val_spearman: dict[str, float | None] = field(default_factory=dict)
    # at the best epoch: validation F1 per class, and per lineage the mean curve position per stage
    val_per_class_f1: dict[str, float] = field(default_factory=dict)
    val_mean_position: dict[str, dict[str, float | None]] = field(default_factory=dict)
    precision: str = "fp32"  # what autocast used ("auto" resolved on this machine)
    cpu_flags: list[str] = field(default_factory=list)  # the CPU's speed-relevant flags
    # the SVM margin of the review flags, chosen on the validation split (smr.core.review.choose_margin)
    review_margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_val_macro_f1": self.best_val_macro_f1,
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 2),
            "val_spearman": self.val_spearman,
            "val_per_class_f1": self.val_per_class_f1,
            "val_mean_position": self.val_mean_position,
            "precision": self.precision,
            "cpu_flags": self.cpu_flags,
            "review_margin": self.review_margin,
        }


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TrainError(f"--out {out} is not empty; choose a new folder or pass --overwrite")
        for name in RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _split(
    labels: np.ndarray, config: TrainConfig, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    from smr.data.splits import SplitError, stratified_kfold, train_val_split

    try:
        if config.folds is not None:
            return stratified_kfold(labels, config.folds, config.seed, class_names=class_names)[config.fold]
        return train_val_split(labels, config.val_fraction, config.seed, class_names=class_names)
    except SplitError as exc:
        raise TrainError(str(exc)) from None


def _make_optimizer(config: TrainConfig, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    extra = [p for p in criterion.parameters() if p.requires_grad]
    if extra:  # the t-SNE map is trained from scratch: its own (larger) learning rate
        groups.append({"params": extra, "lr": config.tsne_lr, "weight_decay": 0.0})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def _format_line(epoch: int, config: TrainConfig, m: dict[str, Any], best: tuple[float, int]) -> str:
    terms = f"tml {m['tml']:.4f}"
    if config.uses_smr:
        terms += f" smr {m['smr']:.4f}" + (" off" if epoch <= config.smr_warmup_epochs else "")
    if config.uses_dimred:
        terms += f" tsne {m['tsne_kl']:.4f}"
    return (
        f"epoch {epoch:>3}/{config.epochs}  loss {m['total']:.4f} ({terms})  "
        f"val macro-F1 {m['val_macro_f1']:.4f}  best {best[0]:.4f} @{best[1]}  {m['seconds']:.1f}s"
    )


def _scan(data: Any, spec: Any, progress: bool, env: DistEnv) -> Any:
    """The folder data set (scanned unless given), its problems reported; every class needs images."""
    from smr.core.lineages import SpecError
    from smr.data.folder import DatasetError, FolderDataset

    if isinstance(data, FolderDataset):
        dataset = data
    else:
        try:
            dataset = FolderDataset.scan(data, spec, progress=progress and env.is_main)
        except (DatasetError, SpecError) as exc:
            raise TrainError(str(exc)) from None
    if dataset.problems:
        shown = "\n  ".join(dataset.problems[:5])
        more = f"\n  ... and {len(dataset.problems) - 5} more" if len(dataset.problems) > 5 else ""
        _say(env, f"warning: {len(dataset.problems)} problem(s) in {dataset.root}:\n  {shown}{more}")
    classes = list(dataset.spec.classes)
    empty = [c for c, n in zip(classes, dataset.counts, strict=True) if n == 0]
    if empty:
        raise TrainError(
            f"{dataset.root}: classes without images: {empty}; every class of the spec needs images"
        )
    return dataset


def _start_run_dir(
    out: Path,
    config: TrainConfig,
    dataset: Any,
    split: tuple[np.ndarray, np.ndarray],
    *,
    overwrite: bool,
    resume: bool,
    env: DistEnv,
) -> dict[str, Any] | None:
    """Prepare ``out`` (rank 0): a new run writes config and split; ``resume`` reads the checkpoint.

    Every process stops with the same error when rank 0 cannot. Returns the checkpoint (resume).
    """
    problem: list[str | None] = [None]
    checkpoint: dict[str, Any] | None = None
    if env.is_main:
        try:
            if resume:
                checkpoint = _load_checkpoint(out, config)
            else:
                _prepare_out_dir(out, overwrite)
        except TrainError as exc:
            problem = [str(exc)]
    if env.distributed:
        dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise TrainError(problem[0])
    if env.distributed:
        shared = [checkpoint]
        dist.broadcast_object_list(shared, src=0)
        checkpoint = shared[0]
    if env.is_main and not resume:
        _write_run_start(out, config, dataset, split)
    return checkpoint


def _write_run_start(
    out: Path, config: TrainConfig, dataset: Any, split: tuple[np.ndarray, np.ndarray]
) -> None:
    """A new run's ``config.json`` (without a result yet) and ``split.json``."""
    train_idx, val_idx = split
    rundir.write_config(out, config, dataset.spec, dataset)
    rel = [p.relative_to(dataset.root).as_posix() for p in dataset.paths]
    rundir.write_split(
        out,
        [rel[i] for i in train_idx],
        [rel[i] for i in val_idx],
        seed=config.seed,
        fold=config.fold if config.folds else None,
        folds=config.folds,
        data=str(Path(dataset.root).resolve()),
    )


def _build_model(config: TrainConfig, device: torch.device) -> tuple[nn.Module, SMRCriterion]:
    seed_everything(config.seed)
    try:
        model = smr_net(embedding_dim=config.embedding_dim, dropout=config.dropout, weights=config.weights)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainError(
            f"cannot load backbone weights {config.weights!r}: {exc}. Pass a local DenseNet-121 state dict "
            "file (torchvision's densenet121-a639ec97.pth works) or leave out --weights for random init"
        ) from None
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = build_criterion(
        config.loss,
        alpha=config.alpha,
        margin=config.margin,
        miner=config.miner,
        embedding_dim=config.embedding_dim,
        perplexity=config.tsne_perplexity,
        tsne_hidden=tuple(config.tsne_hidden),
    ).to(device)
    return model, criterion


# ----------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically (torch's zip format; tensors, numbers, strings, lists)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    rundir.write_bytes(out / rundir.CHECKPOINT_FILE, buf.getvalue())


def _load_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any]:
    path = out / rundir.CHECKPOINT_FILE
    if not path.is_file():
        raise TrainError(f"--resume: {out} has no {rundir.CHECKPOINT_FILE}; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same message
        raise TrainError(
            f"--resume: {path} is unreadable ({exc}); start the run again without --resume"
        ) from None
    saved = state.get("config", {})
    now = config.to_dict()
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in differ)
        raise TrainError(f"--resume: the run was started with other settings: {shown}; pass the same flags")
    return state


def _rng_state(augment_generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "augment": augment_generator.get_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def _restore_rng(state: dict[str, Any], augment_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    augment_generator.set_state(state["augment"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))


# ----------------------------------------------------------------------------------------------
# a whole run: its parts


@dataclass
class _RunData:
    """The data of a run: the scanned data set, its split and the decoded images of both sides."""

    dataset: Any  # smr.data.folder.FolderDataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    train_images: np.ndarray
    val_images: np.ndarray
    y_train: np.ndarray = field(init=False)
    y_val: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.y_train = self.dataset.labels[self.train_idx]
        self.y_val = self.dataset.labels[self.val_idx]

    @property
    def spec(self) -> LineageSpec:
        return self.dataset.spec

    @property
    def classes(self) -> list[str]:
        return list(self.dataset.spec.classes)


@dataclass
class _Parts:
    """What trains: the network (and its DDP wrapper), loss, optimiser, schedule, EMA, batches."""

    model: nn.Module
    train_model: nn.Module  # ``model``, or its DDP wrapper
    criterion: SMRCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    sampler: ClassBalancedBatchSampler
    loader: DataLoader
    loader_generator: torch.Generator
    augment: BatchAugment
    augment_generator: torch.Generator

    @property
    def eval_net(self) -> nn.Module:
        """The network that is evaluated and saved: the EMA average, else the trained one."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _Best:
    """The best epoch so far (by validation macro F1) and the epochs since it."""

    f1: float = -math.inf
    epoch: int = 0
    since_best: int = 0
    spearman: dict[str, float | None] = field(default_factory=dict)
    detail: dict[str, Any] = field(
        default_factory=lambda: {"per_class_f1": {}, "mean_position": {}, "review_margin": None}
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "f1": self.f1,
            "epoch": self.epoch,
            "since_best": self.since_best,
            "spearman": self.spearman,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> _Best:
        return cls(doc["f1"], doc["epoch"], doc["since_best"], doc["spearman"], doc["detail"])


@dataclass
class _Run:
    """Everything an epoch needs: settings, process, data, parts, outputs, and the best so far."""

    config: TrainConfig
    device: torch.device
    env: DistEnv
    precision: str
    out: Path
    progress: bool
    data: _RunData
    parts: _Parts
    metrics: rundir.MetricsWriter | None  # rank 0 only
    on_epoch_end: Callable[[EpochState], None] | None
    best: _Best = field(default_factory=_Best)

    def embed(self, images: np.ndarray, desc: str) -> np.ndarray:
        """Embeddings of ``images`` by the evaluated network (sharded and gathered under DDP)."""
        return compute_embeddings(
            self.parts.eval_net,
            images,
            mean=self.config.mean,
            std=self.config.std,
            device=self.device,
            batch_size=self.config.eval_batch_size,
            env=self.env,
            progress=self.progress,
            desc=desc,
        )


# ----------------------------------------------------------------------------------------------
# a whole run: setup


def _init_process(config: TrainConfig) -> tuple[torch.device, DistEnv]:
    """This process's device, and its place in the process group under ``torchrun``."""
    device = select_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    env = init_distributed(device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device, env


def _load_images(
    dataset: Any,
    split: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    *,
    cache: bool,
    cache_dir: str | os.PathLike | None,
    show: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation images, decoded at the network's size (cached unless not ``cache``)."""
    from .cache import cached_images, decode_images

    if cache:
        images = cached_images(dataset.paths, config.image_size, cache_dir=cache_dir, progress=show)
    else:
        images = decode_images(dataset.paths, config.image_size, progress=show)
    train_idx, val_idx = split
    return np.ascontiguousarray(images[train_idx]), np.ascontiguousarray(images[val_idx])


def _build_parts(config: TrainConfig, device: torch.device, env: DistEnv, data: _RunData) -> _Parts:
    """Network, loss, optimiser, sampler, schedule, EMA, augmentation and loader, seeded."""
    if config.weights is None:
        _say(env, "backbone: random initialisation (no --weights given)")
    model, criterion = _build_model(config, device)
    train_model: nn.Module = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = _make_optimizer(config, model, criterion)
    sampler = ClassBalancedBatchSampler(
        data.y_train,
        config.batch_size,
        config.samples_per_class,
        seed=config.seed,
        num_replicas=env.world_size,
        rank=env.rank,
    )
    scheduler = build_scheduler(
        optimizer,
        config.schedule,
        warmup_steps=config.lr_warmup_epochs * len(sampler),
        total_steps=config.epochs * len(sampler),
        min_ratio=config.min_lr_ratio,
    )
    ema = ema_model(model, config.ema_decay) if config.ema_decay > 0 else None
    augment, augment_generator = _build_augment(config, env)
    loader_generator = torch.Generator()
    loader = DataLoader(
        CellImages(data.train_images, data.y_train),
        batch_sampler=sampler,
        num_workers=config.workers,
        generator=loader_generator,
        persistent_workers=False,
    )
    torch.manual_seed(config.seed * 1000 + env.rank + 1)
    return _Parts(
        model=model,
        train_model=train_model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        sampler=sampler,
        loader=loader,
        loader_generator=loader_generator,
        augment=augment,
        augment_generator=augment_generator,
    )


def _build_augment(config: TrainConfig, env: DistEnv) -> tuple[BatchAugment, torch.Generator]:
    """The batch augmentation, drawing from its own seeded stream (one per process)."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + env.rank + 1)
    augment = BatchAugment(
        crop_scale=config.crop_scale,
        rotation=config.rotation,
        flips=config.flips,
        stain_jitter=config.stain_jitter,
        blur=config.blur,
        generator=generator,
    )
    return augment, generator


# ----------------------------------------------------------------------------------------------
# a whole run: curves, resume


def _refit(run: _Run, train_emb: np.ndarray) -> tuple[list[LineageCurve], list[LineageCurve] | None]:
    """Curves on the training embeddings: (the embedding-space ones, the ones the loss uses).

    The loss's are ``None`` without an SMR term, the same curves for the embedding-space losses,
    and curves fitted in the t-SNE map (their length scaled with it) for the ``dimred`` losses.
    """
    config, criterion, data = run.config, run.parts.criterion, run.data
    curves = fit_lineage_curves(
        train_emb,
        data.y_train,
        data.spec,
        curve=config.curve,
        targets=config.targets,
        fixed_length=config.fixed_length,
    )
    if not criterion.needs_curves:
        return curves, None
    if criterion.curve_space == "embedding":
        return curves, curves
    low = criterion.curve_features(torch.from_numpy(train_emb).to(run.device)).cpu().numpy()
    length = config.fixed_length * _spread(low) / max(_spread(train_emb), 1e-12)
    return curves, fit_lineage_curves(
        low, data.y_train, data.spec, curve=config.curve, targets=config.targets, fixed_length=length
    )


def _initial_curves(run: _Run) -> list[LineageCurve] | None:
    """The loss's curves for the first epoch, from the initial network (t-SNE map warmed up first)."""
    config = run.config
    train_emb = run.embed(run.data.train_images, "initial embeddings")
    criterion = run.parts.criterion
    if criterion.curve_space == "tsne":
        from .tsne import fit_parametric_tsne

        fit_parametric_tsne(
            criterion.tsne,
            torch.from_numpy(train_emb).to(run.device),
            perplexity=config.tsne_perplexity,
            epochs=config.tsne_warmup_epochs,
            batch_size=config.batch_size,
            lr=config.tsne_lr,
            generator=torch.Generator().manual_seed(config.seed),
            progress=run.progress and run.env.is_main,
        )
    return _refit(run, train_emb)[1]


def _restore(run: _Run, checkpoint: dict[str, Any]) -> list[LineageCurve] | None:
    """Continue from ``checkpoint``: parts, random streams, best epoch and metrics rows.

    Returns the loss's curves for the next epoch.
    """
    parts = run.parts
    parts.model.load_state_dict(checkpoint["model"])
    parts.criterion.load_state_dict(checkpoint["criterion"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scheduler.load_state_dict(checkpoint["scheduler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(checkpoint["ema"])
    _restore_rng(checkpoint["rng"], parts.augment_generator)
    loss_curves = curves_from_json(checkpoint["loss_curves"]) if checkpoint["loss_curves"] else None
    run.best = _Best.from_dict(checkpoint["best"])
    if run.metrics is not None:
        run.metrics.restore(checkpoint["metrics"])
    best = run.best
    _say(run.env, f"resuming {run.out} after epoch {checkpoint['epoch']} (best {best.f1:.4f} @{best.epoch})")
    return loss_curves


def _checkpoint_state(run: _Run, epoch: int, loss_curves: list[LineageCurve] | None) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``epoch``: enough to continue as if never stopped."""
    parts = run.parts
    assert run.metrics is not None
    return {
        "epoch": epoch,
        "config": run.config.to_dict(),
        "model": parts.model.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "criterion": parts.criterion.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "loss_curves": curves_to_json(loss_curves, space=parts.criterion.curve_space)
        if loss_curves is not None
        else None,
        "best": run.best.to_dict(),
        "metrics": run.metrics.rows,
        "rng": _rng_state(parts.augment_generator),
    }


# ----------------------------------------------------------------------------------------------
# a whole run: one epoch


def _train_phase(run: _Run, epoch: int, loss_curves: list[LineageCurve] | None) -> dict[str, float]:
    """Hand the loss its curves (SMR term on after the warm-up), reseed the batches, train."""
    config, parts = run.config, run.parts
    if loss_curves is not None:
        parts.criterion.set_curves(loss_curves, run.data.spec)
        parts.criterion.smr_active = epoch > config.smr_warmup_epochs
    parts.sampler.set_epoch(epoch)
    parts.loader_generator.manual_seed(config.seed * 1000 + epoch)
    return train_one_epoch(
        parts.train_model,
        parts.criterion,
        parts.optimizer,
        parts.loader,
        config=config,
        device=run.device,
        epoch=epoch,
        env=run.env,
        progress=run.progress,
        augment=parts.augment,
        scheduler=parts.scheduler,
        ema=parts.ema,
        precision=run.precision,
    )


def _save_best(
    run: _Run, epoch: int, svm: EmbeddingSVM, curves: list[LineageCurve], val_emb: np.ndarray
) -> None:
    """A new best epoch: write model, curves and SVM; note its validation details and review margin."""
    from smr.core.review import choose_margin

    from .evaluate import maturity_correlation, mean_positions

    config, data, out = run.config, run.data, run.out
    rundir.save_model(out, run.parts.eval_net)
    rundir.write_curves(
        out,
        curves,
        {"epoch": epoch, "curve": config.curve, "targets": config.targets, "loss": config.loss},
    )
    rundir.write_svm(out, svm.to_dict(data.classes))
    y_val = data.y_val
    maturities = data.dataset.maturities[data.val_idx]
    run.best.spearman = maturity_correlation(curves, val_emb, y_val, maturities, data.spec)
    per_class = f1_score(
        y_val, svm.predict(val_emb), labels=np.arange(len(data.classes)), average=None, zero_division=0
    )
    run.best.detail = {
        "per_class_f1": {c: float(f) for c, f in zip(data.classes, per_class, strict=True)},
        "mean_position": mean_positions(curves, val_emb, y_val, data.spec),
        "review_margin": choose_margin(svm.predict_proba(val_emb), y_val),
    }


def _score_epoch(
    run: _Run,
    epoch: int,
    embeddings: tuple[np.ndarray, np.ndarray],
    curves: list[LineageCurve],
) -> tuple[dict[str, Any], bool]:
    """Rank 0: fit and score the SVM; a better macro F1 saves the run. Returns (scores, improved)."""
    train_emb, val_emb = embeddings
    data, best = run.data, run.best
    svm, scores = evaluate(
        train_emb, data.y_train, val_emb, data.y_val, config=run.config, num_classes=len(data.classes)
    )
    improved = scores["val_macro_f1"] > best.f1
    if improved:
        best.f1, best.epoch, best.since_best = scores["val_macro_f1"], epoch, 0
        _save_best(run, epoch, svm, curves, val_emb)
    else:
        best.since_best += 1
    return scores, improved


def _record_epoch(
    run: _Run,
    epoch: int,
    row: dict[str, Any],
    state: EpochState,
) -> None:
    """Rank 0: the metrics row, the checkpoint, the log line and the ``on_epoch_end`` callback."""
    assert run.metrics is not None
    run.metrics.append(row)
    _save_checkpoint(run.out, _checkpoint_state(run, epoch, state.loss_curves))
    _say(run.env, _format_line(epoch, run.config, row, (run.best.f1, run.best.epoch)))
    if run.on_epoch_end is not None:
        run.on_epoch_end(state)


def _run_epoch(
    run: _Run, epoch: int, loss_curves: list[LineageCurve] | None
) -> tuple[bool, list[LineageCurve] | None]:
    """Train, embed, refit the curves, evaluate and record one epoch.

    Returns (stop: patience is spent, the loss's curves for the next epoch).
    """
    t0 = time.perf_counter()
    losses = _train_phase(run, epoch, loss_curves)
    train_seconds = time.perf_counter() - t0
    # the (averaged) network that is evaluated and saved also places the loss's curves
    train_emb = run.embed(run.data.train_images, "train embeddings")
    val_emb = run.embed(run.data.val_images, "val embeddings")
    curves, loss_curves = _refit(run, train_emb)
    decision: list[Any] = [None]
    if run.env.is_main:
        scores, improved = _score_epoch(run, epoch, (train_emb, val_emb), curves)
        row = {
            "epoch": epoch,
            **losses,
            **scores,
            "lr": run.parts.optimizer.param_groups[0]["lr"],
            "best_val_macro_f1": run.best.f1,
            "best_epoch": run.best.epoch,
            "train_seconds": round(train_seconds, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        state = EpochState(epoch, row, curves, loss_curves, train_emb, val_emb, improved)
        _record_epoch(run, epoch, row, state)
        decision = [run.best.since_best >= run.config.patience]
    if run.env.distributed:
        dist.broadcast_object_list(decision, src=0)
    return bool(decision[0]), loss_curves


def _run_epochs(run: _Run, first_epoch: int, loss_curves: list[LineageCurve] | None) -> tuple[int, bool]:
    """Epochs ``first_epoch`` .. ``config.epochs`` until patience is spent: (last epoch, stopped early)."""
    config = run.config
    stopped_early = run.best.since_best >= config.patience
    epoch = first_epoch - 1
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped_early:
            break
        stop, loss_curves = _run_epoch(run, epoch, loss_curves)
        if stop:
            stopped_early = epoch < config.epochs
            _say(run.env, f"early stop: no validation macro-F1 gain for {config.patience} epochs")
            break
    return epoch, stopped_early


# ----------------------------------------------------------------------------------------------
# a whole run


def train(
    data: str | os.PathLike | Any,
    out: str | os.PathLike,
    config: TrainConfig,
    *,
    spec: LineageSpec | str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[EpochState], None] | None = None,
) -> TrainResult | None:
    """Train one SMR model into the run directory ``out``.

    Args:
        data: a folder data set (path) or an already scanned ``FolderDataset``.
        spec: lineage spec instead of ``DATA/lineages.toml``.
        overwrite: replace the run files of a non-empty ``out``.
        resume: continue the run in ``out`` after its last complete epoch (``checkpoint.pt``);
            ``config`` must equal the run's. The result equals an uninterrupted run's.
        cache_dir, cache: where decoded images are kept (:mod:`smr.train.cache`), or no cache.
        on_epoch_end: called on rank 0 after every epoch with an :class:`EpochState`.

    Returns the :class:`TrainResult` on rank 0 (``None`` on other ranks). Raises
    :class:`TrainError` for data or settings that cannot be trained on.
    """
    config = config.validate()
    started = time.perf_counter()
    device, env = _init_process(config)
    precision = resolve_precision(config.precision, device)
    hardware = cpu_features()
    _say(env, f"precision: {precision} (CPU: {hardware['model']}; flags {' '.join(hardware['flags'])})")

    dataset = _scan(data, spec, progress, env)
    split = _split(dataset.labels, config, list(dataset.spec.classes))
    out = Path(out)
    checkpoint = _start_run_dir(out, config, dataset, split, overwrite=overwrite, resume=resume, env=env)
    images = _load_images(
        dataset, split, config, cache=cache, cache_dir=cache_dir, show=progress and env.is_main
    )
    run_data = _RunData(dataset, *split, *images)

    parts = _build_parts(config, device, env, run_data)
    metrics = rundir.MetricsWriter(out) if env.is_main else None
    run = _Run(config, device, env, precision, out, progress, run_data, parts, metrics, on_epoch_end)
    if checkpoint is not None:
        loss_curves, first_epoch = _restore(run, checkpoint), checkpoint["epoch"] + 1
    else:
        loss_curves, first_epoch = _initial_curves(run), 1

    epoch, stopped_early = _run_epochs(run, first_epoch, loss_curves)
    if not env.is_main:
        return None
    return _finish(run, epoch, stopped_early, time.perf_counter() - started, hardware)


def _finish(
    run: _Run, epochs: int, stopped_early: bool, seconds: float, hardware: dict[str, Any]
) -> TrainResult:
    """Rank 0: write the run's result into ``config.json`` (marks it complete) and report it."""
    best = run.best
    result = TrainResult(
        run.out,
        best.epoch,
        best.f1,
        epochs,
        stopped_early,
        seconds,
        best.spearman,
        val_per_class_f1=best.detail["per_class_f1"],
        val_mean_position=best.detail["mean_position"],
        review_margin=best.detail.get("review_margin"),
        precision=run.precision,
        cpu_flags=list(hardware["flags"]),
    )
    rundir.write_result(run.out, result.to_dict())
    margin = "" if result.review_margin is None else f", review margin {result.review_margin:g}"
    _say(run.env, f"best val macro-F1 {best.f1:.4f} at epoch {best.epoch}{margin}; run written to {run.out}")
    return result

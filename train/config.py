"""All hyper-parameters of an SMR training run, in one JSON-serialisable dataclass.

``TrainConfig`` is written into every run directory (``config.json``, key ``"config"``) so that a
run can be rebuilt, evaluated and exported from its folder alone. Defaults follow the paper
(Gräbel et al., Sec. III) where it states a value; the others are documented beside each field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TrainConfig",
    "ConfigError",
    "LOSSES",
    "CURVES",
    "TARGETS",
    "MINERS",
    "OPTIMIZERS",
    "DEVICES",
    "SCHEDULES",
    "PRECISIONS",
    "default_alpha",
]

# The loss variants and triplet miners; smr.train.losses uses these (as LOSSES, TRIPLET_MINERS).
LOSSES = ("tml", "normal", "projected", "dimred", "projected+dimred")
CURVES = ("fixed", "linear", "bezier")
TARGETS = ("uniform", "frequency")
MINERS = ("all", "semihard", "hard", "batch_hard")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
# the fields that name one option, in the order validate() checks them
_CHOICES = (
    ("loss", LOSSES),
    ("curve", CURVES),
    ("targets", TARGETS),
    ("miner", MINERS),
    ("optimizer", OPTIMIZERS),
    ("device", DEVICES),
    ("schedule", SCHEDULES),
    ("precision", PRECISIONS),
)


class ConfigError(ValueError):
    """A hyper-parameter outside its valid range or choices."""


def _check(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def default_alpha(loss: str) -> float:
    """The paper's weight of the SMR term: 0.2, and 0.6 for the t-SNE (dimred) variants; 0 for TML.

    The one definition (:mod:`smr.train.losses` imports it; this module imports no torch). Raises
    ``ValueError`` for a loss outside :data:`LOSSES`.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
    if loss == "tml":
        return 0.0
    return 0.6 if loss.endswith("dimred") else 0.2


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run. ``validate()`` checks them; see ``docs/training.md``."""

    # --- loss ---------------------------------------------------------------------------------
    # "tml": triplet margin loss only (the paper's baseline); the others add the SMR term for
    # samples of lineage classes: "normal" (Eq. 3), "projected" (Eq. 4), "dimred" (Eq. 5, in a
    # parametric t-SNE space) and "projected+dimred". "projected" had the highest macro F1 of
    # the SMR variants in the 3-fold cross-validation on PBC (docs/training.md).
    loss: str = "projected"
    # curve model per lineage, refitted every epoch: "fixed" direction, "linear" (SVD), "bezier".
    curve: str = "linear"
    # regression targets along the curve: "uniform" (Eq. 1) or "frequency" (Eq. 2 on log counts).
    targets: str = "uniform"
    # weight of the SMR term, (1 - alpha) for TML. None: the paper's 0.2, or 0.6 for dimred.
    alpha: float | None = None
    # epochs of TML alone before the SMR term is switched on. From random initialisation the
    # first curves would be fitted to embeddings that do not yet separate the stages, and the
    # SMR term would pull a lineage's classes together (the paper starts from ImageNet weights).
    # Curves are fitted every epoch all the same. 0: the SMR term from the first epoch.
    smr_warmup_epochs: int = 3
    # triplet margin (pytorch-metric-learning TripletMarginLoss; embeddings are unit length).
    margin: float = 0.2
    # triplet miner: pml TripletMarginMiner type ("all": every margin-violating triplet, i.e.
    # "batch all"; "semihard"; "hard") or "batch_hard" (pml BatchHardMiner).
    miner: str = "all"
    # length of the "fixed" curve model, centred on the lineage mean (unit-length embeddings
    # have pairwise distances <= 2, so 1.0 spans half the sphere's diameter).
    fixed_length: float = 1.0
    # perplexity of the batch joint probabilities of the parametric t-SNE (dimred variants);
    # must be well below the batch size.
    tsne_perplexity: float = 10.0
    # widths of the hidden layers of the parametric t-SNE network r: D -> 2 (dimred variants).
    tsne_hidden: tuple[int, ...] = (256, 256)
    # learning rate of the t-SNE map (trained from scratch, so larger than the backbone's).
    tsne_lr: float = 1e-3
    # epochs of t-SNE-only training on the initial embeddings, so that the first 2-D curves are
    # fitted in a meaningful map rather than a random projection (dimred variants).
    tsne_warmup_epochs: int = 10

    # --- network ------------------------------------------------------------------------------
    embedding_dim: int = 256  # embedding length (paper: 256)
    dropout: float = 0.05  # dropout before the embedding projection (paper: 0.05)
    # backbone weights: None (random init), "imagenet" (torchvision's), or a local file path.
    weights: str | None = None

    # --- images -------------------------------------------------------------------------------
    # network input size in px (paper: 224). 128 keeps a 2-core CPU run of a few thousand cells
    # within 90 minutes (bf16, channels-last) and shows more of the nuclear lobes and
    # indentations that separate the neutrophil stages than 96 (docs/training.md, 96 vs 128).
    image_size: int = 128
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet normalisation (RGB)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # random resized crop scale range: mild, cells fill most of a patch and must stay whole.
    crop_scale: tuple[float, float] = (0.7, 1.0)
    rotation: bool = True  # random rotation by any angle (cells have no orientation)
    flips: bool = True  # random horizontal and vertical flips
    # stain jitter S: per image, each RGB channel's optical density -log(I) is scaled by U(1-S, 1+S)
    # and shifted by U(-S/2, S/2), mimicking slide-to-slide staining. 0: off (the PBC results).
    stain_jitter: float = 0.0
    # blur B: per image, a Gaussian blur of U(0, B) px at the input size, so that cells cropped
    # from whole slides (softer: scanned finer and resized) read like the training patches.
    # 0: off (the PBC results); the demo trains with 1.0 (docs/training.md, "Options and defaults").
    blur: float = 0.0

    # --- optimisation -------------------------------------------------------------------------
    # AdamW with decoupled weight decay: the network is trained from scratch (no ImageNet weights
    # can be fetched here), where a larger rate than fine-tuning's 1e-4 and a real weight decay help.
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak learning rate, reached after the warm-up
    weight_decay: float = 0.05
    # learning-rate schedule, stepped every optimiser step: "cosine" decay to min_lr_ratio * lr
    # after the warm-up, or "constant".
    schedule: str = "cosine"
    lr_warmup_epochs: int = 2  # linear warm-up from 0 to lr over this many epochs
    min_lr_ratio: float = 0.01  # the cosine's final learning rate, as a fraction of lr
    # exponential moving average of the weights (and BatchNorm statistics), ramped up as
    # (1+n)/(10+n); the average is what is evaluated every epoch and saved. 0: no average.
    ema_decay: float = 0.995
    # "auto": bf16 autocast where the hardware has a bf16 path (AVX-512 BF16 / AMX, CUDA 8.0+),
    # else fp32; "fp32"; "bf16". Weights, optimiser and evaluation embeddings stay fp32.
    precision: str = "auto"
    # NHWC tensors: 1.33x the images/s of NCHW with bf16 on this project's CPUs (BENCHMARKS.md, "Training").
    channels_last: bool = True
    batch_size: int = 64  # images per batch (per process under DDP)
    # class-balanced sampling: each batch holds this many images of each class it draws, so the
    # triplet miner always finds positives (pml MPerClassSampler).
    samples_per_class: int = 8
    # epochs; the learning-rate schedule spans them all. 30 at 128 px keep a 3,500-image run
    # near 70 minutes on a 2-core CPU with bf16 and channels-last.
    epochs: int = 30
    patience: int = 50  # epochs without validation macro-F1 improvement before stopping (paper: 50)
    seed: int = 0  # seeds python, numpy, torch, the split, the sampler and the augmentation
    # DataLoader worker processes (0: load in the main process). Augmentation runs on whole
    # batches in the training process, so workers only gather cached arrays.
    workers: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    eval_batch_size: int = 128  # batch size when computing embeddings without gradients

    # --- SVM stage ----------------------------------------------------------------------------
    # RBF SVC grid searched by stratified k-fold CV (macro F1) on the training embeddings.
    svm_c: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    svm_gamma: tuple[float | str, ...] = ("scale", 0.1, 1.0, 10.0)
    svm_cv: int = 5  # folds of the SVM's grid search (paper: 5)

    # --- split --------------------------------------------------------------------------------
    # stratified hold-out fraction for validation; ignored when ``folds`` is set.
    val_fraction: float = 0.1
    folds: int | None = None  # stratified K-fold cross-validation: the number of folds
    fold: int = 0  # which fold is the validation split (0 <= fold < folds)

    # ------------------------------------------------------------------------------------------
    @property
    def effective_alpha(self) -> float:
        """The SMR weight actually used: ``alpha`` or the paper's default for ``loss``."""
        return default_alpha(self.loss) if self.alpha is None else float(self.alpha)

    @property
    def uses_smr(self) -> bool:
        return self.loss != "tml"

    @property
    def uses_dimred(self) -> bool:
        return "dimred" in self.loss

    @property
    def uses_projection(self) -> bool:
        return "projected" in self.loss

    def validate(self) -> TrainConfig:
        """Raise ``ConfigError`` naming the first bad field and its valid choices; return self."""
        self._check_choices()
        self._check_loss()
        self._check_network()
        self._check_optimisation()
        self._check_evaluation()
        for name in ("lr", "weight_decay", "margin", "dropout", "val_fraction", "min_lr_ratio", "ema_decay"):
            _check(math.isfinite(getattr(self, name)), f"{name} must be finite")
        return self

    def _check_choices(self) -> None:
        """The fields that name one of a few options."""
        for name, options in _CHOICES:
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(options)}")

    def _check_loss(self) -> None:
        """SMR weight, triplet margin, curve length and the t-SNE map."""
        _check(self.alpha is None or 0.0 <= self.alpha <= 1.0, f"alpha={self.alpha} must lie in [0, 1]")
        _check(self.margin > 0, f"margin={self.margin} must be > 0")
        _check(self.fixed_length > 0, f"fixed_length={self.fixed_length} must be > 0")
        _check(self.tsne_perplexity > 1, f"tsne_perplexity={self.tsne_perplexity} must be > 1")
        _check(
            len(self.tsne_hidden) > 0 and all(int(h) >= 2 for h in self.tsne_hidden),
            f"tsne_hidden={self.tsne_hidden} must be one or more layer widths >= 2",
        )
        _check(self.tsne_lr > 0, f"tsne_lr={self.tsne_lr} must be > 0")
        _check(self.smr_warmup_epochs >= 0, f"smr_warmup_epochs={self.smr_warmup_epochs} must be >= 0")
        _check(self.tsne_warmup_epochs >= 0, f"tsne_warmup_epochs={self.tsne_warmup_epochs} must be >= 0")

    def _check_network(self) -> None:
        """Embedding, dropout, input size, normalisation and augmentation."""
        _check(self.embedding_dim >= 2, f"embedding_dim={self.embedding_dim} must be >= 2")
        _check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must lie in [0, 1)")
        _check(
            self.image_size >= 32, f"image_size={self.image_size} must be >= 32 (DenseNet downsamples 32x)"
        )
        _check(len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values (R, G, B)")
        _check(all(s > 0 for s in self.std), f"std={self.std} must be positive")
        _check(0 <= self.stain_jitter < 1, f"stain_jitter={self.stain_jitter} must lie in [0, 1)")
        _check(0 <= self.blur <= 4, f"blur={self.blur} must lie in [0, 4] pixels")
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, f"crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1")

    def _check_optimisation(self) -> None:
        """Learning rate and its schedule, EMA, batches, epochs and loader workers."""
        _check(self.lr > 0, f"lr={self.lr} must be > 0")
        _check(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        _check(self.lr_warmup_epochs >= 0, f"lr_warmup_epochs={self.lr_warmup_epochs} must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        _check(0.0 <= self.ema_decay < 1.0, f"ema_decay={self.ema_decay} must lie in [0, 1) (0: no EMA)")
        _check(self.samples_per_class >= 2, f"samples_per_class={self.samples_per_class} must be >= 2")
        _check(
            self.batch_size >= 2 * self.samples_per_class and self.batch_size % self.samples_per_class == 0,
            f"batch_size={self.batch_size} must be a multiple of samples_per_class={self.samples_per_class} "
            "holding at least two classes",
        )
        _check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        _check(self.patience >= 1, f"patience={self.patience} must be >= 1")
        _check(self.workers >= 0, f"workers={self.workers} must be >= 0")

    def _check_evaluation(self) -> None:
        """Embedding batches, the SVM grid and the validation split."""
        _check(self.eval_batch_size >= 1, f"eval_batch_size={self.eval_batch_size} must be >= 1")
        _check(len(self.svm_c) > 0 and all(c > 0 for c in self.svm_c), f"svm_c={self.svm_c} must be positive")
        _check(
            len(self.svm_gamma) > 0
            and all(
                g in ("scale", "auto") or (isinstance(g, (int, float)) and g > 0) for g in self.svm_gamma
            ),
            f"svm_gamma={self.svm_gamma} must hold positive numbers, 'scale' or 'auto'",
        )
        _check(self.svm_cv >= 2, f"svm_cv={self.svm_cv} must be >= 2")
        _check(0.0 < self.val_fraction < 1.0, f"val_fraction={self.val_fraction} must lie in (0, 1)")
        if self.folds is not None:
            _check(self.folds >= 2, f"folds={self.folds} must be >= 2")
            _check(0 <= self.fold < self.folds, f"fold={self.fold} must lie in [0, folds={self.folds})")

    # --- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming them and the valid keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(names))}")
        kwargs = {}
        defaults = cls()
        for key, value in d.items():
            if isinstance(getattr(defaults, key), tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs).validate()

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()

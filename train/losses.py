"""SMR training losses: the triplet margin loss plus the Spatial Maturity Regression term.

Built like pytorch-metric-learning: a distance, a miner, a loss and a reducer, each small.

* :class:`TripletLoss` -- pytorch-metric-learning's ``TripletMarginLoss`` on the Euclidean distance
  of unit-length embeddings, with a ``TripletMarginMiner`` (or ``BatchHardMiner``) choosing the
  triplets and the default ``AvgNonZeroReducer`` averaging over the triplets with a positive loss.
  Defaults: margin 0.2 (FaceNet's margin for unit-length embeddings; distances lie in [0, 2]) and
  miner ``"all"``: every margin-violating triplet of the batch, which with non-zero averaging is the
  "batch all" loss of Hermans et al. (2017); unlike semi-hard mining it keeps the hard triplets that
  dominate early in training on small batches.
* :class:`SMRRegressionLoss` -- the SMR term of Eqs. 3-5 for samples of lineage classes: ``normal``
  (L1 distance between the embedding and its class target ``l(t_y)`` on its lineage's curve) or
  ``projected`` (``|p(x) - t_y|`` with ``p`` the curve position, see :mod:`smr.train.curves_torch`).
  Samples of the other classes contribute 0, and the sum is divided by the *whole* batch size, as in
  the paper's ``alpha / |B| * sum``. The curves are constants during an epoch: :meth:`set_curves`.
* :class:`SMRCriterion` -- ``total = alpha * smr + (1 - alpha) * tml`` (+ the t-SNE KL for the
  ``dimred`` variants), returning the named terms for logging.

The ``dimred`` variants compute the SMR term on ``r(x)``, a parametric t-SNE map to 2-D
(:class:`smr.train.tsne.ParametricTSNE`), with curves and targets fitted in that 2-D space
(:meth:`SMRCriterion.curve_features` gives the points to fit them on). Gradient routing:

* the KL loss trains ``r`` only: it sees ``r(x.detach())`` and ``P`` of the detached embeddings;
* the SMR term reaches the backbone *through* ``r`` but does not train ``r``: it is evaluated with
  ``r``'s parameters detached. Otherwise ``r`` could satisfy the SMR term on its own, by mapping the
  classes onto their targets, and the backbone would learn nothing from it; this way ``r`` stays a
  t-SNE map of the embeddings, and the SMR term can only act on neighbourhood relations.

``r``'s parameters are the criterion's parameters: give ``criterion.parameters()`` to an optimiser
(the model's or a separate one, as with pytorch-metric-learning's losses that have parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning import distances, losses, miners
from torch import nn

from .config import LOSSES, default_alpha
from .config import MINERS as TRIPLET_MINERS
from .curves_torch import project
from .tsne import ParametricTSNE, tsne_kl_loss

__all__ = [
    "LOSSES",
    "SMR_MODES",
    "TRIPLET_MINERS",
    "TERM_NAMES",
    "default_alpha",
    "TripletLoss",
    "SMRRegressionLoss",
    "SMRCriterion",
    "build_criterion",
]

# LOSSES (the loss variants of the paper: the TML baseline and the four SMR losses), TRIPLET_MINERS
# (pytorch-metric-learning's TripletMarginMiner types, or BatchHardMiner) and default_alpha come
# from smr.train.config, which imports no torch.

SMR_MODES = ("normal", "projected")
"""Forms of the SMR term: L1 to the target point (Eq. 3/5) or distance along the curve (Eq. 4)."""

TERM_NAMES = ("total", "tml", "smr", "tsne_kl")
"""Keys of the terms dict returned by :meth:`SMRCriterion.forward` (every variant has all of them)."""

DEFAULT_MARGIN = 0.2
DEFAULT_PERPLEXITY = 10.0


def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
    return loss


class TripletLoss(nn.Module):
    """Triplet margin loss on mined triplets (pytorch-metric-learning), as one module.

    Args:
        margin: margin of the loss (and of the ``TripletMarginMiner``).
        miner: one of :data:`TRIPLET_MINERS`.
    """

    def __init__(self, margin: float = DEFAULT_MARGIN, miner: str = "all") -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if miner not in TRIPLET_MINERS:
            raise ValueError(f"unknown triplet miner {miner!r}; valid choices: {', '.join(TRIPLET_MINERS)}")
        self.margin = float(margin)
        self.miner_name = miner
        self.distance = distances.LpDistance(normalize_embeddings=True, p=2, power=1)
        self.loss = losses.TripletMarginLoss(margin=margin, distance=self.distance)
        if miner == "batch_hard":
            self.miner = miners.BatchHardMiner(distance=self.distance)
        else:
            self.miner = miners.TripletMarginMiner(
                margin=margin, type_of_triplets=miner, distance=self.distance
            )

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The (anchor, positive, negative) index triplets the loss uses for this batch."""
        return self.miner(embeddings, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(embeddings, labels, self.mine(embeddings, labels))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, miner={self.miner_name!r}"


def _class_stages(class_to_stage: Any) -> list[tuple[int, int] | None]:
    """Normalise the spec mapping: a LineageSpec, or per class index ``(lineage, stage)`` / None."""
    if hasattr(class_to_stage, "stage_of") and hasattr(class_to_stage, "classes"):
        return [class_to_stage.stage_of(c) for c in class_to_stage.classes]
    if isinstance(class_to_stage, Mapping):
        raise TypeError(
            "class_to_stage must be a LineageSpec or a sequence indexed by class index, not a mapping"
        )
    stages: list[tuple[int, int] | None] = []
    for i, s in enumerate(class_to_stage):
        if s is None:
            stages.append(None)
            continue
        try:
            lineage, stage = (int(v) for v in s)
        except (TypeError, ValueError):
            raise ValueError(f"class {i}: expected (lineage index, stage index) or None, got {s!r}") from None
        stages.append((lineage, stage))
    return stages


def _check_against_spec(lineage_curves: Sequence[Any], spec_lineages: Sequence[Any]) -> None:
    if len(lineage_curves) != len(spec_lineages):
        raise ValueError(
            f"{len(lineage_curves)} lineage curves given for a spec with {len(spec_lineages)} lineages "
            f"({', '.join(lin.name for lin in spec_lineages)})"
        )
    for lc, lin in zip(lineage_curves, spec_lineages, strict=True):
        name, classes = getattr(lc, "name", None), getattr(lc, "classes", None)
        if (name is not None and name != lin.name) or (classes is not None and tuple(classes) != lin.classes):
            raise ValueError(
                f"curves of lineage {name!r} {list(classes or [])} do not match the spec's lineage "
                f"{lin.name!r} {list(lin.classes)}"
            )


class SMRRegressionLoss(nn.Module):
    """The SMR term of one batch, for samples of lineage classes (other classes contribute 0).

    Args:
        mode: ``"normal"`` (L1 distance ``sum_d |x_d - l(t_y)_d|``, Eq. 3) or ``"projected"``
            (``|p(x) - t_y|``, Eq. 4).
        reduction: ``"mean"`` (sum over lineage samples / whole batch size, the paper's), ``"sum"``
            or ``"none"`` (per-sample values, 0 for other classes).

    Call :meth:`set_curves` with the curves of the current epoch before the first forward.
    """

    def __init__(self, mode: str = "normal", reduction: str = "mean") -> None:
        super().__init__()
        if mode not in SMR_MODES:
            raise ValueError(f"unknown SMR mode {mode!r}; valid choices: {', '.join(SMR_MODES)}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"unknown reduction {reduction!r}; valid choices: mean, sum, none")
        self.mode = mode
        self.reduction = reduction
        self._curves: list[Any] = []
        # Curves live in non-persistent buffers (they follow .to(device) but are not model state;
        # they are refitted every epoch and saved as curves.json).
        self.register_buffer("class_lineage", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("class_target", torch.empty(0, dtype=torch.float64), persistent=False)
        self.register_buffer("class_point", torch.empty(0, 0, dtype=torch.float64), persistent=False)

    @property
    def has_curves(self) -> bool:
        return bool(self._curves)

    @property
    def num_classes(self) -> int:
        return int(self.class_lineage.shape[0])

    @property
    def dim(self) -> int | None:
        """Dimension of the space the curves live in (``None`` before :meth:`set_curves`)."""
        return int(self.class_point.shape[1]) if self._curves else None

    def set_curves(self, lineage_curves: Sequence[Any], class_to_stage: Any) -> None:
        """Use new curves and targets (constant until the next call).

        Args:
            lineage_curves: the core's ``list[LineageCurve]``, one per lineage in spec order (each
                with ``curve`` and ``targets``; ``name`` and ``classes`` are checked when a spec is given).
            class_to_stage: the :class:`~smr.core.lineages.LineageSpec`, or a sequence indexed by
                class index giving ``(lineage index, stage index)`` or ``None`` for other classes.
        """
        stages = _class_stages(class_to_stage)
        if not lineage_curves:
            raise ValueError("no lineage curves given")
        if hasattr(class_to_stage, "lineages"):
            _check_against_spec(lineage_curves, class_to_stage.lineages)
        controls = []
        for li, lc in enumerate(lineage_curves):
            cp = np.array(lc.curve.control_points, dtype=np.float64)  # a writable copy
            if cp.ndim != 2 or cp.shape[0] < 2:
                raise ValueError(f"lineage {li}: control points must be (K+1, D), got shape {cp.shape}")
            if not np.isfinite(cp).all():
                raise ValueError(f"lineage {li}: curve has non-finite control points")
            controls.append(cp)
        dims = {cp.shape[1] for cp in controls}
        if len(dims) != 1:
            raise ValueError(f"lineage curves live in spaces of different dimensions: {sorted(dims)}")
        (dim,) = dims
        n_lineages = len(lineage_curves)
        lineage = np.full(len(stages), -1, dtype=np.int64)
        target = np.zeros(len(stages), dtype=np.float64)
        point = np.zeros((len(stages), dim), dtype=np.float64)
        for c, s in enumerate(stages):
            if s is None:
                continue
            li, si = s
            if not 0 <= li < n_lineages:
                raise ValueError(f"class {c}: lineage index {li} but only {n_lineages} lineage curves given")
            targets = np.asarray(lineage_curves[li].targets, dtype=np.float64)
            if not 0 <= si < len(targets):
                raise ValueError(f"class {c}: stage {si} of lineage {li}, which has {len(targets)} targets")
            lineage[c], target[c] = li, targets[si]
            point[c] = np.asarray(lineage_curves[li].curve.points(np.array([targets[si]])), dtype=np.float64)[
                0
            ]
        device = self.class_lineage.device
        self.class_lineage = torch.from_numpy(lineage).to(device)
        self.class_target = torch.from_numpy(target).to(device)
        self.class_point = torch.from_numpy(point).to(device)
        for name in [n for n in self._buffers if n.startswith("control_points_")]:
            del self._buffers[name]
        for li, cp in enumerate(controls):
            self.register_buffer(f"control_points_{li}", torch.from_numpy(cp).to(device), persistent=False)
        self._curves = [lc.curve for lc in lineage_curves]

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if not self._curves:
            raise RuntimeError(
                "SMRRegressionLoss has no curves: call set_curves() with curves fitted on the current "
                "embeddings before the first forward"
            )
        if embeddings.ndim != 2 or not embeddings.is_floating_point():
            raise ValueError(
                f"embeddings must be a float (N, D) tensor, got {embeddings.dtype} {tuple(embeddings.shape)}"
            )
        if embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]} but the curves live in "
                f"{self.dim} dimensions"
            )
        if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        labels = labels.to(device=embeddings.device, dtype=torch.long)
        lineage = self.class_lineage[labels]
        per_sample = embeddings.new_zeros(embeddings.shape[0])
        if self.mode == "normal":
            idx = torch.nonzero(lineage >= 0).flatten()
            target = self.class_point.to(embeddings.dtype)[labels[idx]]
            per_sample = per_sample.index_put((idx,), (embeddings[idx] - target).abs().sum(dim=1))
        else:
            for li, curve in enumerate(self._curves):
                idx = torch.nonzero(lineage == li).flatten()
                if idx.numel() == 0:
                    continue
                t = project(curve, embeddings[idx], control_points=getattr(self, f"control_points_{li}"))
                target = self.class_target.to(embeddings.dtype)[labels[idx]]
                per_sample = per_sample.index_put((idx,), (t - target).abs())
        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample.mean() if per_sample.numel() else per_sample.sum()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, reduction={self.reduction!r}, lineages={len(self._curves)}"


class SMRCriterion(nn.Module):
    """The training loss of one SMR variant: TML plus the weighted SMR term, with named terms.

    ``forward(embeddings, labels)`` returns ``(total, terms)``; ``total = alpha * smr + (1 - alpha)
    * tml (+ tsne_kl)`` is what to backpropagate, ``terms`` maps :data:`TERM_NAMES` to detached
    scalars for logging (0 for terms a variant does not have). Without an SMR term (``tml``),
    ``total = tml``; with :attr:`smr_active` False (a TML warm-up), ``total = tml (+ tsne_kl)`` and
    the SMR term is only logged.

    Args:
        tml: the triplet loss (``(embeddings, labels) -> scalar``).
        smr_term: the SMR term, or ``None`` for the TML baseline.
        alpha: weight of the SMR term, in [0, 1].
        tsne: the parametric t-SNE ``r`` for the ``dimred`` variants (the SMR term is then computed
            on ``r(x)`` and its curves must be fitted on :meth:`curve_features`).
        perplexity: perplexity of the per-batch t-SNE joint probabilities.
    """

    def __init__(
        self,
        tml: nn.Module,
        smr_term: SMRRegressionLoss | None,
        alpha: float,
        *,
        tsne: ParametricTSNE | None = None,
        perplexity: float = DEFAULT_PERPLEXITY,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if tsne is not None and smr_term is None:
            raise ValueError("a t-SNE map needs an SMR term to use it")
        self.tml = tml
        self.smr_term = smr_term
        self.tsne = tsne
        self.alpha = float(alpha) if smr_term is not None else 0.0
        self.perplexity = float(perplexity)
        # False during the TML warm-up: the SMR term is computed and logged but not optimised.
        self.smr_active = True

    @property
    def loss(self) -> str:
        """The variant's name in :data:`LOSSES`."""
        if self.smr_term is None:
            return "tml"
        if self.tsne is None:
            return self.smr_term.mode
        return "dimred" if self.smr_term.mode == "normal" else "projected+dimred"

    @property
    def needs_curves(self) -> bool:
        """Whether :meth:`set_curves` must be called before training (every variant but ``tml``)."""
        return self.smr_term is not None

    @property
    def curve_space(self) -> str:
        """``"embedding"``, or ``"tsne"`` when the curves must be fitted in the 2-D t-SNE map."""
        return "tsne" if self.tsne is not None else "embedding"

    @torch.no_grad()
    def curve_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The points to fit this criterion's curves on: ``r(embeddings)`` for dimred, else the embeddings."""
        if self.tsne is None:
            return embeddings.detach()
        return self.tsne(embeddings.to(next(self.tsne.parameters()).dtype))

    def set_curves(self, lineage_curves: Sequence[Any], class_to_stage: Any) -> None:
        """Set the SMR term's curves, fitted in :attr:`curve_space` (see SMRRegressionLoss.set_curves)."""
        if self.smr_term is None:
            raise RuntimeError("the 'tml' loss has no SMR term and uses no curves")
        if self.tsne is not None:
            dims = {np.asarray(lc.curve.control_points).shape[-1] for lc in lineage_curves}
            if dims != {self.tsne.out_features}:
                raise ValueError(
                    f"the {self.loss!r} loss needs curves fitted in the {self.tsne.out_features}-D t-SNE map "
                    f"(curve_features), got curves of dimension {sorted(dims)}"
                )
        self.smr_term.set_curves(lineage_curves, class_to_stage)

    def compute_terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The undetached terms ``tml``, ``smr`` and ``tsne_kl`` (with their gradient routing)."""
        zero = embeddings.new_zeros(())
        terms = {"tml": self.tml(embeddings, labels), "smr": zero, "tsne_kl": zero}
        if self.smr_term is None:
            return terms
        if self.tsne is None:
            terms["smr"] = self.smr_term(embeddings, labels)
            return terms
        terms["tsne_kl"] = tsne_kl_loss(embeddings, self.tsne(embeddings.detach()), self.perplexity)
        frozen = {name: p.detach() for name, p in self.tsne.named_parameters()}
        low = torch.func.functional_call(self.tsne, frozen, (embeddings,))
        terms["smr"] = self.smr_term(low, labels)
        return terms

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.compute_terms(embeddings, labels)
        if self.smr_term is None:
            total = terms["tml"]
        elif not self.smr_active:
            total = terms["tml"] + terms["tsne_kl"]
        else:
            total = self.alpha * terms["smr"] + (1.0 - self.alpha) * terms["tml"] + terms["tsne_kl"]
        logged = {"total": total.detach()}
        logged.update({k: v.detach() for k, v in terms.items()})
        return total, logged

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss!r}, alpha={self.alpha}, perplexity={self.perplexity}, "
            f"smr_active={self.smr_active}"
        )


def build_criterion(
    loss: str,
    *,
    alpha: float | None = None,
    margin: float = DEFAULT_MARGIN,
    miner: str = "all",
    embedding_dim: int = 256,
    perplexity: float = DEFAULT_PERPLEXITY,
    tsne_hidden: Sequence[int] = (256, 256),
) -> SMRCriterion:
    """The criterion of one loss variant.

    Args:
        loss: one of :data:`LOSSES`.
        alpha: weight of the SMR term; ``None`` for :func:`default_alpha` (ignored for ``tml``,
            whose total is the triplet loss itself).
        margin: triplet margin.
        miner: triplet miner, one of :data:`TRIPLET_MINERS`.
        embedding_dim: embedding size (input of the t-SNE map for the ``dimred`` variants).
        perplexity: per-batch t-SNE perplexity (``dimred`` variants).
        tsne_hidden: hidden layer widths of the t-SNE map.
    """
    _check_loss(loss)
    alpha = default_alpha(loss) if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    tml = TripletLoss(margin=margin, miner=miner)
    if loss == "tml":
        return SMRCriterion(tml, None, 0.0)
    mode = "projected" if loss.startswith("projected") else "normal"
    tsne = ParametricTSNE(embedding_dim, tsne_hidden, 2) if loss.endswith("dimred") else None
    return SMRCriterion(tml, SMRRegressionLoss(mode), alpha, tsne=tsne, perplexity=perplexity)

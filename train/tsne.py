"""Parametric t-SNE: the dimensionality reduction ``r`` of the ``dimred`` SMR losses (Eq. 5).

``r`` is a small MLP (embedding_dim -> 2) trained with the t-SNE objective (van der Maaten, 2009,
"Learning a Parametric Embedding by Preserving Local Structure") on each training batch:

* high-dimensional joint probabilities ``P``: Gaussian conditionals ``p(j|i)`` on squared Euclidean
  distances, with each row's precision found by bisection so that its perplexity matches the
  requested one (all rows at once), then symmetrised ``p_ij = (p(j|i) + p(i|j)) / 2N``;
* low-dimensional ``Q`` with the Student-t kernel (one degree of freedom):
  ``q_ij = (1 + |y_i - y_j|^2)^-1 / sum_{k != l} (1 + |y_k - y_l|^2)^-1``;
* the loss ``KL(P || Q)``.

``P`` is a constant target computed from the (detached) embeddings: the KL loss trains ``r`` and
never the backbone. Perplexity is per batch, so it must be well below the batch size; values above
``(N - 1) / 3`` are lowered to that bound (as openTSNE does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "ParametricTSNE",
    "conditional_probabilities",
    "joint_probabilities",
    "student_t_probabilities",
    "tsne_kl_loss",
    "effective_perplexity",
    "fit_parametric_tsne",
]


def effective_perplexity(perplexity: float, n: int) -> float:
    """The perplexity used for a batch of ``n`` points: ``min(perplexity, (n - 1) / 3)``."""
    if not perplexity > 0:
        raise ValueError(f"perplexity must be > 0, got {perplexity}")
    return min(float(perplexity), (n - 1) / 3.0)


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d = d.clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d


def conditional_probabilities(
    sq_distances: torch.Tensor, perplexity: float, *, iterations: int = 64
) -> torch.Tensor:
    """Row-wise Gaussian conditionals ``p(j|i)`` (N, N) whose perplexity is ``perplexity`` per row.

    Bisection on ``log(beta_i)`` (beta = 1 / 2 sigma^2) for all rows at once; the entropy of a row
    decreases monotonically with its precision. ``iterations`` halvings of a range of 80 in log
    space give far more precision than needed in float64.
    """
    n = sq_distances.shape[0]
    d = sq_distances.to(torch.float64)
    eye = torch.eye(n, dtype=torch.bool, device=d.device)
    off = d.masked_fill(eye, float("inf"))
    # Shift by the nearest-neighbour distance (does not change p) and scale the search range by
    # the row's typical distance, so that the bracket fits any scale of embedding.
    d_min = off.min(dim=1, keepdim=True).values
    shifted = (off - d_min).masked_fill(eye, float("inf"))
    scale = (d.sum(dim=1, keepdim=True) / max(n - 1, 1)).clamp_min(1e-12)
    target = math.log(perplexity)
    lo = torch.full((n, 1), -40.0, dtype=torch.float64, device=d.device)
    hi = torch.full((n, 1), 40.0, dtype=torch.float64, device=d.device)

    def probs_and_entropy(log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = -(log_beta.exp() / scale) * shifted
        p = torch.softmax(logits, dim=1)
        entropy = -(torch.special.xlogy(p, p)).sum(dim=1, keepdim=True)
        return p, entropy

    for _ in range(iterations):
        mid = (lo + hi) / 2
        _, entropy = probs_and_entropy(mid)
        too_flat = entropy > target  # needs a larger precision
        lo = torch.where(too_flat, mid, lo)
        hi = torch.where(too_flat, hi, mid)
    p, _ = probs_and_entropy((lo + hi) / 2)
    return p.to(sq_distances.dtype)


@torch.no_grad()
def joint_probabilities(high: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetrised t-SNE joint probabilities ``P`` (N, N) of the points ``high`` (N, D); no gradient."""
    n = high.shape[0]
    cond = conditional_probabilities(
        _squared_distances(high.detach().to(torch.float64)), effective_perplexity(perplexity, n)
    )
    return ((cond + cond.T) / (2.0 * n)).to(high.dtype)


def student_t_probabilities(low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-dimensional ``Q`` (N, N) with the Student-t kernel, and ``log Q`` (diagonal: -inf)."""
    n = low.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=low.device)
    log_w = -torch.log1p(_squared_distances(low)).masked_fill(eye, float("inf"))
    log_q = log_w - torch.logsumexp(log_w.flatten(), dim=0)
    return log_q.exp(), log_q


def tsne_kl_loss(high: torch.Tensor, low: torch.Tensor, perplexity: float = 10.0) -> torch.Tensor:
    """``KL(P || Q)`` of one batch: ``P`` from ``high`` (N, D), constant; ``Q`` from ``low`` (N, d).

    The gradient flows into ``low`` only. Batches of fewer than two points give 0.
    """
    if high.ndim != 2 or low.ndim != 2:
        raise ValueError(f"high and low must be 2-D (N, D), got {tuple(high.shape)} and {tuple(low.shape)}")
    if high.shape[0] != low.shape[0]:
        raise ValueError(f"high has {high.shape[0]} points but low has {low.shape[0]}")
    n = high.shape[0]
    if n < 2:
        return low.sum() * 0.0
    p = joint_probabilities(high, perplexity).to(low.dtype)
    _, log_q = student_t_probabilities(low)
    eye = torch.eye(n, dtype=torch.bool, device=low.device)
    log_q = log_q.masked_fill(eye, 0.0)
    return (torch.special.xlogy(p, p) - p * log_q).sum()


class ParametricTSNE(nn.Module):
    """``r``: an MLP from the embedding (``in_features``) to a ``out_features``-D t-SNE map.

    Args:
        in_features: embedding size (256 in the paper).
        hidden: widths of the hidden layers (ReLU).
        out_features: size of the map (2 for SMR's ``dimred`` losses).
    """

    def __init__(
        self, in_features: int = 256, hidden: Sequence[int] = (256, 256), out_features: int = 2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"ParametricTSNE expects (N, {self.in_features}) inputs, got {tuple(x.shape)}")
        return self.net(x)


def fit_parametric_tsne(
    model: ParametricTSNE,
    embeddings: torch.Tensor,
    *,
    perplexity: float = 10.0,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``r`` alone on fixed ``embeddings`` (N, D); returns the mean KL of each epoch.

    Useful before the first epoch of a ``dimred`` run, so that the first 2-D curves are fitted in a
    meaningful map rather than a random projection.
    """
    from tqdm.auto import tqdm

    embeddings = embeddings.detach()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    n = embeddings.shape[0]
    for _ in tqdm(range(epochs), desc="t-SNE warm-up", disable=not progress):
        order = torch.randperm(n, generator=generator, device="cpu").to(embeddings.device)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            batch = embeddings[order[start : start + batch_size]]
            if batch.shape[0] < 4:
                continue
            loss = tsne_kl_loss(batch, model(batch), perplexity)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item()
            batches += 1
        history.append(total / max(batches, 1))
    return history

"""Parametric t-SNE: P against a naive per-row binary search, KL against a double loop, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smr.train.tsne import (
    ParametricTSNE,
    conditional_probabilities,
    effective_perplexity,
    fit_parametric_tsne,
    joint_probabilities,
    tsne_kl_loss,
)


def naive_conditional_row(dist_row: np.ndarray, perplexity: float, tol: float = 1e-12) -> np.ndarray:
    """One row of p(j|i) by the classic binary search on beta (van der Maaten's tsne.py x2p)."""
    target = math.log(perplexity)
    beta, lo, hi = 1.0, -math.inf, math.inf
    for _ in range(500):
        logits = [-beta * d for d in dist_row]
        m = max(logits)
        w = [math.exp(v - m) for v in logits]
        s = sum(w)
        p = [v / s for v in w]
        entropy = -sum(v * math.log(v) for v in p if v > 0)
        if abs(entropy - target) < tol:
            break
        if entropy > target:
            lo = beta
            beta = beta * 2 if hi == math.inf else (beta + hi) / 2
        else:
            hi = beta
            beta = beta / 2 if lo == -math.inf else (beta + lo) / 2
    return np.array(p)


def naive_joint(x: np.ndarray, perplexity: float) -> np.ndarray:
    n = len(x)
    cond = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        dist = [float(((x[i] - x[j]) ** 2).sum()) for j in others]
        cond[i, others] = naive_conditional_row(np.array(dist), perplexity)
    return (cond + cond.T) / (2 * n)


def naive_kl(p: np.ndarray, y: np.ndarray) -> float:
    n = len(y)
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                w[i, j] = 1.0 / (1.0 + float(((y[i] - y[j]) ** 2).sum()))
    q = w / w.sum()
    kl = 0.0
    for i in range(n):
        for j in range(n):
            if i != j and p[i, j] > 0:
                kl += p[i, j] * math.log(p[i, j] / q[i, j])
    return kl


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one thread avoids oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_joint_probabilities_match_naive_binary_search(rng):
    x = rng.normal(size=(30, 12)) * 3.0
    perplexity = 6.0
    got = joint_probabilities(torch.from_numpy(x), perplexity).numpy()
    np.testing.assert_allclose(got, naive_joint(x, perplexity), rtol=1e-6, atol=1e-12)
    assert got.sum() == pytest.approx(1.0)


def test_each_row_reaches_the_requested_perplexity(rng):
    x = torch.from_numpy(rng.normal(size=(40, 5)))
    d = torch.cdist(x, x) ** 2
    p = conditional_probabilities(d, 8.0).numpy()
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    np.testing.assert_allclose(np.exp(entropy), 8.0, rtol=1e-8)
    assert np.all(np.diag(p) == 0)


def test_perplexity_is_lowered_for_small_batches(rng):
    assert effective_perplexity(30.0, 16) == pytest.approx(5.0)
    assert effective_perplexity(3.0, 16) == pytest.approx(3.0)
    x = rng.normal(size=(16, 4))
    got = joint_probabilities(torch.from_numpy(x), 30.0).numpy()
    np.testing.assert_allclose(got, naive_joint(x, 5.0), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="perplexity"):
        effective_perplexity(0.0, 16)


def test_kl_matches_double_loop(rng):
    x = rng.normal(size=(25, 10))
    y = rng.normal(size=(25, 2))
    got = tsne_kl_loss(torch.from_numpy(x), torch.from_numpy(y), 5.0).item()
    assert got == pytest.approx(naive_kl(naive_joint(x, 5.0), y), rel=1e-6)


def test_kl_gradient_matches_finite_differences_and_skips_high(rng):
    high = torch.from_numpy(rng.normal(size=(12, 6))).requires_grad_(True)
    low = torch.from_numpy(rng.normal(size=(12, 2))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda lo: tsne_kl_loss(high, lo, 3.0), (low,))
    tsne_kl_loss(high, low, 3.0).backward()
    assert high.grad is None  # P is a constant target: the KL never trains the backbone
    assert low.grad.abs().sum() > 0


def test_kl_rejects_mismatched_batches_and_handles_tiny_ones():
    with pytest.raises(ValueError, match="3 points but low has 4"):
        tsne_kl_loss(torch.zeros(3, 5), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        tsne_kl_loss(torch.zeros(3), torch.zeros(3, 2))
    assert tsne_kl_loss(torch.zeros(1, 5), torch.zeros(1, 2)).item() == 0.0


def test_parametric_tsne_learns_a_map_that_keeps_clusters(rng):
    torch.manual_seed(0)
    centres = rng.normal(size=(3, 16)) * 4.0
    labels = np.repeat(np.arange(3), 40)
    x = torch.from_numpy(centres[labels] + rng.normal(size=(120, 16))).float()
    model = ParametricTSNE(16, (32, 32), 2)
    generator = torch.Generator().manual_seed(0)
    history = fit_parametric_tsne(
        model, x, perplexity=10.0, epochs=25, batch_size=60, lr=3e-3, generator=generator
    )
    assert history[-1] < 0.5 * history[0]
    with torch.no_grad():
        y = model(x).numpy()
    # 1-nearest-neighbour (leave one out) in the 2-D map recovers the clusters
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95


def test_parametric_tsne_checks_its_input():
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        ParametricTSNE(8)(torch.zeros(4, 7))

"""Classes, counts, latent maturity and label noise of the synthetic marrow."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smr.core.lineages import PAPER_SPEC
from smr.synth.population import (
    MARROW_PROPORTIONS,
    allocate_counts,
    cell_rng,
    label_probabilities,
    plan_population,
    sample_maturity,
    stage_edges,
)


def _naive_label_probabilities(m: float, n: int, noise: float) -> list[float]:
    """The label-noise model written out for one maturity, boundary by boundary."""
    width = 1.0 / n
    stage = min(int(m / width), n - 1)
    p = [0.0] * n
    if noise == 0:
        p[stage] = 1.0
        return p
    tau = noise * width
    if stage > 0:
        p[stage - 1] = 0.5 * math.exp(-(m - stage * width) / tau)
    if stage < n - 1:
        p[stage + 1] = 0.5 * math.exp(-((stage + 1) * width - m) / tau)
    p[stage] = 1.0 - sum(p)
    return p


@pytest.mark.parametrize("n", [2, 4, 6])
@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_probabilities_match_the_model_written_out(n, noise):
    m = np.linspace(0, 1, 97)
    got = label_probabilities(m, n, noise)
    want = np.array([_naive_label_probabilities(x, n, noise) for x in m])
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0)


def test_conditional_maturity_matches_forward_simulation():
    """p(m | label) by rejection sampling equals the forward model: m ~ p(m), then label ~ p(label | m)."""
    weights = [1.5, 3.0, 10.0, 11.0, 13.0, 14.0]
    n, noise = len(weights), 0.15
    rng = np.random.default_rng(0)
    # forward: stage by weight, m uniform in the stage, label from the noise model (one by one)
    stage = rng.choice(n, size=30000, p=np.asarray(weights) / sum(weights))
    m = (stage + rng.random(stage.size)) / n
    u = rng.random(m.size)
    labels = np.array([int(np.searchsorted(np.cumsum(_naive_label_probabilities(x, n, noise)), r)) for x, r in
                       zip(m, u, strict=True)])  # fmt: skip
    for label in (0, 2, 5):
        forward = m[labels == label]
        sampled = np.array(
            [sample_maturity(label, weights, noise, cell_rng(1, 0, label, i)) for i in range(1500)]
        )
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            assert abs(np.quantile(sampled, q) - np.quantile(forward, q)) < 0.015, (label, q)


def test_allocate_counts_sums_exactly_and_respects_minimum():
    p = [MARROW_PROPORTIONS[c] for c in PAPER_SPEC.classes]
    for n, minimum in [(15, 1), (100, 3), (1000, 20), (12345, 20)]:
        counts = allocate_counts(n, p, minimum)
        assert counts.sum() == n
        assert counts.min() >= minimum
        # beyond the minimum, counts follow the proportions to within one cell
        rest = (n - minimum * len(p)) * np.asarray(p) / sum(p)
        assert np.all(np.abs(counts - minimum - rest) < 1.0)
    with pytest.raises(ValueError, match="cannot hold"):
        allocate_counts(20, p, 2)


def test_plan_is_imbalanced_like_marrow_but_has_every_class():
    draws = plan_population(2000, seed=3, min_per_class=10)
    counts = {c: sum(d.cls == c for d in draws) for c in PAPER_SPEC.classes}
    assert min(counts.values()) >= 10
    assert counts["segmented"] > 5 * counts["blast"]
    assert counts["band"] > 5 * counts["proerythroblast"]
    assert counts["lymphocyte"] > 5 * counts["basophil"]
    assert [d.index for d in draws] == list(range(2000))
    small = plan_population(15, seed=3)
    assert sorted(d.cls for d in small) == sorted(PAPER_SPEC.classes)


def test_maturity_is_monotone_with_stage_and_mostly_inside_it():
    draws = plan_population(6000, seed=5, min_per_class=60, label_noise=0.1)
    for lineage in PAPER_SPEC.lineages:
        edges = stage_edges(len(lineage.classes))
        medians = []
        for k, cls in enumerate(lineage.classes):
            m = np.array([d.maturity for d in draws if d.cls == cls])
            assert all(d.lineage == lineage.name for d in draws if d.cls == cls)
            assert m.min() >= 0 and m.max() <= 1
            inside = np.mean((m >= edges[k]) & (m <= edges[k + 1]))
            assert inside > 0.8, (cls, inside)
            assert inside < 1.0, f"{cls}: no label noise near the boundaries"
            medians.append(np.median(m))
        assert np.all(np.diff(medians) > 0), (lineage.name, medians)
    others = [d for d in draws if PAPER_SPEC.stage_of(d.cls) is None]
    assert others and all(d.lineage is None and math.isnan(d.maturity) for d in others)


def test_no_label_noise_keeps_every_cell_inside_its_stage():
    draws = plan_population(1500, seed=2, label_noise=0.0)
    for d in draws:
        where = PAPER_SPEC.stage_of(d.cls)
        if where is None:
            continue
        n = len(PAPER_SPEC.lineages[where[0]].classes)
        assert where[1] / n <= d.maturity <= (where[1] + 1) / n


def test_plan_depends_on_the_seed_only():
    a = plan_population(300, seed=7)
    assert a == plan_population(300, seed=7)
    assert a != plan_population(300, seed=8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_cells": 10}, "at least 15"), ({"n_cells": 100, "label_noise": -0.1}, "label noise")],
)
def test_plan_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_population(seed=0, **kwargs)

"""Regression targets (Eq. 1, Eq. 2 on class counts), stage boundaries and stages read back from t."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smr.core.targets import (
    TARGET_KINDS,
    frequency_targets,
    make_targets,
    stage_boundaries,
    stage_from_position,
    uniform_targets,
)


def naive_frequency_targets(counts: list[int]) -> list[float]:
    """Eq. 2 written out term by term, with log(N_c + 1) in place of log f_c."""
    logs = [math.log(n + 1) for n in counts]
    total = sum(0.5 * (logs[i - 1] + logs[i]) for i in range(1, len(counts)))
    return [sum(0.5 * (logs[i - 1] + logs[i]) for i in range(1, c + 1)) / total for c in range(len(counts))]


def intervals(targets: np.ndarray) -> np.ndarray:
    """Interval of each class: the span between its two stage boundaries (0 and 1 at the ends)."""
    mids = [(targets[c] + targets[c + 1]) / 2 for c in range(len(targets) - 1)]
    edges = [0.0, *mids, 1.0]
    return np.array([edges[c + 1] - edges[c] for c in range(len(targets))])


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_uniform_targets_are_evenly_spaced(n: int) -> None:
    np.testing.assert_allclose(uniform_targets(n), [c / (n - 1) for c in range(n)], rtol=0, atol=1e-15)


def test_frequency_targets_match_a_naive_implementation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.integers(1, 5000, rng.integers(2, 9)).tolist()
        np.testing.assert_allclose(
            frequency_targets(counts), naive_frequency_targets(counts), rtol=0, atol=1e-14
        )


@pytest.mark.parametrize("counts", [[1, 1], [1, 1, 1, 1], [1, 1000, 1], [5, 5, 5, 5, 5, 5]])
def test_frequency_targets_are_strictly_increasing_from_0_to_1(counts: list[int]) -> None:
    t = frequency_targets(counts)
    assert t[0] == 0.0 and t[-1] == 1.0
    assert np.all(np.diff(t) > 0)


def test_equal_counts_give_uniform_targets() -> None:
    np.testing.assert_allclose(frequency_targets([40] * 6), uniform_targets(6), atol=1e-15)


@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_perturbed_class_interval_follows_its_count(c: int, factor: float) -> None:
    counts = [200] * 5
    counts[c] = int(200 * factor)
    width = intervals(frequency_targets(counts))
    for neighbour in (c - 1, c + 1):
        if 0 < neighbour < 4:  # the end classes lose half an interval to the ends of the curve
            if factor < 1:
                assert width[c] < width[neighbour]
            else:
                assert width[c] > width[neighbour]


def test_rarer_of_two_neighbours_gets_the_smaller_interval() -> None:
    # neighbours c, c+1 whose outer neighbours have equal counts: only their own counts differ
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(200):
        n = int(rng.integers(4, 9))
        counts = rng.integers(1, 3000, n)
        c = int(rng.integers(1, n - 2))
        counts[c + 2] = counts[c - 1]
        if counts[c] == counts[c + 1]:
            continue
        width = intervals(frequency_targets(counts))
        rarer, commoner = (c, c + 1) if counts[c] < counts[c + 1] else (c + 1, c)
        assert width[rarer] < width[commoner], (counts.tolist(), c)
        checked += 1
    assert checked > 150


def test_fewer_samples_shrink_a_class_interval() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        counts = rng.integers(2, 3000, int(rng.integers(4, 9)))  # 2-3 classes: fixed halves
        c = int(rng.integers(0, len(counts)))
        fewer = counts.copy()
        fewer[c] = rng.integers(1, counts[c])
        assert intervals(frequency_targets(fewer))[c] < intervals(frequency_targets(counts))[c]


def test_relative_frequencies_as_printed_would_invert_the_intent() -> None:
    # Eq. 2 with log f_c (f = relative frequency, log < 0) gives the rare class the *larger*
    # interval; SMR uses counts, so the rare class gets the smaller one (docs/method.md).
    counts = [300, 300, 20, 300, 300]
    f = np.array(counts) / sum(counts)
    gaps = 0.5 * (np.log(f[:-1]) + np.log(f[1:]))
    printed = np.concatenate(([0.0], np.cumsum(gaps))) / gaps.sum()
    assert intervals(printed)[2] > intervals(printed)[1]
    assert intervals(frequency_targets(counts))[2] < intervals(frequency_targets(counts))[1]


def test_make_targets_dispatches_and_names_valid_kinds() -> None:
    counts = [10, 50, 20]
    np.testing.assert_array_equal(make_targets("uniform", counts), uniform_targets(3))
    np.testing.assert_array_equal(make_targets("frequency", counts), frequency_targets(counts))
    assert TARGET_KINDS == ("uniform", "frequency")
    with pytest.raises(ValueError, match="valid kinds: uniform, frequency"):
        make_targets("log", counts)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([10, 0, 5], "class 1"),
        ([10, 5, -3], "class 2"),
        ([0.5, 3], "class 0"),
        ([7], "at least 2"),
        ([[1, 2], [3, 4]], "1-D"),
        ([3, float("nan")], "class 1 is not finite"),
    ],
)
def test_bad_counts_are_named(counts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frequency_targets(counts)


def test_uniform_targets_need_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        uniform_targets(1)
    with pytest.raises(TypeError):
        uniform_targets(2.0)


def test_boundaries_are_midpoints_between_targets() -> None:
    t = frequency_targets([5, 80, 12, 40])
    np.testing.assert_allclose(stage_boundaries(t), [(t[i] + t[i + 1]) / 2 for i in range(3)], atol=1e-15)
    with pytest.raises(ValueError, match="strictly increasing"):
        stage_boundaries([0.0, 0.5, 0.5, 1.0])


def test_stage_from_position_is_the_nearest_target() -> None:
    rng = np.random.default_rng(3)
    targets = frequency_targets(rng.integers(1, 500, 6))
    positions = np.concatenate([rng.uniform(0, 1, 1000), [-0.2, 0.0, 1.0, 1.3]])
    stages = stage_from_position(positions, stage_boundaries(targets))
    nearest = [int(np.argmin([abs(p - tc) for tc in targets])) for p in positions]
    np.testing.assert_array_equal(stages, nearest)
    assert stages.dtype == np.int64


def test_a_position_on_a_boundary_belongs_to_the_more_mature_stage() -> None:
    boundaries = stage_boundaries(uniform_targets(4))
    np.testing.assert_array_equal(stage_from_position(boundaries, boundaries), [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        stage_from_position([0.2, np.nan], boundaries)

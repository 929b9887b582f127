"""Stratified splits: partition, stratification, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest

from smr.data.splits import SplitError, stratified_kfold, train_val_split


def _labels(counts, seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize(
    ("counts", "k"), [([60] * 10, 6), ([7, 13, 6, 29, 100], 6), ([5, 5, 9], 5), ([2, 3], 2)]
)
def test_kfold_partitions_and_stratifies(counts, k):
    y = _labels(counts)
    folds = stratified_kfold(y, k, seed=3)
    assert len(folds) == k
    seen = np.zeros(y.size, dtype=int)
    for train, val in folds:
        assert train.dtype == np.int64 and val.dtype == np.int64
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(y.size))
        assert np.intersect1d(train, val).size == 0
        seen[val] += 1
        for c, n in enumerate(counts):  # each class's share of the fold: floor or ceil of n / k
            assert n // k <= np.sum(y[val] == c) <= -(-n // k)
    assert (seen == 1).all()  # every sample validates exactly once
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_is_deterministic_per_seed():
    y = _labels([20, 30, 12])
    a = stratified_kfold(y, 4, seed=7)
    b = stratified_kfold(list(y), 4, seed=7)
    c = stratified_kfold(y, 4, seed=8)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b, strict=True))
    assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c, strict=True))


def test_kfold_too_few_samples_names_the_classes():
    y = _labels([10, 4, 3])
    with pytest.raises(SplitError) as info:
        stratified_kfold(y, 5, seed=0, class_names=["blast", "band", "monocyte"])
    message = str(info.value)
    assert "'band' (label 1) has 4" in message and "'monocyte' (label 2) has 3" in message
    assert "'blast'" not in message
    with pytest.raises(SplitError, match="class label 2 has 3"):
        stratified_kfold(y, 5)


@pytest.mark.parametrize("bad", [[[0, 1], [1, 0]], [], [0.5, 1.5]])
def test_bad_labels(bad):
    with pytest.raises(SplitError):
        stratified_kfold(bad, 2)
    with pytest.raises(SplitError):
        train_val_split(bad, 0.2)


def test_bad_k_and_fraction():
    y = _labels([10, 10])
    for k in (1, 0, 2.0):
        with pytest.raises(SplitError, match="k must be"):
            stratified_kfold(y, k)
    for f in (0.0, 1.0, -0.1):
        with pytest.raises(SplitError, match="val_fraction"):
            train_val_split(y, f)


@pytest.mark.parametrize(("counts", "fraction"), [([60] * 10, 0.2), ([2, 3, 50, 11], 0.25), ([4, 4], 0.9)])
def test_train_val_split(counts, fraction):
    y = _labels(counts, seed=1)
    train, val = train_val_split(y, fraction, seed=5)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(y.size))
    assert np.intersect1d(train, val).size == 0
    for c, n in enumerate(counts):
        n_val = np.sum(y[val] == c)
        expected = min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)
        assert n_val == expected
        assert np.sum(y[train] == c) == n - n_val >= 1
    again = train_val_split(y, fraction, seed=5)
    assert np.array_equal(again[1], val)


def test_train_val_split_single_sample_class():
    with pytest.raises(SplitError, match="'lonely' \\(label 1\\) has 1"):
        train_val_split([0, 0, 1, 0], 0.3, class_names=["a", "lonely"])

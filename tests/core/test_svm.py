"""The numpy RBF SVM against scikit-learn's SVC (libsvm) on blobby embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.svm import SVC

from smr.core.svm import RbfSvm, SvmFormatError, svm_to_dict

# SVC(probability=True) is what SMR trains (the paper's RBF SVM with Platt probabilities).
pytestmark = pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated:FutureWarning")


def blobs(
    n_per_class: list[int], dim: int, rng: np.random.Generator, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs on the unit sphere, like L2-normalised embeddings."""
    centres = rng.normal(size=(len(n_per_class), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = spread / np.sqrt(dim)
    parts = [c + noise * rng.normal(size=(n, dim)) for c, n in zip(centres, n_per_class, strict=True)]
    X = np.concatenate(parts)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    return X, y


def fit_svc(X: np.ndarray, y: np.ndarray, **kwargs) -> SVC:
    return SVC(kernel="rbf", probability=True, decision_function_shape="ovo", random_state=0, **kwargs).fit(
        X, y
    )


CASES = [
    # (samples per class, dimension, C)
    ([60, 60], 2, 1.0),
    ([150, 20], 256, 10.0),
    ([40, 40, 40], 3, 1.0),
    ([100, 15, 60], 256, 3.0),
    ([20] * 15, 16, 10.0),
    ([8, 40, 12, 30, 5, 25, 10, 20, 6, 15, 9, 35, 7, 18, 11], 256, 1.0),
]


@pytest.mark.parametrize(("sizes", "dim", "c"), CASES)
def test_matches_sklearn(sizes: list[int], dim: int, c: float) -> None:
    rng = np.random.default_rng(len(sizes) * 1000 + dim)
    X, y = blobs(sizes, dim, rng)
    svc = fit_svc(X, y, C=c, gamma="scale")
    names = [f"class_{i}" for i in range(len(sizes))]
    model = RbfSvm.from_dict(json.loads(json.dumps(svm_to_dict(svc, names))))
    X_test, _ = blobs([10] * len(sizes), dim, np.random.default_rng(0), spread=1.5)
    X_test = np.concatenate([X_test, X[:50]])

    expected = svc.predict_proba(X_test)
    proba = model.predict_proba(X_test)
    assert proba.shape == expected.shape
    assert np.abs(proba - expected).max() <= 1e-5
    assert expected.max(axis=1).min() < 0.9  # probabilities are informative, not all saturated
    np.testing.assert_allclose(
        model.decision_function(X_test), svc.decision_function(X_test), rtol=1e-9, atol=1e-10
    )
    np.testing.assert_array_equal(svc.classes_[model.predict(X_test)], svc.predict(X_test))
    assert model.classes == tuple(names)
    # float32 input (what serving receives) gives the same within float32 resolution of the input
    np.testing.assert_allclose(
        model.predict_proba(X_test.astype(np.float32)),
        svc.predict_proba(X_test.astype(np.float32)),
        atol=1e-5,
    )


def test_string_labels_follow_sklearn_column_order() -> None:
    rng = np.random.default_rng(5)
    X, y = blobs([30, 30, 30], 8, rng)
    names = np.array(["myelocyte", "blast", "band"])  # SVC sorts them: band, blast, myelocyte
    svc = fit_svc(X, names[y])
    model = RbfSvm.from_dict(svm_to_dict(svc, ["blast", "myelocyte", "band"]))
    assert model.classes == tuple(svc.classes_) == ("band", "blast", "myelocyte")
    assert np.abs(model.predict_proba(X) - svc.predict_proba(X)).max() <= 1e-5


def test_integer_labels_name_their_classes_when_some_are_missing() -> None:
    rng = np.random.default_rng(6)
    X, y = blobs([30, 30, 30], 8, rng)
    labels = np.array([0, 2, 5])[y]
    svc = fit_svc(X, labels)
    names = ["a", "b", "c", "d", "e", "f"]
    model = RbfSvm.from_dict(svm_to_dict(svc, names))
    assert model.classes == ("a", "c", "f")
    np.testing.assert_array_equal(svc.classes_[model.predict(X)], svc.predict(X))
    with pytest.raises(ValueError, match=r"integer label\(s\) \[5\] have no name"):
        svm_to_dict(svc, names[:4])


def test_round_trip_is_exact() -> None:
    rng = np.random.default_rng(7)
    X, y = blobs([20, 25, 30], 5, rng)
    d = svm_to_dict(fit_svc(X, y), ["a", "b", "c"])
    back = json.loads(json.dumps(RbfSvm.from_dict(json.loads(json.dumps(d))).to_dict()))
    assert back == d


def test_unsupported_models_are_refused() -> None:
    rng = np.random.default_rng(8)
    X, y = blobs([20, 20], 4, rng)
    with pytest.raises(ValueError, match="kernel='linear'"):
        svm_to_dict(SVC(kernel="linear", probability=True).fit(X, y), ["a", "b"])
    with pytest.raises(ValueError, match="probability=True"):
        svm_to_dict(SVC(kernel="rbf").fit(X, y), ["a", "b"])
    with pytest.raises(ValueError, match="not fitted"):
        svm_to_dict(SVC(kernel="rbf", probability=True), ["a", "b"])


def _good_dict() -> dict:
    rng = np.random.default_rng(9)
    X, y = blobs([15, 15, 15], 4, rng)
    return svm_to_dict(fit_svc(X, y), ["a", "b", "c"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": "smr.curves"}, "not an SVM document"),
        ({"version": 3}, "unsupported SVM document version 3"),
        ({"kernel": "poly"}, "only 'rbf'"),
        ({"gamma": -1.0}, "gamma must be a positive number"),
        ({"classes": ["a", "b"]}, "n_support must give a count per class (2)"),
        ({"n_support": [1, 1, 1]}, "summing to the"),
        ({"dual_coef": [[0.0]]}, "dual_coef must have shape"),
        ({"prob_a": [1.0]}, "prob_a must have one value per class pair (3)"),
        ({"support_vectors": [[0.0, 1.0], [2.0]]}, "'support_vectors' must be numbers"),
        ({"intercept": [float("nan")] * 3}, "'intercept' contains NaN"),
    ],
)
def test_bad_documents_are_named(change: dict, message: str) -> None:
    d = _good_dict()
    d.update(change)
    with pytest.raises(SvmFormatError) as info:
        RbfSvm.from_dict(d)
    assert message in str(info.value)


def test_missing_fields_and_bad_inputs_are_named() -> None:
    d = _good_dict()
    del d["prob_b"]
    with pytest.raises(SvmFormatError, match=r"missing field\(s\): prob_b"):
        RbfSvm.from_dict(d)
    model = RbfSvm.from_dict(_good_dict())
    with pytest.raises(ValueError, match="dimension 5, the SVM expects 4"):
        model.predict_proba(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict_proba(np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        model.predict(np.zeros(4))


def test_saturated_pairwise_probabilities_are_clipped_like_libsvm() -> None:
    rng = np.random.default_rng(10)
    X, y = blobs([40, 40, 40, 40], 8, rng, spread=0.2)
    svc = fit_svc(X, y, C=100.0)
    # Platt's fit keeps |A f + B| small on training data; steepen the sigmoids (libsvm reads the
    # same attribute) so that pairwise probabilities fall below libsvm's 1e-7 floor.
    svc._probA = svc._probA * 20.0
    d = svm_to_dict(svc, ["a", "b", "c", "d"])
    f = svc.decision_function(X) * np.array(d["prob_a"]) + np.array(d["prob_b"])
    assert (1.0 / (1.0 + np.exp(f)) < 1e-7).any() and (1.0 / (1.0 + np.exp(-f)) < 1e-7).any()
    model = RbfSvm.from_dict(d)
    assert np.abs(model.predict_proba(X) - svc.predict_proba(X)).max() <= 1e-5


def _couple_reference(pairwise: np.ndarray, pairs: list[tuple[int, int]], k: int) -> np.ndarray:
    """The per-class loops that smr.core.svm's coupling replaced: libsvm's
    ``multiclass_probability``, written statement for statement on (N,) columns."""
    n = len(pairwise)
    r: list[list] = [[None] * k for _ in range(k)]
    for col, (i, j) in enumerate(pairs):
        r[i][j] = pairwise[:, col]
        r[j][i] = 1.0 - pairwise[:, col]
    q = [[np.zeros(n) for _ in range(k)] for _ in range(k)]
    for t in range(k):
        for j in range(t):
            q[t][t] = q[t][t] + r[j][t] * r[j][t]
            q[t][j] = q[j][t]
        for j in range(t + 1, k):
            q[t][t] = q[t][t] + r[j][t] * r[j][t]
            q[t][j] = -r[j][t] * r[t][j]
    p = [np.full(n, 1.0 / k) for _ in range(k)]
    eps = 0.005 / k
    active = np.ones(n, dtype=bool)
    for _ in range(max(100, k)):
        qp = []
        pqp = np.zeros(n)
        for t in range(k):
            acc = np.zeros(n)
            for j in range(k):
                acc = acc + q[t][j] * p[j]
            qp.append(acc)
            pqp = pqp + p[t] * acc
        max_error = np.zeros(n)
        for t in range(k):
            max_error = np.maximum(max_error, np.abs(qp[t] - pqp))
        active &= ~(max_error < eps)
        if not active.any():
            break
        for t in range(k):
            diff = np.where(active, (-qp[t] + pqp) / q[t][t], 0.0)
            p[t] = p[t] + diff
            pqp = (pqp + diff * (diff * q[t][t] + 2 * qp[t])) / (1 + diff) / (1 + diff)
            for j in range(k):
                qp[j] = (qp[j] + diff * q[t][j]) / (1 + diff)
                p[j] = p[j] / (1 + diff)
    return np.stack(p, axis=1)


def _pairwise_rows(k: int, rng: np.random.Generator) -> np.ndarray:
    """Pairwise probabilities of every kind in one batch: consistent with a class distribution
    (few sweeps), random (inconsistent, many sweeps), saturated at libsvm's clip, and uniform."""
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    i, j = np.array(pairs).T
    dist = rng.dirichlet(np.full(k, 0.3), size=40)
    consistent = dist[:, i] / (dist[:, i] + dist[:, j])
    noisy = rng.uniform(size=(40, len(pairs)))
    saturated = rng.choice([1e-7, 1 - 1e-7, 0.5], size=(10, len(pairs)))
    rows = np.concatenate([consistent, noisy, saturated, np.full((1, len(pairs)), 0.5)])
    return np.clip(rows, 1e-7, 1 - 1e-7)[rng.permutation(len(rows))]


@pytest.mark.parametrize("k", [2, 3, 4, 10, 15])
def test_coupling_equals_the_per_class_loops(k: int) -> None:
    from smr.core.svm import _couple

    rng = np.random.default_rng(k)
    pairwise = _pairwise_rows(k, rng)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    expected = _couple_reference(pairwise, pairs, k)
    got = _couple(pairwise, pairs, k)
    assert got.shape == (len(pairwise), k)
    assert np.abs(got - expected).max() <= 1e-9
    # row by row (each row alone stops at its own sweep) gives the same as the batch
    alone = np.concatenate([_couple(pairwise[n : n + 1], pairs, k) for n in range(0, len(pairwise), 7)])
    assert np.abs(alone - expected[::7]).max() <= 1e-9
    # an independent check: near the exact minimiser of p'Qp on the simplex (bordered linear system)
    r = np.zeros((len(pairwise), k, k))
    r[:, [a for a, _ in pairs], [b for _, b in pairs]] = pairwise
    r[:, [b for _, b in pairs], [a for a, _ in pairs]] = 1 - pairwise
    q = -r.transpose(0, 2, 1) * r
    q[:, np.arange(k), np.arange(k)] = (r**2).sum(axis=1)
    system = np.zeros((len(pairwise), k + 1, k + 1))
    system[:, :k, :k], system[:, :k, k], system[:, k, :k] = q, 1.0, 1.0
    rhs = np.zeros((len(pairwise), k + 1, 1))
    rhs[:, k] = 1.0
    exact = np.linalg.solve(system, rhs)[:, :k, 0]
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    assert np.abs(got - exact).max() < 0.01 / k

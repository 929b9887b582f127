"""The SVM stage: scikit-learn conformance, the grid search, and parity with the numpy SVM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from smr.core.svm import RbfSvm
from smr.train.classifier import EmbeddingSVM


@parametrize_with_checks([EmbeddingSVM(C=(1.0, 10.0), gamma=("scale",), cv=3)])
def test_sklearn_conformance(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # checks that exercise deprecated sklearn paths
        check(estimator)


@pytest.fixture(scope="module")
def embeddings():
    X, y = make_blobs(n_samples=120, centers=4, n_features=8, cluster_std=2.5, random_state=0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # unit length, like SMR embeddings
    return X[:90], y[:90], X[90:], y[90:]


def test_grid_search_picks_what_gridsearchcv_picks(embeddings):
    X, y, _, _ = embeddings
    grid = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.5, 5.0]}
    svm = EmbeddingSVM(C=grid["C"], gamma=grid["gamma"], cv=5, random_state=3).fit(X, y)
    reference = GridSearchCV(
        SVC(kernel="rbf"), grid, scoring="f1_macro", cv=StratifiedKFold(5, shuffle=True, random_state=3)
    ).fit(X, y)
    assert svm.best_params_ == reference.best_params_
    assert svm.best_score_ == pytest.approx(reference.best_score_)
    assert svm.svc_.C == reference.best_params_["C"]


def test_probabilities_equal_the_numpy_svm_used_for_serving(embeddings):
    X, y, X_test, _ = embeddings
    names = ["a", "b", "c", "d"]
    svm = EmbeddingSVM(C=(1.0, 10.0), gamma=("scale", 2.0), random_state=0).fit(X, y)
    served = RbfSvm.from_dict(svm.to_dict(names))
    np.testing.assert_allclose(served.predict_proba(X_test), svm.predict_proba(X_test), atol=1e-6)
    np.testing.assert_array_equal(svm.predict(X_test), np.argmax(svm.predict_proba(X_test), axis=1))


def test_fit_is_repeatable_with_a_seed(embeddings):
    X, y, X_test, _ = embeddings
    a = EmbeddingSVM(random_state=5).fit(X, y).predict_proba(X_test)
    b = EmbeddingSVM(random_state=5).fit(X, y).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)


def test_small_classes_reduce_the_folds_and_missing_classes_are_named(embeddings):
    X, y, _, _ = embeddings
    keep = np.concatenate([np.flatnonzero(y == c)[: (2 if c == 0 else 10)] for c in range(4)])
    svm = EmbeddingSVM(cv=5).fit(X[keep], y[keep])  # class 0 has 2 samples: 2-fold search
    assert svm.best_score_ == svm.best_score_  # not NaN: a search ran
    three = EmbeddingSVM(C=(1.0,), gamma=("scale",)).fit(X[y < 3], y[y < 3])
    with pytest.raises(ValueError, match="missing from the training split.*'d'"):
        three.to_dict(["a", "b", "c", "d"])

"""The SVM stage: an RBF SVC on the embeddings, C and gamma picked by cross-validation.

The paper trains "a hyper-parameter optimized RBF SVM" after every epoch, choosing its
hyper-parameters by 5-fold cross-validation on the training split only. ``EmbeddingSVM`` does
exactly that as a scikit-learn estimator, then refits the best SVC on all training embeddings with
Platt-scaled probabilities. Its ``predict`` is the argmax of ``predict_proba`` - the same rule the
served ``CLASS_ID`` follows - rather than SVC's one-vs-one vote, so that validation scores measure
what serving returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["EmbeddingSVM"]


class EmbeddingSVM(ClassifierMixin, BaseEstimator):
    """RBF SVC whose ``C`` and ``gamma`` are chosen by stratified k-fold grid search.

    Parameters
    ----------
    C : sequence of float
        Candidate penalties.
    gamma : sequence of float or {"scale", "auto"}
        Candidate RBF widths.
    cv : int
        Folds of the grid search (the paper: 5). Classes with fewer members reduce it; with fewer
        than 2 members in some class there is no search and ``C=1, gamma="scale"`` is used.
    scoring : str
        Grid-search score (macro F1, as the paper reports).
    random_state : int or None
        Seeds the fold shuffling and SVC's internal Platt-scaling CV, so fits are repeatable.
    n_jobs : int or None
        Parallel jobs of the grid search.

    Attributes
    ----------
    classes_ : ndarray
        Class labels seen in ``fit``.
    best_params_ : dict
        The chosen ``C`` and ``gamma``.
    best_score_ : float
        Mean cross-validated score of ``best_params_`` (NaN when no search ran).
    svc_ : sklearn.svm.SVC
        The refitted SVC with ``probability=True``.
    """

    def __init__(
        self,
        C: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
        gamma: Sequence[float | str] = ("scale", 0.1, 1.0, 10.0),
        cv: int = 5,
        scoring: str = "f1_macro",
        random_state: int | None = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.C = C
        self.gamma = gamma
        self.cv = cv
        self.scoring = scoring
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> EmbeddingSVM:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, counts = np.unique(y, return_counts=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"EmbeddingSVM needs samples of at least 2 classes; got 1 class ({self.classes_[0]!r})"
            )
        n_splits = int(min(self.cv, counts.min()))
        if n_splits >= 2 and (len(self.C) * len(self.gamma)) > 1:
            search = GridSearchCV(
                SVC(kernel="rbf"),
                {"C": list(self.C), "gamma": list(self.gamma)},
                scoring=self.scoring,
                cv=StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state),
                n_jobs=self.n_jobs,
                error_score="raise",
            )
            with warnings.catch_warnings():
                # folds where some class is never predicted give ill-defined F1 (scored as 0)
                warnings.simplefilter("ignore", category=UserWarning)
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                search.fit(X, y)
            self.best_params_ = dict(search.best_params_)
            self.best_score_ = float(search.best_score_)
        elif len(self.C) * len(self.gamma) == 1:
            self.best_params_ = {"C": self.C[0], "gamma": self.gamma[0]}
            self.best_score_ = float("nan")
        else:
            self.best_params_ = {"C": 1.0, "gamma": "scale"}
            self.best_score_ = float("nan")
        self.svc_ = SVC(kernel="rbf", probability=True, random_state=self.random_state, **self.best_params_)
        with warnings.catch_warnings():
            # scikit-learn 1.9 deprecates probability=True (removal in 1.11) in favour of
            # CalibratedClassifierCV; smr.core.svm evaluates libsvm's Platt scaling (probA_/probB_
            # with pairwise coupling), so SMR keeps this model until the numpy side follows.
            warnings.filterwarnings(
                "ignore", message=".*`probability` parameter was deprecated", category=FutureWarning
            )
            self.svc_.fit(X, y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        # libsvm's predict_proba rejects read-only buffers (e.g. a model loaded memory-mapped)
        if not X.flags.writeable:
            X = X.copy()
        for name, value in vars(self.svc_).items():
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                setattr(self.svc_, name, value.copy())
        return self.svc_.predict_proba(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """Class with the highest probability (the serving rule), not SVC's one-vs-one vote."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The fitted SVM as data (``smr.core.svm`` document) with ``class_names[label]`` names.

        ``class_names`` is the full class order of the run; labels are indices into it. Every
        class must have been seen in ``fit``, since serving returns one probability per class.
        """
        from smr.core.svm import svm_to_dict

        check_is_fitted(self)
        names = list(class_names)
        if list(self.classes_) != list(range(len(names))):
            seen = [names[int(i)] if 0 <= int(i) < len(names) else i for i in self.classes_]
            missing = [n for i, n in enumerate(names) if i not in {int(c) for c in self.classes_}]
            raise ValueError(
                f"the SVM was trained on classes {seen} but the run has {names}; "
                f"missing from the training split: {missing}"
            )
        return svm_to_dict(self.svc_, names)

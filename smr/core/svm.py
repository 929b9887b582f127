"""An RBF support vector classifier evaluated in numpy, equal to scikit-learn's ``SVC``.

Training uses ``sklearn.svm.SVC(kernel="rbf", probability=True)``; :func:`svm_to_dict` turns the
fitted model into plain data (the ``svm.json`` document) and :class:`RbfSvm` evaluates it without
scikit-learn, reproducing libsvm as scikit-learn ships it:

* decision values, one per class pair (i < j): ``sum_s alpha_s K(x, s) - rho_ij`` over the support
  vectors of classes i and j, with ``K(x, s) = exp(-gamma |x - s|^2)``;
* pairwise probabilities by Platt's sigmoid ``1 / (1 + exp(A f + B))``, clipped to
  [1e-7, 1 - 1e-7];
* class probabilities by pairwise coupling (Wu, Lin & Weng 2004, method 2), with libsvm's
  iteration, stopping rule (max error < 0.005 / k) and iteration limit (max(100, k));
* ``predict`` by one-vs-one voting, ties to the lower class index (what ``SVC.predict`` returns).

numpy and the standard library only (copied next to the Triton python model).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["SCHEMA", "VERSION", "SvmFormatError", "svm_to_dict", "RbfSvm"]

SCHEMA = "smr.svm"
VERSION = 1
_FIELDS = (
    "schema",
    "version",
    "kernel",
    "gamma",
    "classes",
    "support_vectors",
    "n_support",
    "dual_coef",
    "intercept",
    "prob_a",
    "prob_b",
)
_MIN_PROB = 1e-7
_CHUNK = 4096


class SvmFormatError(ValueError):
    """An SVM document is malformed or does not describe a consistent model."""


def svm_to_dict(svc: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Plain data of a fitted ``SVC(kernel="rbf", probability=True)`` (dense input).

    ``classes`` names the labels the SVC was fitted on: integer labels index into ``classes``;
    string labels must be names from ``classes``. The document lists the class names in the
    SVC's column order (its sorted labels), which is the column order of ``predict_proba``.
    The coefficients are stored in libsvm's convention (``intercept`` = -rho, also for 2 classes).
    """
    if getattr(svc, "kernel", None) != "rbf":
        raise ValueError(f"only RBF SVMs can be exported, got kernel={getattr(svc, 'kernel', None)!r}")
    if not hasattr(svc, "support_vectors_"):
        raise ValueError("the SVM is not fitted")
    with warnings.catch_warnings():  # probA_/probB_ are deprecated attributes in scikit-learn 1.9
        warnings.simplefilter("ignore", FutureWarning)
        prob_a = np.asarray(svc.probA_, dtype=np.float64)
        prob_b = np.asarray(svc.probB_, dtype=np.float64)
    if prob_a.size == 0:
        raise ValueError("the SVM was fitted without probability=True; it has no Platt sigmoid parameters")
    if hasattr(svc.support_vectors_, "toarray"):
        raise ValueError("SVMs fitted on sparse matrices are not supported; fit on a dense array")
    classes = list(classes)
    labels = np.asarray(svc.classes_)
    if np.issubdtype(labels.dtype, np.integer):
        bad = [int(v) for v in labels if not 0 <= int(v) < len(classes)]
        if bad:
            raise ValueError(f"integer label(s) {bad} have no name: classes has {len(classes)} entries")
        names = [classes[int(v)] for v in labels]
    else:
        names = [str(v) for v in labels]
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise ValueError(f"label(s) {unknown} are not among the classes {classes}")
    dual_coef = np.asarray(svc.dual_coef_, dtype=np.float64)
    intercept = np.asarray(svc.intercept_, dtype=np.float64)
    if len(labels) == 2:  # scikit-learn flips the sign of the binary model; store libsvm's
        dual_coef, intercept = -dual_coef, -intercept
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "kernel": "rbf",
        "gamma": float(svc._gamma),
        "classes": names,
        "support_vectors": np.asarray(svc.support_vectors_, dtype=np.float64).tolist(),
        "n_support": [int(n) for n in svc.n_support_],
        "dual_coef": dual_coef.tolist(),
        "intercept": intercept.tolist(),
        "prob_a": prob_a.tolist(),
        "prob_b": prob_b.tolist(),
    }


def _array(d: Mapping[str, Any], key: str, ndim: int) -> np.ndarray:
    try:
        arr = np.array(d[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SvmFormatError(f"SVM field {key!r} must be numbers in a regular {ndim}-D array: {exc}") from exc
    if arr.ndim != ndim and not (arr.size == 0 and ndim == 2):
        raise SvmFormatError(f"SVM field {key!r} must be a {ndim}-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SvmFormatError(f"SVM field {key!r} contains NaN or infinity")
    return arr


class RbfSvm:
    """One-vs-one RBF SVM with Platt probabilities, evaluated in numpy (see the module docstring)."""

    def __init__(
        self,
        classes: Sequence[str],
        support_vectors: np.ndarray,
        n_support: Sequence[int],
        dual_coef: np.ndarray,
        intercept: np.ndarray,
        gamma: float,
        prob_a: np.ndarray,
        prob_b: np.ndarray,
    ) -> None:
        self.classes = tuple(classes)
        k = len(self.classes)
        if k < 2:
            raise SvmFormatError(f"an SVM needs at least 2 classes, got {k}")
        if len(set(self.classes)) != k:
            raise SvmFormatError(f"SVM classes contain duplicates: {list(self.classes)}")
        sv = np.asarray(support_vectors, dtype=np.float64)
        n_sv = np.asarray(n_support, dtype=np.int64)
        coef = np.asarray(dual_coef, dtype=np.float64)
        pairs = k * (k - 1) // 2
        if sv.ndim != 2 or sv.shape[0] == 0:
            raise SvmFormatError(f"support vectors must be a non-empty 2-D array, got shape {sv.shape}")
        if n_sv.shape != (k,) or np.any(n_sv < 0) or n_sv.sum() != sv.shape[0]:
            raise SvmFormatError(
                f"n_support must give a count per class ({k}) summing to the {sv.shape[0]} support vectors, "
                f"got {n_sv.tolist()}"
            )
        if coef.shape != (k - 1, sv.shape[0]):
            raise SvmFormatError(f"dual_coef must have shape {(k - 1, sv.shape[0])}, got {coef.shape}")
        vectors = {"intercept": intercept, "prob_a": prob_a, "prob_b": prob_b}
        for name, value in vectors.items():
            if np.shape(value) != (pairs,):
                raise SvmFormatError(
                    f"{name} must have one value per class pair ({pairs}), got {np.shape(value)}"
                )
        if not (np.isfinite(gamma) and gamma > 0):
            raise SvmFormatError(f"gamma must be a positive number, got {gamma!r}")
        self.support_vectors = sv
        self.n_support = n_sv
        self.dual_coef = coef
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.gamma = float(gamma)
        self.prob_a = np.asarray(prob_a, dtype=np.float64)
        self.prob_b = np.asarray(prob_b, dtype=np.float64)
        self._sv_sq = np.einsum("sd,sd->s", sv, sv)
        # Column p = (i, j) of the weights: libsvm's coefficients of the SVs of classes i and j.
        start = np.concatenate(([0], np.cumsum(n_sv)))
        self._pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        self._weights = np.zeros((sv.shape[0], pairs))
        for p, (i, j) in enumerate(self._pairs):
            si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
            self._weights[si, p] = coef[j - 1, si]
            self._weights[sj, p] = coef[i, sj]
        # (pairs, k) one-hot rows of each pair's first (i) and second (j) class, for the votes
        first, second = np.array(self._pairs, dtype=np.intp).T
        self._first = np.zeros((pairs, k), dtype=np.int64)
        self._first[np.arange(pairs), first] = 1
        self._second = np.zeros((pairs, k), dtype=np.int64)
        self._second[np.arange(pairs), second] = 1

    @property
    def n_features(self) -> int:
        return self.support_vectors.shape[1]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RbfSvm:
        if not isinstance(d, Mapping):
            raise SvmFormatError(f"an SVM document must be a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise SvmFormatError(f"not an SVM document: 'schema' is {d.get('schema')!r}, expected {SCHEMA!r}")
        version = d.get("version")
        if isinstance(version, bool) or version != VERSION:
            raise SvmFormatError(
                f"unsupported SVM document version {version!r}; this SMR reads version {VERSION}"
            )
        missing = [f for f in _FIELDS if f not in d]
        if missing:
            raise SvmFormatError(f"SVM document is missing field(s): {', '.join(missing)}")
        if d["kernel"] != "rbf":
            raise SvmFormatError(f"unsupported SVM kernel {d['kernel']!r}; only 'rbf' is supported")
        classes = d["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise SvmFormatError("SVM field 'classes' must be a list of class names")
        n_support = d["n_support"]
        if not isinstance(n_support, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in n_support
        ):
            raise SvmFormatError("SVM field 'n_support' must be a list of integers")
        gamma = d["gamma"]
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise SvmFormatError(f"SVM field 'gamma' must be a number, got {gamma!r}")
        return cls(
            classes=classes,
            support_vectors=_array(d, "support_vectors", 2),
            n_support=n_support,
            dual_coef=_array(d, "dual_coef", 2),
            intercept=_array(d, "intercept", 1),
            gamma=float(gamma),
            prob_a=_array(d, "prob_a", 1),
            prob_b=_array(d, "prob_b", 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "kernel": "rbf",
            "gamma": self.gamma,
            "classes": list(self.classes),
            "support_vectors": self.support_vectors.tolist(),
            "n_support": self.n_support.tolist(),
            "dual_coef": self.dual_coef.tolist(),
            "intercept": self.intercept.tolist(),
            "prob_a": self.prob_a.tolist(),
            "prob_b": self.prob_b.tolist(),
        }

    # -- evaluation -----------------------------------------------------------------------------

    def _check(self, X: ArrayLike) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {X.shape}")
        if X.shape[1] != self.n_features:
            raise ValueError(f"embeddings have dimension {X.shape[1]}, the SVM expects {self.n_features}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"embeddings must be numbers, got dtype {X.dtype}")
        X = X.astype(np.float64, copy=False)
        if not np.all(np.isfinite(X)):
            raise ValueError("embeddings contain NaN or infinity")
        return X

    def _pair_values(self, X: np.ndarray) -> np.ndarray:
        """libsvm's decision value per class pair (i < j), shape (N, k(k-1)/2)."""
        out = np.empty((len(X), len(self._pairs)))
        for lo in range(0, len(X), _CHUNK):
            x = X[lo : lo + _CHUNK]
            sq = (
                np.einsum("nd,nd->n", x, x)[:, None]
                + self._sv_sq[None, :]
                - 2.0 * (x @ self.support_vectors.T)
            )
            kernel = np.exp(-self.gamma * np.maximum(sq, 0.0))
            out[lo : lo + len(x)] = kernel @ self._weights + self.intercept
        return out

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """One-vs-one decision values as ``SVC(decision_function_shape="ovo").decision_function``.

        Shape (N, k(k-1)/2) with pairs (0,1), (0,2), ..., (k-2,k-1); for two classes shape (N,),
        positive towards the second class (scikit-learn's sign convention).
        """
        dec = self._pair_values(self._check(X))
        return -dec[:, 0] if len(self.classes) == 2 else dec

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Column index (into ``classes``) of the one-vs-one vote winner, as ``SVC.predict``."""
        dec = self._pair_values(self._check(X))
        won = (dec > 0).astype(np.int64)  # pair (i, j): a vote for i, else for j
        votes = won @ self._first + (1 - won) @ self._second
        return np.argmax(votes, axis=1)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities (N, k), columns in ``classes`` order, as ``SVC.predict_proba``."""
        dec = self._pair_values(self._check(X))
        f = dec * self.prob_a + self.prob_b
        # libsvm's sigmoid_predict, written to avoid cancellation on either side of 0
        with np.errstate(over="ignore"):
            e = np.exp(-np.abs(f))
            sig = np.where(f >= 0, e / (1.0 + e), 1.0 / (1.0 + np.exp(f)))
        pairwise = np.clip(sig, _MIN_PROB, 1 - _MIN_PROB)
        return _couple(pairwise, self._pairs, len(self.classes))


def _couple(pairwise: np.ndarray, pairs: list[tuple[int, int]], k: int) -> np.ndarray:
    """libsvm's ``multiclass_probability`` for all rows at once, bit for bit.

    ``pairwise[:, p]`` is r_ij = P(class i | i or j) for the pair p = (i, j), i < j. libsvm solves
    min_p p'Qp subject to sum(p) = 1 by coordinate sweeps (t = 0..k-1, each followed by a
    renormalisation) until max_t |(Qp)_t - p'Qp| < 0.005 / k, at most max(100, k) sweeps; its
    result is that iterate, not the exact minimiser (they differ by up to ~1e-4), so the sweeps
    are kept. They run on (N, k) arrays: one numpy operation per step covers every row and every
    class, and the additions are made in libsvm's order, so each row gets libsvm's numbers exactly.
    """
    n = len(pairwise)
    i, j = np.array(pairs, dtype=np.intp).reshape(-1, 2).T
    r = np.zeros((n, k, k))  # r[:, i, j] = r_ij; the diagonal is 0
    r[:, i, j] = pairwise
    r[:, j, i] = 1.0 - pairwise
    r_t = r.transpose(0, 2, 1)  # r_t[:, t, j] = r_jt
    # Q_tt = sum_j r_jt^2 in libsvm's order (the j = t term adds an exact 0); Q_tj = -r_jt r_tj
    q_diag = np.zeros((n, k))
    for col in range(k):
        q_diag = q_diag + r_t[:, :, col] * r_t[:, :, col]
    q = -(r_t * r)
    q[:, np.arange(k), np.arange(k)] = q_diag
    q_diag_t = np.ascontiguousarray(q_diag.T)  # (k, N): Q_tt of step t
    # state = [p | Qp]: one division renormalises both. Row t of q_step adds diff * Q_t. to Qp
    # and 0 to p (p + 0 is p exactly)
    state = np.zeros((n, 2 * k))
    state[:, :k] = 1.0 / k
    p, qp = state[:, :k], state[:, k:]
    q_step = np.zeros((k, n, 2 * k))
    q_step[:, :, k:] = q.transpose(1, 0, 2)
    step = np.empty((n, 2 * k))
    eps = 0.005 / k
    active = np.ones(n, dtype=bool)
    for _ in range(max(100, k)):
        qp[...] = 0.0
        for col in range(k):
            qp += q[:, :, col] * p[:, col, None]
        pqp = np.zeros(n)
        for t in range(k):
            pqp = pqp + p[:, t] * qp[:, t]
        active &= ~(np.abs(qp - pqp[:, None]).max(axis=1) < eps)
        if not active.any():
            break
        frozen = None if active.all() else ~active
        for t in range(k):
            qp_t = qp[:, t]
            diff = (pqp - qp_t) / q_diag_t[t]
            if frozen is not None:
                diff[frozen] = 0.0  # rows that have converged stay as they are, bit for bit
            p[:, t] += diff
            scale = 1.0 + diff
            pqp = (pqp + diff * (diff * q_diag_t[t] + 2 * qp_t)) / scale / scale
            np.multiply(q_step[t], diff[:, None], out=step)
            state += step
            state /= scale[:, None]
    return p.copy()

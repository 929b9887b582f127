"""Curve models of a lineage in embedding space, and projection of embeddings onto them.

Every curve maps t in [0, 1] to R^D, t = 0 at the most immature and t = 1 at the most mature stage.
All three kinds are Bézier curves in Bernstein form, ``l(t) = sum_i b_{i,K}(t) P_i``:

* ``fixed`` and ``linear`` are lines, stored as two control points (start, end), so
  ``l(t) = start + t (end - start)``;
* ``bezier`` uses the C class means of the lineage as its C control points (degree C - 1).

``Curve.project`` returns, for each embedding x, the position t* in [0, 1] of the nearest point of
the curve and the Euclidean distance |x - l(t*)|. Beyond the ends of the curve, t is clamped: an
embedding whose closest point would lie at t < 0 or t > 1 gets t = 0 or 1 and its distance to that
end point. A curve that is a single point (all control points equal) gives t = 0.5 for every
embedding. ``docs/method.md`` has the math.

numpy and the standard library only (copied next to the Triton python model).
"""

from __future__ import annotations

from collections.abc import Mapping
from math import comb
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["CURVE_KINDS", "Curve", "fit_curve"]

CURVE_KINDS = ("fixed", "linear", "bezier")
LINE_KINDS = ("fixed", "linear")

# Rows of X handled at once by ``project``: bounds temporary memory for large N.
_CHUNK = 8192
# A curve whose control points all lie within this (relative) distance of each other is a point.
_POINT_RTOL = 1e-12
# Power-basis coefficients below this fraction of the largest are dropped before root finding.
_TRIM_RTOL = 1e-10
_NEWTON_STEPS = 3


def _bernstein(degree: int, t: np.ndarray) -> np.ndarray:
    """Bernstein basis ``b_{i,degree}(t)`` for i = 0..degree, shape ``(len(t), degree + 1)``."""
    i = np.arange(degree + 1)
    binom = np.array([comb(degree, k) for k in i], dtype=np.float64)
    tt = t[:, None]
    return binom * tt**i * (1.0 - tt) ** (degree - i)


def _bernstein_to_power(degree: int) -> np.ndarray:
    """Matrix M with ``a = M @ P``: power-basis coefficients a_k (of t^k) from Bernstein points P_i."""
    m = np.zeros((degree + 1, degree + 1))
    for k in range(degree + 1):
        for i in range(k + 1):
            m[k, i] = comb(degree, k) * comb(k, i) * (-1) ** (k - i)
    return m


def _as_positions(t: ArrayLike) -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"positions t must be a scalar or a 1-D array, got shape {arr.shape}")
    arr = np.atleast_1d(arr)
    if not np.all(np.isfinite(arr)):
        raise ValueError("positions t contain NaN or infinity")
    return arr


def _horner(coeffs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Evaluate per-row polynomials. ``coeffs`` (N, n+1), lowest degree first; ``t`` (N, M)."""
    out = np.zeros_like(t)
    for m in range(coeffs.shape[1] - 1, -1, -1):
        out = out * t + coeffs[:, m : m + 1]
    return out


class Curve:
    """A curve of the given ``kind`` with Bézier ``control_points`` of shape (K + 1, D).

    Lines (``fixed``, ``linear``) have exactly two control points, start and end.
    """

    def __init__(self, kind: str, control_points: ArrayLike) -> None:
        if kind not in CURVE_KINDS:
            raise ValueError(f"unknown curve kind {kind!r}; valid kinds: {', '.join(CURVE_KINDS)}")
        cp = np.array(control_points, dtype=np.float64)
        if cp.ndim != 2:
            raise ValueError(f"control points must be a 2-D array (K + 1, D), got shape {cp.shape}")
        if cp.shape[0] < 2 or cp.shape[1] < 1:
            raise ValueError(f"a curve needs at least 2 control points of dimension >= 1, got {cp.shape}")
        if kind in LINE_KINDS and cp.shape[0] != 2:
            raise ValueError(
                f"a {kind} curve is a line with 2 control points (start, end), got {cp.shape[0]}"
            )
        if not np.all(np.isfinite(cp)):
            raise ValueError("control points contain NaN or infinity")
        cp.setflags(write=False)
        self.kind = kind
        self.control_points = cp
        scale = max(1.0, float(np.abs(cp).max()))
        self._is_point = bool(np.abs(cp - cp[0]).max() <= _POINT_RTOL * scale)
        self._power: dict[str, Any] | None = None

    # -- basic properties -----------------------------------------------------------------------

    @property
    def degree(self) -> int:
        return self.control_points.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.control_points.shape[1]

    @property
    def start(self) -> np.ndarray:
        return self.control_points[0]

    @property
    def end(self) -> np.ndarray:
        return self.control_points[-1]

    def __repr__(self) -> str:
        return f"Curve(kind={self.kind!r}, degree={self.degree}, dim={self.dim})"

    # -- evaluation -----------------------------------------------------------------------------

    def points(self, t: ArrayLike) -> np.ndarray:
        """``l(t)`` for each position in ``t`` (scalar or 1-D), shape (N, D)."""
        tt = _as_positions(t)
        return _bernstein(self.degree, tt) @ self.control_points

    def derivative(self, t: ArrayLike, order: int = 1) -> np.ndarray:
        """``d^order l / dt^order`` at each position in ``t``, shape (N, D)."""
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"derivative order must be an integer >= 1, got {order!r}")
        tt = _as_positions(t)
        k = self.degree
        if order > k:
            return np.zeros((len(tt), self.dim))
        diff = np.diff(self.control_points, n=order, axis=0)
        factor = float(np.prod(np.arange(k - order + 1, k + 1)))
        return factor * (_bernstein(k - order, tt) @ diff)

    # -- projection -----------------------------------------------------------------------------

    def project(self, X: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Nearest point of the curve (t restricted to [0, 1]) for each row of ``X`` (N, D).

        Returns ``(t, distance)``, both float64 of shape (N,). Embeddings beyond an end get
        t = 0 or 1 and the distance to that end; a single-point curve gives t = 0.5.
        """
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {X.shape}")
        if X.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {X.shape[1]}, the curve has dimension {self.dim}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"embeddings must be numbers, got dtype {X.dtype}")
        t = np.empty(len(X))
        dist = np.empty(len(X))
        for lo in range(0, len(X), _CHUNK):
            chunk = X[lo : lo + _CHUNK].astype(np.float64, copy=False)
            if not np.all(np.isfinite(chunk)):
                bad = lo + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
                raise ValueError(f"embedding {bad} contains NaN or infinity")
            if self._is_point:
                tc = np.full(len(chunk), 0.5)
                dc = np.linalg.norm(chunk - self.control_points[0], axis=1)
            elif self.degree == 1:
                tc, dc = self._project_line(chunk)
            else:
                tc = self._project_bezier(chunk)
                dc = np.linalg.norm(chunk - self.points(tc), axis=1)
            t[lo : lo + len(chunk)] = tc
            dist[lo : lo + len(chunk)] = dc
        return t, dist

    def _project_line(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.control_points
        d = end - start
        rel = X - start
        t = np.clip((rel @ d) / (d @ d), 0.0, 1.0)
        rel -= t[:, None] * d
        return t, np.sqrt(np.einsum("nd,nd->n", rel, rel))

    def _power_form(self) -> dict[str, Any]:
        """Power-basis data of ``|l(t) - x|^2`` that does not depend on x (computed once)."""
        if self._power is None:
            k = self.degree
            centre = self.control_points.mean(axis=0)
            a = _bernstein_to_power(k) @ (self.control_points - centre)  # (K+1, D), l(t) - centre
            gram = a @ a.T
            # g(t) = (l(t) - x) . l'(t) = sum_m g_m t^m; x-free part: sum_{j+k=m+1} k a_j.a_k
            g_base = np.zeros(2 * k)
            # f(t) = |l(t) - x|^2 - |x - centre|^2 = sum_m e_m t^m; x-free part: sum_{j+k=m} a_j.a_k
            e_base = np.zeros(2 * k + 1)
            for j in range(k + 1):
                for i in range(k + 1):
                    e_base[i + j] += gram[j, i]
                    if i >= 1:
                        g_base[i + j - 1] += i * gram[j, i]
            norms = np.linalg.norm(a[1:], axis=1)
            eff = int(np.flatnonzero(norms > _TRIM_RTOL * norms.max())[-1]) + 1  # effective degree
            self._power = {"centre": centre, "a": a, "g": g_base, "e": e_base, "eff": eff}
        return self._power

    def _project_bezier(self, X: np.ndarray) -> np.ndarray:
        pw = self._power_form()
        k, eff = self.degree, pw["eff"]
        h = (X - pw["centre"]) @ pw["a"].T  # (N, K+1): a_k . (x - centre)
        n = len(X)
        g = np.tile(pw["g"], (n, 1))
        g[:, :k] -= np.arange(1, k + 1) * h[:, 1:]
        e = np.tile(pw["e"], (n, 1))
        e[:, : k + 1] -= 2.0 * h
        # Stationary points: roots of g, truncated to the effective degree 2*eff - 1.
        deg = 2 * eff - 1
        if deg == 1:
            roots = (-g[:, 0] / g[:, 1])[:, None]
        else:
            comp = np.zeros((n, deg, deg))
            comp[:, 0, :] = -g[:, deg - 1 :: -1] / g[:, deg : deg + 1]
            comp[:, np.arange(1, deg), np.arange(deg - 1)] = 1.0
            roots = np.linalg.eigvals(comp).real
        roots = np.clip(np.nan_to_num(roots, nan=0.0), 0.0, 1.0)
        roots = self._polish_roots(g, roots)
        cand = np.concatenate([np.zeros((n, 1)), np.ones((n, 1)), roots], axis=1)
        best = cand[np.arange(n), np.argmin(_horner(e, cand), axis=1)]
        return self._polish_on_curve(X, best)

    @staticmethod
    def _polish_roots(g: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Newton on g(t) = 0 in the power basis; a step is kept only if it lowers |g| inside [0, 1]."""
        dg = g[:, 1:] * np.arange(1, g.shape[1])
        val = _horner(g, t)
        for _ in range(_NEWTON_STEPS):
            slope = _horner(dg, t)
            ok = slope != 0
            step = np.divide(val, slope, out=np.zeros_like(val), where=ok)
            new = np.clip(t - step, 0.0, 1.0)
            new_val = _horner(g, new)
            better = np.abs(new_val) < np.abs(val)
            t = np.where(better, new, t)
            val = np.where(better, new_val, val)
        return t

    def _polish_on_curve(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Safeguarded Newton on |l(t) - x|^2 in Bernstein form: keeps a step only if it gets closer."""
        diff = self.points(t) - X
        dist2 = np.einsum("nd,nd->n", diff, diff)
        for _ in range(2):
            d1 = self.derivative(t, 1)
            d2 = self.derivative(t, 2)
            grad = np.einsum("nd,nd->n", diff, d1)
            curv = np.einsum("nd,nd->n", d1, d1) + np.einsum("nd,nd->n", diff, d2)
            ok = curv > 0
            step = np.divide(grad, curv, out=np.zeros_like(grad), where=ok)
            new = np.clip(t - step, 0.0, 1.0)
            new_diff = self.points(new) - X
            new_dist2 = np.einsum("nd,nd->n", new_diff, new_diff)
            better = new_dist2 < dist2
            t = np.where(better, new, t)
            diff = np.where(better[:, None], new_diff, diff)
            dist2 = np.where(better, new_dist2, dist2)
        return t

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"kind": ..., "control_points": [[...], ...]}`` (exact float64 via JSON)."""
        return {"kind": self.kind, "control_points": self.control_points.tolist()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Curve:
        if not isinstance(d, Mapping):
            raise ValueError(
                f"a curve must be a mapping with 'kind' and 'control_points', got {type(d).__name__}"
            )
        missing = [key for key in ("kind", "control_points") if key not in d]
        if missing:
            raise ValueError(f"curve is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(d) - {"kind", "control_points"})
        if unknown:
            raise ValueError(f"curve has unknown field(s): {', '.join(unknown)}")
        cp = d["control_points"]
        if not isinstance(cp, list) or not all(isinstance(row, list) for row in cp):
            raise ValueError("curve 'control_points' must be a list of lists of numbers")
        widths = {len(row) for row in cp}
        if len(widths) > 1:
            raise ValueError(f"curve 'control_points' rows have different lengths: {sorted(widths)}")
        for row in cp:
            for v in row:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"curve 'control_points' must hold numbers, found {v!r}")
        return Curve(d["kind"], np.array(cp, dtype=np.float64).reshape(len(cp), -1))


def fit_curve(
    kind: str, class_means: ArrayLike, counts: ArrayLike, *, lineage_index: int = 0, fixed_length: float = 1.0
) -> Curve:
    """Fit a lineage's curve from its class means (C, D), in stage order, and class counts (C,).

    * ``fixed``: the line of length ``fixed_length`` along the unit vector e_{lineage_index},
      centred on the count-weighted mean of the class means (the lineage mean).
    * ``linear``: the first right singular vector v of the centred class means, oriented so the
      last class projects further along it than the first; the line runs from the projection of the
      first class mean to that of the last.
    * ``bezier``: the class means are the control points.
    """
    if kind not in CURVE_KINDS:
        raise ValueError(f"unknown curve kind {kind!r}; valid kinds: {', '.join(CURVE_KINDS)}")
    means = np.asarray(class_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"class means must be a 2-D array (C >= 2 classes, D), got shape {means.shape}")
    for c, row in enumerate(means):
        if not np.all(np.isfinite(row)):
            raise ValueError(f"the mean of class {c} contains NaN or infinity (a class without samples?)")
    weights = np.asarray(counts, dtype=np.float64)
    if weights.shape != (means.shape[0],):
        raise ValueError(
            f"counts must have shape ({means.shape[0]},), one per class mean, got {weights.shape}"
        )
    for c, n in enumerate(weights):
        if not np.isfinite(n) or n <= 0:
            raise ValueError(f"count of class {c} is {n:g}; every class of a lineage needs samples")

    if kind == "bezier":
        return Curve("bezier", means)
    if kind == "fixed":
        dim = means.shape[1]
        if isinstance(lineage_index, bool) or not isinstance(lineage_index, (int, np.integer)):
            raise ValueError(f"lineage_index must be an integer, got {lineage_index!r}")
        if not 0 <= lineage_index < dim:
            raise ValueError(
                f"lineage_index {lineage_index} has no basis direction in a {dim}-D embedding "
                f"(valid: 0..{dim - 1})"
            )
        if not np.isfinite(fixed_length) or fixed_length <= 0:
            raise ValueError(f"fixed_length must be a positive number, got {fixed_length!r}")
        centre = weights @ means / weights.sum()
        direction = np.zeros(dim)
        direction[lineage_index] = 1.0
        half = 0.5 * float(fixed_length) * direction
        return Curve("fixed", np.stack([centre - half, centre + half]))
    # linear
    centre = means.mean(axis=0)
    centred = means - centre
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    first, last = centred[0] @ v, centred[-1] @ v
    if last < first:
        v, first, last = -v, -first, -last
    return Curve("linear", np.stack([centre + first * v, centre + last * v]))

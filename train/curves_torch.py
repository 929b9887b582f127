"""Curve evaluation and projection in torch, with gradients for the projected SMR loss (Eq. 4).

The curves themselves are fitted, stored and projected in numpy by :mod:`smr.core.curves`; this
module adds only what training needs on top: evaluating a curve on torch tensors and a projection
position ``p(x)`` whose gradient with respect to the embedding ``x`` reaches the network.

Every curve is a Bézier curve in Bernstein form, ``B(t) = sum_k C(K, k) (1-t)^(K-k) t^k P_k``; the
``fixed`` and ``linear`` curves are the degree-1 case ``P_0 + t (P_1 - P_0)``.

Projection and its gradient:

* Lines: closed form ``t = (x - P_0) . (P_1 - P_0) / |P_1 - P_0|^2``, deliberately **not clamped**
  to [0, 1]: the line is extended beyond its ends, so an embedding beyond the most mature (or
  immature) target is still pulled back along the line and the gradient never vanishes. Within
  [0, 1] the value equals :meth:`smr.core.curves.Curve.project`; outside it is the core's clamped
  value extended linearly.
* Bézier curves: the position ``t*`` of the nearest curve point on [0, 1] is found without
  gradients by the numpy core (polynomial roots, Newton polish, both ends compared). The gradient
  comes from the implicit function theorem applied to the stationarity condition
  ``g(t, x) = (B(t) - x) . B'(t) = 0``: ``dt/dx = -(dg/dx) / h`` with ``h = dg/dt =
  |B'(t)|^2 + (B(t) - x) . B''(t)``. It is attached as
  ``t = t* - (g(t*, x) - g(t*, x).detach()) / h.detach()``, whose value is exactly ``t*``. When
  the nearest point is an end of the curve (``t* = 0`` or ``1``) the position does not move under
  a small change of ``x``, so its gradient is zero there (likewise where ``h <= 0``, a degenerate
  stationary point). The same formula also gives the gradient with respect to the control points,
  should they require it.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
import torch

__all__ = [
    "LINE_KINDS",
    "bezier_points",
    "curve_points",
    "project_line",
    "project_bezier",
    "project",
]

LINE_KINDS = ("fixed", "linear")
"""Curve kinds that are straight lines (two control points: start, end)."""

_POINT_RTOL = 1e-12  # as smr.core.curves: a line shorter than this (relative) is a single point


def bezier_points(control_points: torch.Tensor, t: torch.Tensor, order: int = 0) -> torch.Tensor:
    """The ``order``-th derivative of the Bézier curve with ``control_points`` (K+1, D) at ``t`` (N,).

    Returns (N, D). ``order=0`` gives the curve points ``B(t)``; ``t`` may lie outside [0, 1]
    (the polynomial is extended).
    """
    if control_points.ndim != 2 or control_points.shape[0] < 2:
        raise ValueError(
            f"control_points must have shape (K+1, D) with K >= 1, got {tuple(control_points.shape)}"
        )
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    t = torch.as_tensor(t, dtype=control_points.dtype, device=control_points.device).reshape(-1)
    degree = control_points.shape[0] - 1
    if order > degree:
        return control_points.new_zeros(t.shape[0], control_points.shape[1])
    # d^r/dt^r B(t) = K!/(K-r)! * sum_k (Delta^r P)_k b_{k, K-r}(t)
    diffs = torch.diff(control_points, n=order, dim=0) if order else control_points
    n = degree - order
    factor = float(np.prod(np.arange(degree - order + 1, degree + 1))) if order else 1.0
    k = torch.arange(n + 1, dtype=control_points.dtype, device=control_points.device)
    binom = torch.tensor([comb(n, i) for i in range(n + 1)], dtype=control_points.dtype, device=k.device)
    tt = t[:, None]
    basis = binom * tt**k * (1 - tt) ** (n - k)  # (N, n+1)
    return factor * basis @ diffs


def curve_points(control_points: torch.Tensor, t: torch.Tensor, order: int = 0) -> torch.Tensor:
    """``l(t)`` (or its derivative) for any SMR curve: lines are degree-1 Bézier curves."""
    return bezier_points(control_points, t, order)


def project_line(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Position of the orthogonal projection of ``x`` (N, D) onto the line ``start + t (end - start)``.

    Not clamped to [0, 1] (see the module docstring). Differentiable in all arguments. A degenerate
    line (start = end) gives 0.5 everywhere, as :meth:`smr.core.curves.Curve.project` does.
    """
    direction = end - start
    length2 = direction.dot(direction)
    # A line whose ends coincide is a point: every position is 0.5 (as in the core), no gradient.
    scale = torch.maximum(start.abs().max(), end.abs().max()).clamp_min(1.0).detach()
    is_point = length2.detach() <= (_POINT_RTOL * scale) ** 2
    t = (x - start) @ direction / torch.where(is_point, torch.ones_like(length2), length2)
    return torch.where(is_point, torch.full_like(t, 0.5), t)


def project_bezier(x: torch.Tensor, control_points: torch.Tensor, t_star: torch.Tensor) -> torch.Tensor:
    """Curve position ``t*`` of the nearest point of each ``x`` (N, D), with the implicit gradient.

    ``t_star`` (N,) are the positions found without gradients (e.g. by :func:`project` with the
    numpy core); the result has the same value and the gradient described in the module docstring.
    """
    t_star = torch.as_tensor(t_star, dtype=x.dtype, device=x.device).detach().reshape(-1)
    if t_star.shape[0] != x.shape[0]:
        raise ValueError(f"t_star has {t_star.shape[0]} positions for {x.shape[0]} embeddings")
    point = bezier_points(control_points, t_star, 0)
    d1 = bezier_points(control_points, t_star, 1)
    d2 = bezier_points(control_points, t_star, 2)
    residual = point - x
    g = (residual * d1).sum(dim=1)
    h = ((d1 * d1).sum(dim=1) + (residual * d2).sum(dim=1)).detach()
    interior = (t_star > 0) & (t_star < 1) & (h > 0)
    step = torch.where(interior, (g - g.detach()) / torch.where(interior, h, torch.ones_like(h)), 0.0)
    return t_star - step


def project(
    curve: Any,
    x: torch.Tensor,
    *,
    control_points: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable curve position of embeddings ``x`` (N, D) on a :class:`smr.core.curves.Curve`.

    Lines use the unclamped closed form, Bézier curves the core's projection plus the implicit
    gradient. ``control_points`` may pass the curve's control points as a tensor already on the
    right device (otherwise they are taken from ``curve.control_points``).
    """
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {tuple(x.shape)}")
    if control_points is None:
        control_points = torch.tensor(np.asarray(curve.control_points), dtype=x.dtype, device=x.device)
    else:
        control_points = control_points.to(dtype=x.dtype, device=x.device)
    if control_points.shape[1] != x.shape[1]:
        raise ValueError(
            f"embedding dimension {x.shape[1]} does not match the curve's dimension {control_points.shape[1]}"
        )
    if curve.kind in LINE_KINDS:
        return project_line(x, control_points[0], control_points[-1])
    if curve.kind != "bezier":
        raise ValueError(f"unknown curve kind {curve.kind!r}; expected one of {(*LINE_KINDS, 'bezier')}")
    if x.shape[0] == 0:
        return x.new_zeros(0)
    t_star, _ = curve.project(x.detach().cpu().to(torch.float64).numpy())
    return project_bezier(x, control_points, torch.from_numpy(np.asarray(t_star, dtype=np.float64)))

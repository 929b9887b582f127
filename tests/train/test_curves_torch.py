"""Torch curve ops against the numpy core (parity) and finite differences (gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smr.core.curves import Curve, fit_curve
from smr.train.curves_torch import bezier_points, curve_points, project, project_bezier, project_line


def de_casteljau(control_points: np.ndarray, t: float) -> np.ndarray:
    """A point of a Bézier curve by repeated linear interpolation (independent of Bernstein form)."""
    pts = [np.array(p, dtype=np.float64) for p in control_points]
    while len(pts) > 1:
        pts = [(1 - t) * a + t * b for a, b in zip(pts[:-1], pts[1:], strict=True)]
    return pts[0]


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one thread avoids oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.fixture(params=[2, 3, 6])
def bezier(request, rng) -> Curve:
    """A random Bézier curve with ``param`` control points (a line for 2) in 5-D."""
    return fit_curve("bezier", rng.normal(size=(request.param, 5)) * 2.0, np.ones(request.param))


def test_points_match_de_casteljau_and_the_core(rng, bezier):
    t = np.concatenate([rng.uniform(0, 1, size=20), [0.0, 1.0]])
    cp = torch.from_numpy(bezier.control_points.copy())
    got = bezier_points(cp, torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(got, [de_casteljau(bezier.control_points, v) for v in t], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, bezier.points(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_derivatives_match_the_core_and_autograd(rng, bezier, order):
    t = torch.from_numpy(rng.uniform(0, 1, size=10)).requires_grad_(True)
    cp = torch.from_numpy(bezier.control_points.copy())
    got = curve_points(cp, t, order)
    np.testing.assert_allclose(got.detach().numpy(), bezier.derivative(t.detach().numpy(), order), atol=1e-10)
    if order - 1 > bezier.degree:  # both derivatives vanish
        assert torch.all(got == 0)
        return
    # d/dt of the (order-1)-th derivative, by autograd, is the order-th derivative
    lower = curve_points(cp, t, order - 1)
    by_autograd = torch.stack(
        [torch.autograd.grad(lower[:, d].sum(), t, retain_graph=True)[0] for d in range(cp.shape[1])], dim=1
    )
    np.testing.assert_allclose(by_autograd.detach().numpy(), got.detach().numpy(), atol=1e-9)


@pytest.mark.parametrize("kind", ["fixed", "linear"])
def test_line_projection_matches_the_core_inside_and_extends_beyond(rng, kind):
    means = rng.normal(size=(4, 6)) + np.linspace(0, 4, 4)[:, None]
    curve = fit_curve(kind, means, np.arange(1, 5), lineage_index=2, fixed_length=3.0)
    x = rng.normal(size=(200, 6)) * 4.0 + means.mean(axis=0)
    got = project(curve, torch.from_numpy(x)).numpy()
    core_t, _ = curve.project(x)
    inside = (got > 0) & (got < 1)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(got[inside], core_t[inside], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.clip(got, 0, 1), core_t, rtol=0, atol=1e-6)
    # beyond the ends: the unclamped position on the extended line
    start, end = curve.control_points
    expected = (x - start) @ (end - start) / ((end - start) @ (end - start))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bezier_projection_matches_the_core(rng, bezier):
    x = bezier.points(rng.uniform(-0.2, 1.2, size=100)) + rng.normal(size=(100, 5)) * 0.5
    got = project(Curve("bezier", bezier.control_points), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, bezier.project(x)[0], rtol=0, atol=1e-6)


def test_line_projection_gradient_matches_finite_differences(rng):
    x = torch.from_numpy(rng.normal(size=(8, 4))).requires_grad_(True)
    start = torch.from_numpy(rng.normal(size=4)).requires_grad_(True)
    end = torch.from_numpy(rng.normal(size=4)).requires_grad_(True)
    assert torch.autograd.gradcheck(project_line, (x, start, end))
    curve = Curve("linear", np.stack([start.detach().numpy(), end.detach().numpy()]))
    assert torch.autograd.gradcheck(lambda e: project(curve, e), (x,))


def test_bezier_projection_gradient_matches_finite_differences(rng):
    curve = Curve("bezier", rng.normal(size=(5, 4)) * 2.0)
    # points near the interior of the curve: gradcheck's finite differences re-run the core's
    # root finding, so this compares the implicit gradient with the true derivative of t*(x)
    x = curve.points(rng.uniform(0.15, 0.85, size=12)) + rng.normal(size=(12, 4)) * 0.05
    xt = torch.from_numpy(x).requires_grad_(True)
    t = project(curve, xt)
    assert torch.all((t > 0) & (t < 1))
    assert torch.autograd.gradcheck(lambda e: project(curve, e), (xt,))
    # also with respect to the control points (the implicit formula covers any parameter of g)
    cp = torch.from_numpy(curve.control_points.copy()).requires_grad_(True)
    t_star = torch.from_numpy(curve.project(x)[0])

    def by_control_points(c: torch.Tensor) -> torch.Tensor:
        moved = Curve("bezier", c.detach().numpy())
        return project_bezier(xt.detach(), c, torch.from_numpy(moved.project(x)[0]))

    assert torch.equal(by_control_points(cp).detach(), t_star)
    assert torch.autograd.gradcheck(by_control_points, (cp,))


def test_bezier_projection_at_a_clamped_end_has_zero_gradient(rng):
    curve = Curve("bezier", np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    x = torch.tensor([[-1.0, -0.5], [3.0, -0.5], [1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    t = project(curve, x)
    assert t[0].item() == 0.0 and t[1].item() == 1.0
    t.sum().backward()
    assert torch.all(x.grad[:2] == 0)
    assert x.grad[2].abs().sum() > 0


def test_projection_reports_bad_input(rng):
    curve = Curve("linear", rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="dimension 4 does not match the curve's dimension 3"):
        project(curve, torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        project(curve, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="K >= 1"):
        bezier_points(torch.zeros(1, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="3 positions for 2 embeddings"):
        project_bezier(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(3))


def test_degenerate_line_is_a_point_like_the_core():
    curve = Curve("linear", np.ones((2, 3)))
    x = np.random.default_rng(0).normal(size=(4, 3))
    got = project(curve, torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, curve.project(x)[0])

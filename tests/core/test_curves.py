"""Curves: evaluation against scipy's Bernstein polynomials, projection against a dense brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.interpolate import BPoly
from scipy.stats import binom
from sklearn.decomposition import PCA

from smr.core.curves import CURVE_KINDS, Curve, fit_curve

GRID = 100_001  # brute-force samples of t
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def reference(control_points: np.ndarray) -> BPoly:
    """The same Bézier curve as scipy's Bernstein polynomial on [0, 1]."""
    return BPoly(np.asarray(control_points, dtype=np.float64)[:, None, :], [0.0, 1.0])


def _dist(bp: BPoly, X: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.linalg.norm(X - bp(t), axis=1)


def _bernstein_points(cp: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Curve points from the Bernstein basis written as binomial probabilities (fast for large D)."""
    degree = len(cp) - 1
    return binom.pmf(np.arange(degree + 1)[None, :], degree, t[:, None]) @ cp


def _de_casteljau(cp: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Curve points by repeated linear interpolation of the control points."""
    pts = np.broadcast_to(cp, (len(t), *cp.shape))
    tt = t[:, None, None]
    while pts.shape[1] > 1:
        pts = (1.0 - tt) * pts[:, :-1] + tt * pts[:, 1:]
    return pts[:, 0]


def brute_force(bp: BPoly, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest point by a dense grid of t, then golden-section search around the best local minima.

    Returns (t, distance, runner_up): runner_up is the distance of the best local minimum at least
    1e-3 away in t from the winner (inf if none), to recognise (nearly) equidistant cases.
    """
    ts = np.linspace(0.0, 1.0, GRID)
    cp = bp.c[:, 0, :]
    x_sq = np.einsum("nd,nd->n", X, X)[:, None]
    d2 = np.empty((len(X), GRID))
    for lo in range(0, GRID, 20_000):
        pts = _bernstein_points(cp, ts[lo : lo + 20_000])
        d2[:, lo : lo + 20_000] = x_sq - 2.0 * X @ pts.T + np.einsum("md,md->m", pts, pts)[None, :]
    padded = np.pad(d2, ((0, 0), (1, 1)), constant_values=np.inf)
    is_min = (d2 <= padded[:, :-2]) & (d2 <= padded[:, 2:])
    lows, highs, owners = [], [], []
    for n, row in enumerate(d2):
        minima = np.flatnonzero(is_min[n])
        for i in minima[np.argsort(row[minima])[:4]]:
            lows.append(ts[max(i - 1, 0)])
            highs.append(ts[min(i + 1, GRID - 1)])
            owners.append(n)
    owners = np.array(owners)
    a, b = np.array(lows), np.array(highs)
    pts = X[owners]

    def dist(t: np.ndarray) -> np.ndarray:
        return np.linalg.norm(pts - _de_casteljau(cp, t), axis=1)

    # golden-section search, vectorised over all brackets
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = dist(c), dist(d)
    for _ in range(60):
        left = fc < fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new, d_new = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        fc, fd = np.where(left, dist(c_new), fd), np.where(left, fc, dist(d_new))
    t_cand = 0.5 * (a + b)
    # the ends are candidates in their own right (the golden search stops within ~1e-9 of them)
    t_cand = np.where(t_cand < 1e-7, 0.0, np.where(t_cand > 1 - 1e-7, 1.0, t_cand))
    d_cand = _dist(bp, pts, t_cand)
    t_best, d_best, runner_up = np.empty(len(X)), np.empty(len(X)), np.full(len(X), np.inf)
    for n in range(len(X)):
        mine = owners == n
        tc, dc = t_cand[mine], d_cand[mine]
        k = int(np.argmin(dc))
        t_best[n], d_best[n] = tc[k], dc[k]
        others = np.abs(tc - tc[k]) > 1e-3
        if others.any():
            runner_up[n] = dc[others].min()
    return t_best, d_best, runner_up


def assert_matches_brute_force(curve: Curve, X: np.ndarray) -> None:
    bp = reference(curve.control_points)
    t, dist = curve.project(X)
    assert t.shape == dist.shape == (len(X),)
    assert np.all((t >= 0) & (t <= 1))
    t_bf, d_bf, runner_up = brute_force(bp, X)
    scale = 1.0 + d_bf
    # the reported distance is the distance to the reported point ...
    np.testing.assert_allclose(dist, _dist(bp, X, t), rtol=0, atol=1e-12 * scale.max())
    # ... and no point of the curve is closer
    assert np.all(dist <= d_bf + 1e-9 * scale), np.max(dist - d_bf)
    unique = runner_up - d_bf > 1e-6 * scale
    assert unique.mean() > 0.8  # the comparison in t must actually happen for most points
    err = np.abs(t - t_bf)[unique]
    assert err.max() <= 1e-6, (err.max(), np.flatnonzero(unique)[np.argmax(err)])


def sample_points(control_points: np.ndarray, rng: np.random.Generator, n: int = 36) -> np.ndarray:
    """Embeddings near the curve, far from it, and beyond both of its ends."""
    bp = reference(control_points)
    dim = control_points.shape[1]
    spread = np.abs(control_points - control_points.mean(axis=0)).max()
    near = bp(rng.uniform(0, 1, n // 2)) + 0.1 * spread * rng.normal(size=(n // 2, dim))
    far = control_points.mean(axis=0) + 2.0 * spread * rng.normal(size=(n // 4, dim))
    k = n - len(near) - len(far)
    beyond_end = control_points[-1] + (control_points[-1] - control_points[-2]) * rng.uniform(
        0.5, 2, (k // 2, 1)
    )
    beyond_start = control_points[0] + (control_points[0] - control_points[1]) * rng.uniform(
        0.5, 2, (k - k // 2, 1)
    )
    return np.concatenate([near, far, beyond_end, beyond_start])


@pytest.mark.parametrize("dim", [2, 16, 256])
@pytest.mark.parametrize("degree", [1, 2, 3, 4, 5, 6])
def test_bezier_projection_matches_brute_force(degree: int, dim: int) -> None:
    rng = np.random.default_rng(1000 * degree + dim)
    means = rng.normal(size=(degree + 1, dim))
    curve = fit_curve("bezier", means, np.full(degree + 1, 10))
    assert_matches_brute_force(curve, sample_points(means, rng))


@pytest.mark.parametrize("dim", [2, 16, 256])
@pytest.mark.parametrize("kind", ["fixed", "linear"])
def test_line_projection_matches_brute_force(kind: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    means = rng.normal(size=(5, dim))
    curve = fit_curve(kind, means, rng.integers(1, 100, 5), lineage_index=1, fixed_length=2.0)
    assert curve.kind == kind and curve.degree == 1
    assert_matches_brute_force(curve, sample_points(curve.control_points, rng))


@pytest.mark.parametrize(
    "control_points",
    [
        [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],  # collinear, evenly spaced: a line of degree 3
        [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, 1.0]],  # repeated control point
        [[0.0, 0.0], [2.0, 1.0], [0.0, 1.0], [2.0, 0.0]],  # self-intersecting
        [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]],  # collinear, uneven speed
    ],
)
def test_special_bezier_shapes_match_brute_force(control_points) -> None:
    cp = np.array(control_points)
    rng = np.random.default_rng(7)
    X = np.concatenate([sample_points(cp, rng), rng.uniform(-1, 3, (20, 2))])
    curve = Curve("bezier", cp)
    t, dist = curve.project(X)
    t_bf, d_bf, _ = brute_force(reference(cp), X)
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(dist))
    np.testing.assert_allclose(dist, d_bf, atol=1e-9)


def test_equidistant_ends_compare_by_distance() -> None:
    # an arch from (-1, 0) over (0, 1) to (1, 0); below its middle both ends are nearest
    curve = Curve("bezier", [[-1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    t, dist = curve.project(np.array([[0.0, -1.0], [0.0, -3.0]]))
    assert set(np.round(t, 12)) <= {0.0, 1.0}
    np.testing.assert_allclose(dist, [np.sqrt(2.0), np.sqrt(10.0)], rtol=1e-12)


def test_points_on_the_curve_project_to_themselves() -> None:
    rng = np.random.default_rng(3)
    cp = rng.normal(size=(5, 16))
    t0 = np.linspace(0, 1, 41)
    t, dist = Curve("bezier", cp).project(reference(cp)(t0))
    np.testing.assert_allclose(t, t0, atol=1e-9)
    np.testing.assert_allclose(dist, 0.0, atol=1e-9)


def test_beyond_the_ends_t_is_clamped_and_distance_is_to_the_end() -> None:
    rng = np.random.default_rng(4)
    start, end = rng.normal(size=(2, 8))
    normal = rng.normal(size=8)
    normal -= (normal @ (end - start)) / ((end - start) @ (end - start)) * (end - start)
    after = end + 0.7 * (end - start) + normal
    before = start - 0.3 * (end - start) - normal
    t, dist = Curve("linear", [start, end]).project(np.stack([after, before]))
    np.testing.assert_array_equal(t, [1.0, 0.0])
    np.testing.assert_allclose(
        dist, [np.linalg.norm(after - end), np.linalg.norm(before - start)], rtol=1e-12
    )
    # a gently bent Bézier curve: beyond its last control point along its end tangent
    cp = np.array([[0.0, 0.0], [1.0, 0.1], [2.0, 0.0], [3.0, 0.1]])
    x = np.array([[5.0, 0.7], [-2.0, -0.6]])
    t, dist = Curve("bezier", cp).project(x)
    np.testing.assert_array_equal(t, [1.0, 0.0])
    np.testing.assert_allclose(dist, np.linalg.norm(x - cp[[-1, 0]], axis=1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "bezier"])
def test_identical_class_means_give_a_point_curve_without_nan(kind: str) -> None:
    mean = np.array([0.3, -1.0, 2.0])
    curve = fit_curve(kind, np.tile(mean, (4, 1)), [5, 6, 7, 8])
    X = np.random.default_rng(5).normal(size=(10, 3))
    t, dist = curve.project(X)
    np.testing.assert_array_equal(t, 0.5)  # documented: a single-point curve gives t = 0.5
    np.testing.assert_allclose(dist, np.linalg.norm(X - mean, axis=1), rtol=1e-12)
    assert np.all(np.isfinite(curve.points(np.linspace(0, 1, 5))))
    assert np.all(np.isfinite(curve.derivative([0.2, 0.9])))


def test_zero_length_line_gives_middle_position() -> None:
    p = np.array([1.0, 2.0])
    t, dist = Curve("fixed", [p, p]).project(np.array([[1.0, 2.0], [4.0, 6.0]]))
    np.testing.assert_array_equal(t, [0.5, 0.5])
    np.testing.assert_allclose(dist, [0.0, 5.0])


def test_many_points_across_chunks_match_closed_form() -> None:
    rng = np.random.default_rng(6)
    start, end = rng.normal(size=(2, 3))
    X = rng.normal(size=(20_000, 3)).astype(np.float32)
    t, dist = Curve("linear", [start, end]).project(X)
    Xd = X.astype(np.float64)
    d = end - start
    t_ref = np.clip((Xd - start) @ d / (d @ d), 0, 1)
    np.testing.assert_allclose(t, t_ref, atol=1e-12)
    np.testing.assert_allclose(dist, np.linalg.norm(Xd - start - t_ref[:, None] * d, axis=1), atol=1e-12)


@pytest.mark.parametrize("degree", [1, 2, 5])
def test_points_and_derivatives_match_scipy(degree: int) -> None:
    rng = np.random.default_rng(degree)
    cp = rng.normal(size=(degree + 1, 4))
    curve = Curve("bezier", cp)
    bp = reference(cp)
    t = np.concatenate([[0.0, 1.0], rng.uniform(0, 1, 20), [-0.5, 1.5]])
    np.testing.assert_allclose(curve.points(t), bp(t), atol=1e-12)
    for order in (1, 2, 3):
        np.testing.assert_allclose(curve.derivative(t, order=order), bp.derivative(order)(t), atol=1e-10)
    assert curve.points(0.25).shape == (1, 4)


def test_fixed_curve_is_the_predefined_direction_through_the_weighted_mean() -> None:
    rng = np.random.default_rng(8)
    means = rng.normal(size=(4, 6))
    counts = np.array([1, 10, 100, 5])
    curve = fit_curve("fixed", means, counts, lineage_index=3, fixed_length=1.5)
    weighted = sum(n * m for n, m in zip(counts, means, strict=True)) / counts.sum()
    expected_dir = np.zeros(6)
    expected_dir[3] = 1.5
    np.testing.assert_allclose(curve.end - curve.start, expected_dir, atol=1e-12)
    np.testing.assert_allclose(0.5 * (curve.start + curve.end), weighted, atol=1e-12)
    other = fit_curve("fixed", means, counts, lineage_index=0)
    assert np.argmax(np.abs(other.end - other.start)) == 0


def test_linear_curve_follows_the_first_principal_component() -> None:
    rng = np.random.default_rng(9)
    stages = np.arange(5)[:, None]
    direction = rng.normal(size=12)
    means = 3.0 + stages * direction + 0.3 * rng.normal(size=(5, 12))
    curve = fit_curve("linear", means, np.ones(5))
    pc = PCA(n_components=1).fit(means).components_[0]
    line = curve.end - curve.start
    assert abs(line @ pc) / np.linalg.norm(line) == pytest.approx(1.0, abs=1e-10)
    assert (means[-1] - means[0]) @ line > 0  # oriented immature -> mature
    # endpoints: orthogonal projections of the first and last class means onto the line
    unit = line / np.linalg.norm(line)
    centre = means.mean(axis=0)
    for point, mean in ((curve.start, means[0]), (curve.end, means[-1])):
        np.testing.assert_allclose(point, centre + ((mean - centre) @ unit) * unit, atol=1e-10)
    # reversing the stage order reverses the line
    flipped = fit_curve("linear", means[::-1], np.ones(5))
    np.testing.assert_allclose(flipped.start, curve.end, atol=1e-10)
    np.testing.assert_allclose(flipped.end, curve.start, atol=1e-10)


def test_linear_curve_of_two_classes_joins_their_means() -> None:
    means = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    curve = fit_curve("linear", means, [3, 4])
    np.testing.assert_allclose(curve.control_points, means, atol=1e-12)


def test_bezier_curve_uses_the_class_means_as_control_points() -> None:
    means = np.random.default_rng(10).normal(size=(6, 5))
    curve = fit_curve("bezier", means, np.arange(1, 7))
    np.testing.assert_array_equal(curve.control_points, means)
    np.testing.assert_allclose(curve.points([0.0, 1.0]), means[[0, -1]], atol=1e-12)


def test_dict_round_trip_through_json_is_bit_identical() -> None:
    rng = np.random.default_rng(11)
    for kind, n in (("fixed", 2), ("linear", 2), ("bezier", 5)):
        curve = Curve(kind, rng.normal(size=(n, 7)) * 10.0 ** rng.integers(-8, 8, (n, 7)))
        back = Curve.from_dict(json.loads(json.dumps(curve.to_dict())))
        assert back.kind == kind
        assert back.control_points.tobytes() == curve.control_points.tobytes()


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "spline", "control_points": [[0.0], [1.0]]}, "valid kinds: fixed, linear, bezier"),
        ({"control_points": [[0.0], [1.0]]}, "missing field(s): kind"),
        ({"kind": "linear", "control_points": [[0.0], [1.0], [2.0]]}, "2 control points"),
        ({"kind": "bezier", "control_points": [[0.0, 1.0], [1.0]]}, "different lengths"),
        ({"kind": "bezier", "control_points": [[0.0], ["a"]]}, "numbers"),
        ({"kind": "bezier", "control_points": [[0.0]]}, "at least 2 control points"),
        ({"kind": "bezier", "control_points": [[0.0], [1.0]], "color": "red"}, "unknown field(s): color"),
    ],
)
def test_from_dict_rejects_bad_documents(d: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Curve.from_dict(d)


def test_bad_inputs_are_named() -> None:
    curve = Curve("bezier", np.zeros((3, 4)) + np.arange(3)[:, None])
    with pytest.raises(ValueError, match="dimension 5, the curve has dimension 4"):
        curve.project(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        curve.project(np.zeros(4))
    bad = np.zeros((3, 4))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="embedding 2 contains NaN"):
        curve.project(bad)
    with pytest.raises(ValueError, match="order"):
        curve.derivative([0.5], order=0)
    with pytest.raises(ValueError, match="valid kinds: fixed, linear, bezier"):
        fit_curve("spline", np.zeros((3, 2)), [1, 1, 1])
    assert CURVE_KINDS == ("fixed", "linear", "bezier")
    with pytest.raises(ValueError, match="class 1 contains NaN"):
        fit_curve("linear", [[0.0, 0.0], [np.nan, 1.0]], [1, 1])
    with pytest.raises(ValueError, match="count of class 2"):
        fit_curve("linear", np.zeros((3, 2)), [1, 1, 0])
    with pytest.raises(ValueError, match=r"one per class mean"):
        fit_curve("linear", np.zeros((3, 2)), [1, 1])
    with pytest.raises(ValueError, match=r"lineage_index 2 .* 2-D embedding"):
        fit_curve("fixed", np.zeros((3, 2)), [1, 1, 1], lineage_index=2)

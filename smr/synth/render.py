"""Drawing cells: nucleated cells, red cells and platelets as optical-density sprites, then patches.

Everything is laid out in micrometres and sampled at a given pixel size (``mpp``, micrometres per
pixel), so a slide at 0.25 um/px and a 96 px patch show the same cells at their own scale. A patch
covers :data:`FIELD_UM` micrometres, like a CellaVision patch (360 px at about 0.094 um/px).

A sprite is a small window of optical density (OD) plus the cell's coverage; compositing adds ODs
(red cells are hidden where a nucleated cell covers them) and converts to RGB with Beer-Lambert:
``rgb = illumination * exp(-od)``. Shapes are signed distance fields with one-pixel soft edges,
textures are smoothed noise, granules are splatted points smoothed to their physical size -- all
numpy/scipy array work on the sprite's window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .morphology import CellParams, cell_params
from .stain import Stain

__all__ = [
    "FIELD_UM",
    "RED_CELL_RADIUS_UM",
    "Sprite",
    "Canvas",
    "cell_extent_um",
    "render_cell",
    "render_red_cell",
    "render_platelet",
    "render_patch",
    "scatter_red_cells",
    "od_to_rgb",
]

FIELD_UM = 34.0
"""Width of a patch in micrometres (a CellaVision 360 px patch at about 0.094 um/px)."""

RED_CELL_RADIUS_UM = 3.8


@dataclass
class Sprite:
    """A window of the image: rows ``y0:y0+h``, columns ``x0:x0+w``."""

    y0: int
    x0: int
    od: np.ndarray  # (h, w, 3) float32
    alpha: np.ndarray | None = None  # (h, w) float32 coverage of a nucleated cell, hides red cells
    outline: np.ndarray | None = None  # (n, 2) cell outline, x/y in um relative to the cell centre

    @property
    def bottom(self) -> int:
        return self.y0 + self.od.shape[0]


class Canvas:
    """OD layers of an image region: nucleated cells (with coverage) and red cells / platelets."""

    def __init__(self, height: int, width: int, y0: int = 0, x0: int = 0) -> None:
        self.y0, self.x0 = y0, x0
        self.cells = np.zeros((height, width, 3), np.float32)
        self.coverage = np.zeros((height, width), np.float32)
        self.red = np.zeros((height, width, 3), np.float32)

    def _window(self, s: Sprite) -> tuple[slice, slice, slice, slice] | None:
        h, w = s.od.shape[:2]
        H, W = self.coverage.shape
        top, left = s.y0 - self.y0, s.x0 - self.x0
        r0, r1 = max(top, 0), min(top + h, H)
        c0, c1 = max(left, 0), min(left + w, W)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)

    def add_cell(self, s: Sprite) -> None:
        win = self._window(s)
        if win is None:
            return
        cr, cc, sr, sc = win
        self.cells[cr, cc] += s.od[sr, sc]
        if s.alpha is not None:
            np.maximum(self.coverage[cr, cc], s.alpha[sr, sc], out=self.coverage[cr, cc])

    def add_red(self, s: Sprite) -> None:
        win = self._window(s)
        if win is not None:
            cr, cc, sr, sc = win
            self.red[cr, cc] += s.od[sr, sc]

    def od(self, stain: Stain) -> np.ndarray:
        """Total optical density: background + red cells (hidden under cells) + cells."""
        return stain.background + self.red * (1.0 - 0.95 * self.coverage[..., None]) + self.cells


def od_to_rgb(
    od: np.ndarray, stain: Stain, rng: np.random.Generator, mpp: float, blur_scale: float = 1.0
) -> np.ndarray:
    """Beer-Lambert to RGB, focus blur and sensor noise; uint8 (h, w, 3)."""
    rgb = stain.illumination.astype(np.float32) * np.exp(-od.astype(np.float32, copy=False))
    sigma = stain.blur_um * blur_scale / mpp
    if sigma > 0.05:
        rgb = gaussian_filter(rgb, sigma=(sigma, sigma, 0), mode="nearest")
    rgb += rng.standard_normal(rgb.shape[:2] + (1,), dtype=np.float32) * np.float32(stain.noise)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(stain.noise * 0.5)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# -- helpers ----------------------------------------------------------------------------------


def _grid(cx: float, cy: float, extent_um: float, mpp: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Pixel window around (cx, cy) (pixels) reaching ``extent_um``; centre coordinates in um."""
    half = extent_um / mpp
    x0, x1 = math.floor(cx - half), math.ceil(cx + half)
    y0, y1 = math.floor(cy - half), math.ceil(cy + half)
    xs = ((np.arange(x0, x1) + 0.5 - cx) * mpp).astype(np.float32)
    ys = ((np.arange(y0, y1) + 0.5 - cy) * mpp).astype(np.float32)
    return y0, x0, xs[None, :], ys[:, None]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian noise smoothed to ``sigma_px`` and rescaled to unit standard deviation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if sigma_px > 0.3:
        noise = gaussian_filter(noise, sigma_px, mode="wrap")
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Coverage of the inside (d < 0) of a signed distance field with an edge ``width`` wide."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _splat(
    shape: tuple[int, int],
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    sigma_px: float,
) -> np.ndarray:
    """Points smoothed to Gaussians of ``sigma_px``; weights are the peak value at a fine scale."""
    out = np.zeros(shape, np.float32)
    r = np.floor(rows).astype(np.int64)
    c = np.floor(cols).astype(np.int64)
    ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    if not ok.any():
        return out
    sigma = max(sigma_px, 0.5)
    np.add.at(out, (r[ok], c[ok]), weights[ok] * (2.0 * math.pi * sigma_px * sigma_px))
    return gaussian_filter(out, sigma, mode="constant")


def _outline(rng: np.random.Generator, wobble: float, harmonics: range = range(2, 7)) -> list:
    return [(j, wobble * rng.normal() / j**0.6, rng.uniform(0, 2 * math.pi)) for j in harmonics]


def _radius(phi: np.ndarray, base: float, terms: list) -> np.ndarray:
    r = np.ones_like(phi)
    for j, a, ph in terms:
        r += a * np.cos(j * phi + ph)
    return base * r


# -- nucleated cells --------------------------------------------------------------------------


def _nucleus_centre_line(p: CellParams, radius: float, rng: np.random.Generator):
    """Points along the nucleus' centre line and the nuclear half-width at each point (um)."""
    width = p.nuc_width_frac * radius
    length = max(p.nuc_length_frac * radius, 1e-3)
    lobes = max(1, p.nuc_lobes)
    c = p.nuc_constriction if lobes > 1 else 0.0
    strand = 0.12
    bend = p.nuc_bend
    if c > 0:
        # Lobes of about the tube's width, spaced so thin strands show between them; the centre line
        # blends from the even tube (c = 0) to the chain of lobes (c = 1) and curls up when long.
        sizes = 0.95 * width * rng.uniform(0.85, 1.15, size=lobes)
        gaps = 1.2 * (sizes[:-1] + sizes[1:])
        lobed_length = float(gaps.sum())
        centres = np.concatenate([[0.0], np.cumsum(gaps)]) - lobed_length / 2
        length = (1 - c) * length + c * lobed_length
        bend = max(bend, length / (0.55 * radius))
    step = 0.3 * max(min(width, strand / max(c, 1e-3) if c > 0 else width), 0.08)
    k = int(np.clip(math.ceil(length / step) + 1, 3, 260))
    s = np.linspace(-length / 2, length / 2, k)
    # Heading turns by the bend over the length, plus a gentle random meander.
    meander = 0.25 * p.nuc_irregularity / 0.04 * (1.0 if lobes > 1 else 0.5)
    phase = rng.uniform(0, 2 * math.pi)
    heading = bend * s / length + meander * np.sin(2 * math.pi * s / length + phase)
    ds = length / (k - 1)
    pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * ds, axis=0)
    widths = np.full(k, width)
    if c > 0:
        t = s * (lobed_length / length)  # position along the chain of lobes
        profile = np.sqrt(np.clip(sizes[None, :] ** 2 - (t[:, None] - centres[None, :]) ** 2, 0, None)).max(1)
        widths = (1 - c) * width + c * np.maximum(profile, strand)
    weights = widths**2
    pts -= (pts * weights[:, None]).sum(0) / weights.sum()
    return pts.astype(np.float32), widths.astype(np.float32)


def cell_extent_um(p: CellParams) -> float:
    """Half-width of the window that holds a cell drawn with parameters ``p``."""
    return p.diameter / 2 * math.sqrt(p.aspect) * (1 + 3 * p.wobble) + 1.5


@dataclass
class _CellFrame:
    """A nucleated cell's pixel window and its body, in the cell's own frame (micrometres)."""

    y0: int  # window origin, pixels
    x0: int
    xs: np.ndarray  # image-frame x (um from the cell centre) of each column, (1, w)
    ys: np.ndarray  # image-frame y of each row, (h, 1)
    mpp: float
    radius: float  # half the cell's diameter (um)
    stretch: float  # sqrt of the aspect ratio
    ct: float  # cosine and sine of the cell's orientation
    st: float
    u: np.ndarray  # cell-frame coordinates of each pixel, (h, w)
    v: np.ndarray
    terms: list  # outline harmonics (see _outline)
    d_body: np.ndarray  # signed distance to the cell's outline
    body: np.ndarray  # soft coverage of the cell

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ys.shape[0], self.xs.shape[1])


@dataclass
class _Nucleus:
    """The nucleus: a tube of ``widths`` along the centre line ``pts``, placed in the cell frame."""

    pts: np.ndarray  # (k, 2) centre line, um in the cell frame
    widths: np.ndarray  # (k,) half-width at each point
    extent: float  # farthest reach from its centre
    beta: float  # its orientation
    off: float  # its distance from the cell centre ...
    offset: np.ndarray  # ... as a vector


def render_cell(
    p: CellParams, stain: Stain, rng: np.random.Generator, mpp: float, cx: float, cy: float
) -> Sprite:
    """Draw a nucleated cell centred at pixel position (cx, cy)."""
    f = _cell_frame(p, rng, mpp, cx, cy)
    nuc = _place_nucleus(p, f, rng)
    d_nuc = _nucleus_distance(p, f, nuc, rng)
    nucleus = _soft(d_nuc, f.mpp) * f.body
    chromatin, nucleoli = _chromatin(p, f, nuc, d_nuc, rng)
    od = nucleus[..., None] * (
        chromatin[..., None] * stain.nucleus + 0.5 * nucleoli[..., None] * stain.nucleolus
    )

    # Cytoplasm: ground colour, texture, membrane, Golgi zone, perinuclear halo, vacuoles.
    cyto = f.body * (1 - nucleus)
    ground = (
        p.cyto_blue * stain.basophilic + p.cyto_neutro * stain.neutrophilic + p.cyto_pink * stain.hemoglobin
    )
    shade = _cytoplasm_shade(p, f, nuc, d_nuc, rng)
    od += (cyto * shade)[..., None] * ground
    _add_granules(od, p, stain, f, cyto, rng)
    return Sprite(f.y0, f.x0, od.astype(np.float32), f.body.astype(np.float32), _outline_polygon(f))


def _cell_frame(p: CellParams, rng: np.random.Generator, mpp: float, cx: float, cy: float) -> _CellFrame:
    """The cell's window, a random orientation and outline, and its body (coverage and distance)."""
    radius = p.diameter / 2
    stretch = math.sqrt(p.aspect)
    y0, x0, xs, ys = _grid(cx, cy, cell_extent_um(p), mpp)
    # Cell body in the cell's own frame (random orientation).
    theta = rng.uniform(0, 2 * math.pi)
    ct, st = math.cos(theta), math.sin(theta)
    u = (xs * ct + ys * st) / stretch
    v = (-xs * st + ys * ct) * stretch
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    terms = _outline(rng, p.wobble)
    d_body = r - _radius(phi, radius, terms)
    body = _soft(d_body, mpp)
    return _CellFrame(y0, x0, xs, ys, mpp, radius, stretch, ct, st, u, v, terms, d_body, body)


def _place_nucleus(p: CellParams, f: _CellFrame, rng: np.random.Generator) -> _Nucleus:
    """The nucleus' centre line, shrunk to fit inside the cell, turned and offset towards one side."""
    pts, widths = _nucleus_centre_line(p, f.radius, rng)
    extent_n = float((np.hypot(pts[:, 0], pts[:, 1]) + widths).max())
    inner = f.radius * (1 - sum(abs(a) for _, a, _ in f.terms)) / f.stretch
    if extent_n > 0.93 * inner:
        scale = 0.93 * inner / extent_n
        pts, widths, extent_n = pts * scale, widths * scale, extent_n * scale
    beta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(beta), -math.sin(beta)], [math.sin(beta), math.cos(beta)]], np.float32)
    pts = pts @ rot.T
    gamma = rng.uniform(0, 2 * math.pi)
    off = p.nuc_offset * max(0.0, 0.93 * inner - extent_n)
    offset = np.array([math.cos(gamma), math.sin(gamma)], np.float32) * off
    return _Nucleus(pts + offset, widths, extent_n, beta, off, offset)


def _nucleus_distance(p: CellParams, f: _CellFrame, nuc: _Nucleus, rng: np.random.Generator) -> np.ndarray:
    """Signed distance to the nucleus: the union of discs along its centre line, with contour noise.

    Computed only near the nucleus, for speed. The noise scales with the local width, so thin
    strands stay thin.
    """
    shape, pts, widths, aa = f.shape, nuc.pts, nuc.widths, f.mpp
    d_nuc = np.full(shape, np.inf, np.float32)
    local_width = np.zeros(shape, np.float32)
    near = (f.u - nuc.offset[0]) ** 2 + (f.v - nuc.offset[1]) ** 2 < (nuc.extent + 3 * aa) ** 2
    if near.any():
        un, vn = f.u[near], f.v[near]
        dist = np.hypot(un[:, None] - pts[None, :, 0], vn[:, None] - pts[None, :, 1]) - widths[None, :]
        nearest = dist.argmin(1)
        d_nuc[near] = dist[np.arange(nearest.size), nearest]
        local_width[near] = widths[nearest] / widths.max()
    if p.nuc_irregularity > 0:
        d_nuc += p.nuc_irregularity * f.radius * local_width * _smooth_noise(rng, shape, 1.0 / f.mpp)
    return d_nuc


def _chromatin(
    p: CellParams, f: _CellFrame, nuc: _Nucleus, d_nuc: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Chromatin density (fine/open to coarse/clumped, darker along the membrane) and nucleoli."""
    c = p.chromatin_coarseness
    fine = _smooth_noise(rng, f.shape, 0.3 / f.mpp)
    coarse = _smooth_noise(rng, f.shape, 0.75 / f.mpp)
    tex = (1 - c) * fine + c * coarse
    tex = np.tanh(tex * (0.8 + 2.0 * c))
    rim = np.exp(-np.clip(-d_nuc, 0, None) / 0.4)
    chromatin = p.chromatin_density * (1 + p.chromatin_contrast * tex + 0.15 * rim)
    nucleoli = np.zeros(f.shape, np.float32)
    if p.nucleoli > 0.02:
        chromatin, nucleoli = _nucleoli(p, f, nuc, chromatin, nucleoli, rng)
    return chromatin, nucleoli


def _nucleoli(
    p: CellParams,
    f: _CellFrame,
    nuc: _Nucleus,
    chromatin: np.ndarray,
    nucleoli: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pale nucleoli with a dark rim in the thick parts of the nucleus: (chromatin, nucleoli)."""
    pts, widths = nuc.pts, nuc.widths
    visibility = min(1.0, p.nucleoli)
    n_nucleoli = int(rng.binomial(3, min(1.0, p.nucleoli * 0.6))) + int(p.nucleoli > 0.5)
    core = np.flatnonzero(widths > 0.5 * widths.max())
    for _ in range(n_nucleoli):
        k = int(rng.choice(core))
        nr = rng.uniform(0.55, 1.0) * min(1.1, 0.35 * float(widths[k]))
        nu, nv = pts[k] + rng.normal(0, 0.35 * float(widths[k]), size=2)
        dn = np.hypot(f.u - nu, f.v - nv) - nr
        spot = _soft(dn, max(f.mpp, 0.25)) * visibility
        chromatin = chromatin * (1 - 0.6 * spot) + 0.12 * visibility * np.exp(-((dn / 0.2) ** 2))
        nucleoli = np.maximum(nucleoli, spot)
    return chromatin, nucleoli


def _cytoplasm_shade(
    p: CellParams, f: _CellFrame, nuc: _Nucleus, d_nuc: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The cytoplasm's staining factor: texture, membrane, Golgi zone, perinuclear halo, vacuoles."""
    u, v, radius, extent_n = f.u, f.v, f.radius, nuc.extent
    shade = (
        1
        + 0.08 * _smooth_noise(rng, f.shape, 0.6 / f.mpp)
        + 0.1 * np.exp(-np.clip(-f.d_body, 0, None) / 0.35)
    )
    if p.hof > 0.02:
        off, offset = nuc.off, nuc.offset
        toward = (
            -offset / max(off, 1e-6) if off > 1e-3 else np.array([math.cos(nuc.beta), math.sin(nuc.beta)])
        )
        hx, hy = offset + toward * (extent_n + 0.15 * radius)
        blob = np.exp(-((u - hx) ** 2 + (v - hy) ** 2) / (2 * (0.22 * radius) ** 2))
        shade = shade * (1 - min(p.hof, 1.0) * 0.75 * blob)
    if p.halo > 0.02:
        shade = shade * (1 - min(p.halo, 1.0) * 0.6 * np.exp(-np.clip(d_nuc, 0, None) / 0.6))
    n_vac = int(rng.poisson(p.vacuoles)) if p.vacuoles > 0 else 0
    for _ in range(n_vac):
        vr = rng.uniform(0.35, 1.0)
        a = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(extent_n * 0.6, radius - vr - 0.3)
        vx, vy = math.cos(a) * dist, math.sin(a) * dist
        dv = np.hypot(u - vx, v - vy) - vr
        shade = shade * (1 - 0.85 * _soft(dv, max(f.mpp, 0.2)))
    return shade


def _add_granules(
    od: np.ndarray, p: CellParams, stain: Stain, f: _CellFrame, cyto: np.ndarray, rng: np.random.Generator
) -> None:
    """Add the granules to ``od`` (in place): points spread over the cell, smoothed to their size."""
    radius, terms, stretch, mpp = f.radius, f.terms, f.stretch, f.mpp
    area = math.pi * radius * radius
    for count_per_um2, colour, sigma_um, peak, over_nucleus in (
        (p.azurophil, stain.azurophil, 0.2, 0.75, True),
        (p.specific, stain.specific, 0.12, 0.55, False),
        (p.eosinophil_granules, stain.eosinophil, 0.27, 0.8, False),
        (p.basophil_granules, stain.basophil, 0.25, 0.9, True),
    ):
        n = int(rng.poisson(count_per_um2 * area)) if count_per_um2 > 0 else 0
        if n == 0:
            continue
        rr = radius * 0.97 * np.sqrt(rng.random(n))
        aa_ = rng.uniform(0, 2 * math.pi, n)
        gu, gv = rr * np.cos(aa_) * _radius(aa_, 1.0, terms), rr * np.sin(aa_) * _radius(aa_, 1.0, terms)
        gu, gv = gu * stretch, gv / stretch  # back from the cell frame to the image frame
        gx = gu * f.ct - gv * f.st
        gy = gu * f.st + gv * f.ct
        cols = (gx - f.xs[0, 0]) / mpp + 0.5
        rows = (gy - f.ys[0, 0]) / mpp + 0.5
        size = sigma_um * rng.uniform(0.7, 1.4, n)
        weights = peak * (size / sigma_um) ** 2
        dens = _splat(f.shape, rows, cols, weights.astype(np.float32), sigma_um / mpp)
        mask = f.body if over_nucleus else cyto
        od += (dens * mask)[..., None] * colour


def _outline_polygon(f: _CellFrame) -> np.ndarray:
    """The cell's outline as a polygon of 32 points in the image frame (um from the centre)."""
    angles = np.linspace(0, 2 * math.pi, 33)[:-1]
    rad = _radius(angles, f.radius, f.terms)
    pu, pv = rad * np.cos(angles) * f.stretch, rad * np.sin(angles) / f.stretch
    return np.stack([pu * f.ct - pv * f.st, pu * f.st + pv * f.ct], axis=1)


# -- red cells and platelets ------------------------------------------------------------------


def render_red_cell(stain: Stain, rng: np.random.Generator, mpp: float, cx: float, cy: float) -> Sprite:
    """A red cell: a pale disc with a darker rim and a central pallor."""
    radius = RED_CELL_RADIUS_UM * math.exp(rng.normal(0, 0.06))
    stretch = math.sqrt(rng.uniform(1.0, 1.15))
    crenated = rng.random() < 0.08
    y0, x0, xs, ys = _grid(cx, cy, radius * stretch * 1.15 + 0.6, mpp)
    theta = rng.uniform(0, 2 * math.pi)
    ct, st = math.cos(theta), math.sin(theta)
    u = (xs * ct + ys * st) / stretch
    v = (-xs * st + ys * ct) * stretch
    r = np.hypot(u, v)
    terms = _outline(rng, 0.015, range(2, 4))
    if crenated:
        terms.append((int(rng.integers(9, 14)), 0.035, rng.uniform(0, 2 * math.pi)))
    edge = _radius(np.arctan2(v, u), radius, terms)
    rho = r / edge
    pallor = rng.uniform(0.35, 0.7)
    density = (1 - pallor * np.exp(-((rho / 0.5) ** 4))) + 0.12 * np.exp(-(((rho - 0.86) / 0.12) ** 2))
    cover = _soft(r - edge, max(mpp, 0.3))
    strength = math.exp(rng.normal(0, 0.08))
    od = (cover * density * strength)[..., None] * stain.red_cell
    return Sprite(y0, x0, od.astype(np.float32))


def render_platelet(stain: Stain, rng: np.random.Generator, mpp: float, cx: float, cy: float) -> Sprite:
    """A platelet: a small irregular lilac body with a few purple granules."""
    radius = rng.uniform(0.7, 1.4)
    y0, x0, xs, ys = _grid(cx, cy, radius * 1.4 + 0.5, mpp)
    r = np.hypot(xs, ys)
    edge = _radius(np.arctan2(ys, xs), radius, _outline(rng, 0.15, range(2, 5)))
    cover = _soft(r - edge, max(mpp, 0.2))
    shape = cover.shape
    grain = np.clip(_smooth_noise(rng, shape, 0.25 / mpp), 0, None)
    od = cover[..., None] * (0.35 * stain.basophilic + 0.45 * grain[..., None] * stain.azurophil)
    return Sprite(y0, x0, od.astype(np.float32))


# -- patches ----------------------------------------------------------------------------------


def scatter_red_cells(
    rng: np.random.Generator, width_um: float, height_um: float, density: float, margin_um: float = 4.0
) -> np.ndarray:
    """Red-cell centres (um, shape (n, 2) as x, y) over a region extended by ``margin_um``.

    ``density`` is red cells per 100 um^2. Dart throwing with a minimum spacing keeps overlaps to
    the mild ones of a well-spread smear.
    """
    w, h = width_um + 2 * margin_um, height_um + 2 * margin_um
    n = int(rng.poisson(density * w * h / 100.0))
    cand = rng.random((max(n * 2, 1), 2)) * [w, h] - margin_um
    min_d2 = (1.7 * RED_CELL_RADIUS_UM) ** 2
    kept = np.empty((n, 2))
    k = 0
    for pt in cand:
        if k >= n:
            break
        if k and (((kept[:k] - pt) ** 2).sum(1) < min_d2).any():
            continue
        kept[k] = pt
        k += 1
    return kept[:k]


NeighbourSampler = Callable[[np.random.Generator], tuple[str, "str | None", float]]


def render_patch(
    cls: str,
    lineage: str | None,
    maturity: float,
    size: int,
    stain: Stain,
    rng: np.random.Generator,
    neighbours: NeighbourSampler | None = None,
) -> np.ndarray:
    """One ``size`` x ``size`` RGB patch (uint8) with the given cell near its centre.

    ``neighbours`` draws ``(class, lineage, maturity)`` for cells that may show as fragments at the
    patch border; ``None`` for a patch without neighbours.
    """
    mpp = FIELD_UM / size
    canvas = Canvas(size, size)
    jitter = np.clip(rng.normal(0, 1.0, size=2), -2.5, 2.5) / mpp
    cx, cy = size / 2 + jitter[0], size / 2 + jitter[1]
    params = cell_params(cls, lineage, maturity, rng)
    canvas.add_cell(render_cell(params, stain, rng, mpp, cx, cy))

    if neighbours is not None:
        for _ in range(int(rng.choice(3, p=(0.6, 0.3, 0.1)))):
            nb_params = cell_params(*neighbours(rng), rng)
            a = rng.uniform(0, 2 * math.pi)
            dist = (params.diameter + nb_params.diameter) / 2 + rng.uniform(0.5, 6.0)
            dist = max(dist, FIELD_UM / 2 - nb_params.diameter * 0.25)
            nx, ny = cx + math.cos(a) * dist / mpp, cy + math.sin(a) * dist / mpp
            canvas.add_cell(render_cell(nb_params, stain, rng, mpp, nx, ny))

    for x, y in scatter_red_cells(rng, FIELD_UM, FIELD_UM, stain.red_cell_density):
        canvas.add_red(render_red_cell(stain, rng, mpp, x / mpp, y / mpp))
    for _ in range(int(rng.poisson(0.5))):
        px, py = rng.uniform(0, size, 2)
        canvas.add_red(render_platelet(stain, rng, mpp, px, py))
    return od_to_rgb(canvas.od(stain), stain, rng, mpp, blur_scale=math.exp(rng.normal(0, 0.2)))

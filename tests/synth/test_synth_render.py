"""Drawing: cell parameters from maturity, physical scale, patches."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from smr.core.lineages import PAPER_SPEC
from smr.synth.morphology import LINEAGE_ANCHORS, OTHER_PARAMS, CellParams, cell_params, mean_params
from smr.synth.population import cell_rng
from smr.synth.render import FIELD_UM, Canvas, od_to_rgb, render_cell, render_patch
from smr.synth.stain import reference_stain, sample_stain


def test_morphology_covers_the_paper_classes():
    assert set(LINEAGE_ANCHORS) == set(PAPER_SPEC.lineage_names)
    assert set(OTHER_PARAMS) == set(PAPER_SPEC.other)
    for lin in PAPER_SPEC.lineages:
        for name, anchors in LINEAGE_ANCHORS[lin.name].items():
            assert len(anchors) == len(lin.classes), (lin.name, name)


@pytest.mark.parametrize("lineage", sorted(LINEAGE_ANCHORS))
def test_parameters_change_continuously_with_maturity(lineage):
    """No jumps anywhere, in particular not at stage boundaries: neighbouring stages blend."""
    numeric = [f.name for f in fields(CellParams) if f.name != "nuc_lobes"]
    grid = np.linspace(0, 1, 401)
    values = np.array([[getattr(mean_params("x", lineage, m), k) for k in numeric] for m in grid])
    span = values.max(0) - values.min(0) + 1e-9
    steps = np.abs(np.diff(values, axis=0)) / span
    assert steps.max() < 0.03  # 1/400 of maturity never moves a parameter by 3 % of its range


def test_stage_trends_a_hematologist_expects():
    g = [mean_params("x", "granulopoiesis", (k + 0.5) / 6) for k in range(6)]
    e = [mean_params("x", "erythropoiesis", (k + 0.5) / 4) for k in range(4)]
    assert max(g, key=lambda p: p.diameter) is g[1]  # promyelocyte is the largest
    assert g[0].nucleoli > 0.5 and g[-1].nucleoli == 0  # blasts have nucleoli
    assert g[1].azurophil == max(p.azurophil for p in g)  # promyelocytes carry the azurophil granules
    assert g[-1].nuc_constriction > 0.5 > g[3].nuc_constriction  # segmented lobes, not metamyelocytes
    assert all(a.diameter > b.diameter for a, b in zip(e, e[1:], strict=False))  # erythroblasts shrink
    assert all(a.cyto_blue > b.cyto_blue for a, b in zip(e, e[1:], strict=False))  # and lose basophilia
    assert all(a.cyto_pink < b.cyto_pink for a, b in zip(e, e[1:], strict=False))  # while gaining hemoglobin


def test_cell_params_validate_their_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no morphology for class 'neutrophil'"):
        cell_params("neutrophil", None, math.nan, rng)
    with pytest.raises(ValueError, match="known: granulopoiesis, erythropoiesis"):
        cell_params("x", "lymphopoiesis", 0.5, rng)
    with pytest.raises(ValueError, match=r"maturity must lie in \[0, 1\]"):
        cell_params("x", "granulopoiesis", 1.5, rng)


def _nucleus_area_um2(rgb: np.ndarray, mpp: float) -> float:
    return float((rgb.astype(int).sum(-1) < 330).sum()) * mpp * mpp


def test_cells_keep_their_physical_size_at_any_pixel_size():
    """The same cell drawn at 0.2 and 0.6 um/px covers the same area in um^2 (the slide/patch contract)."""
    stain = reference_stain()
    for cls, lineage, m in [("myelocyte", "granulopoiesis", 0.4), ("lymphocyte", None, math.nan)]:
        areas = []
        for mpp in (0.2, 0.6):
            params = cell_params(cls, lineage, m, cell_rng(0, 9, 1))
            size = int(FIELD_UM / mpp)
            canvas = Canvas(size, size)
            canvas.add_cell(render_cell(params, stain, cell_rng(0, 9, 2), mpp, size / 2, size / 2))
            rgb = od_to_rgb(canvas.od(stain), stain, np.random.default_rng(0), mpp)
            areas.append(_nucleus_area_um2(rgb, mpp))
        assert areas[0] > 5
        assert abs(areas[0] - areas[1]) / areas[0] < 0.15, (cls, areas)


def test_patch_has_its_cell_in_the_centre():
    stain = sample_stain(np.random.default_rng(1))
    for k, cls in enumerate(PAPER_SPEC.classes):
        where = PAPER_SPEC.stage_of(cls)
        lineage = PAPER_SPEC.lineages[where[0]].name if where else None
        m = (where[1] + 0.5) / len(PAPER_SPEC.lineages[where[0]].classes) if where else math.nan
        rgb = render_patch(cls, lineage, m, 64, stain, cell_rng(4, 1, k))
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        dark = rgb.astype(int).sum(-1) < 360
        assert dark.sum() > 10, cls
        ys, xs = np.nonzero(dark)
        assert np.hypot(ys.mean() - 31.5, xs.mean() - 31.5) < 64 * 0.15, cls


def test_drawn_erythroblast_nuclei_shrink_with_maturity():
    """Measured on the pictures, not the parameters: proerythroblasts show far more nucleus."""
    stain = reference_stain()

    def mean_dark_fraction(cls, lineage, m, n=12):
        fr = []
        for i in range(n):
            rgb = render_patch(cls, lineage, m, 64, stain, cell_rng(8, 1, i))
            fr.append(np.mean(rgb.astype(int).sum(-1) < 330))
        return np.mean(fr)

    pro = mean_dark_fraction("proerythroblast", "erythropoiesis", 0.12)
    ortho = mean_dark_fraction("orthochromatic_erythroblast", "erythropoiesis", 0.88)
    assert pro > 2 * ortho

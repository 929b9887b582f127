"""Stage estimates and borderline flags, checked against a plain loop over the boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from smr.clients.results import BatchOutputs, cells_from_outputs
from tests.clients.helpers import paper_info


def _random_outputs(info, n, rng):
    logits = rng.normal(size=(n, len(info.classes)))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    maturity = rng.uniform(0, 1, size=(n, len(info.lineages))).astype(np.float32)
    distance = rng.uniform(0, 3, size=(n, len(info.lineages))).astype(np.float32)
    return BatchOutputs(probs, probs.argmax(1).astype(np.int32), maturity, distance)


@pytest.mark.parametrize("margin", [0.0, 0.03, 0.2])
def test_stage_estimate_and_borderline_match_a_plain_loop(margin):
    info = paper_info()
    rng = np.random.default_rng(7)
    out = _random_outputs(info, 400, rng)
    cells = cells_from_outputs(info, out, margin=margin)
    assert len(cells) == 400
    n_border = 0
    for i, cell in enumerate(cells):
        name = info.classes[int(out.class_id[i])]
        assert cell.class_name == name
        assert cell.probability == pytest.approx(float(out.probabilities[i, out.class_id[i]]))
        assert list(cell.probabilities) == list(info.classes)
        expected_border = False
        for j, lin in enumerate(info.lineages):
            t = float(out.maturity[i, j])
            stage = 0
            for b in lin.boundaries:  # count the boundaries at or below t
                if t >= b:
                    stage += 1
            near = any(abs(t - b) < margin for b in lin.boundaries)
            pos = cell.lineages[j]
            assert pos.lineage == lin.name
            assert pos.stage == lin.classes[stage]
            assert pos.near_boundary == near
            assert pos.position == pytest.approx(t) and pos.distance == pytest.approx(
                float(out.distance[i, j])
            )
            if name in lin.classes:
                assert cell.lineage == lin.name and cell.stage_estimate == lin.classes[stage]
                assert cell.position == pytest.approx(t)
                expected_border = near or lin.classes[stage] != name
        if cell.lineage is None:
            assert cell.position is None and cell.stage_estimate is None
        assert cell.borderline == expected_border
        assert bool(cell.borderline_reason) == expected_border
        n_border += expected_border
    assert 0 < n_border < 400  # random outputs: some of each, or the test checks nothing


def test_a_cell_near_a_boundary_is_flagged_and_says_between_which_stages():
    info = paper_info()
    gran = info.lineages[0]
    b = gran.boundaries[2]  # between myelocyte and metamyelocyte
    probs = np.full((2, len(info.classes)), 0.01, np.float32)
    k = info.classes.index("myelocyte")
    probs[:, k] = 0.9
    maturity = np.array([[b - 0.01, 0.5], [gran.targets[2], 0.5]], np.float32)
    cells = cells_from_outputs(
        info, BatchOutputs(probs, np.array([k, k]), maturity, np.ones((2, 2), np.float32)), margin=0.03
    )
    assert cells[0].borderline and "between myelocyte and metamyelocyte" in cells[0].borderline_reason
    assert not cells[1].borderline and cells[1].stage_estimate == "myelocyte"


def test_negative_margin_is_refused():
    info = paper_info()
    out = _random_outputs(info, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="margin"):
        cells_from_outputs(info, out, margin=-0.1)

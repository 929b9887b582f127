"""Stage estimates, curve ends and the flags for review, checked against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from smr.clients.results import (
    BEFORE_START,
    BEYOND_END,
    STAGE_GAP,
    BatchOutputs,
    cells_from_outputs,
    curve_end,
)
from tests.clients.helpers import paper_info


def _random_outputs(info, n, rng):
    logits = rng.normal(size=(n, len(info.classes))) * 1.5
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    maturity = rng.uniform(0, 1, size=(n, len(info.lineages))).astype(np.float32)
    maturity[:20] = 0.0  # clamped onto the ends by the server
    maturity[20:40] = 1.0
    distance = rng.uniform(0, 3, size=(n, len(info.lineages))).astype(np.float32)
    return BatchOutputs(probs, probs.argmax(1).astype(np.int32), maturity, distance)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.3])
def test_stage_estimate_and_review_flags_match_a_plain_loop(margin):
    info = paper_info()
    rng = np.random.default_rng(7)
    out = _random_outputs(info, 400, rng)
    cells = cells_from_outputs(info, out, margin=margin)
    assert len(cells) == 400
    n_unsure = n_curve = 0
    for i, cell in enumerate(cells):
        name = info.classes[int(out.class_id[i])]
        ranked = sorted(range(len(info.classes)), key=lambda k: -float(out.probabilities[i, k]))
        assert cell.class_name == name == info.classes[ranked[0]]
        assert cell.runner_up == info.classes[ranked[1]]
        top, second = float(out.probabilities[i, ranked[0]]), float(out.probabilities[i, ranked[1]])
        assert cell.probability == pytest.approx(top) and cell.margin == pytest.approx(top - second)
        assert list(cell.probabilities) == list(info.classes)
        unsure = top - second < margin
        contradicted = False
        for j, lin in enumerate(info.lineages):
            t = float(out.maturity[i, j])
            stage = 0
            for b in lin.boundaries:  # count the boundaries at or below t
                if t >= b:
                    stage += 1
            pos = cell.lineages[j]
            assert pos.lineage == lin.name and pos.stage == lin.classes[stage]
            assert pos.end == (BEFORE_START if t == 0.0 else BEYOND_END if t == 1.0 else "")
            assert pos.position == pytest.approx(t)
            assert pos.distance == pytest.approx(float(out.distance[i, j]))
            if name in lin.classes:
                assert cell.lineage == lin.name and cell.stage_estimate == lin.classes[stage]
                assert cell.position == pytest.approx(t) and cell.end == pos.end
                contradicted = abs(stage - lin.classes.index(name)) >= STAGE_GAP
        if cell.lineage is None:
            assert cell.position is None and cell.stage_estimate is None and cell.end == ""
        assert cell.borderline == (unsure or contradicted)
        assert ("SVM unsure" in cell.borderline_reason) == unsure
        assert ("curve says" in cell.borderline_reason) == contradicted
        n_unsure += unsure
        n_curve += contradicted
    assert n_curve > 0 and (margin == 0 or 0 < n_unsure < 400)  # some of each: the test checks something


def test_a_near_stage_does_not_flag_but_a_far_one_and_an_unsure_svm_do():
    info = paper_info()
    gran = info.lineages[0]
    k = info.classes.index("myelocyte")
    probs = np.full((4, len(info.classes)), 0.005, np.float32)
    probs[:, k] = 0.9
    probs[3, k], probs[3, info.classes.index("metamyelocyte")] = 0.45, 0.40  # unsure between two
    maturity = np.array(
        [[gran.targets[2], 0.5], [gran.targets[4], 0.5], [gran.targets[5], 0.5], [gran.targets[2], 0.5]],
        np.float32,
    )
    cells = cells_from_outputs(
        info, BatchOutputs(probs, np.full(4, k), maturity, np.ones((4, 2), np.float32)), margin=0.1
    )
    assert [c.stage_estimate for c in cells] == ["myelocyte", "band", "segmented", "myelocyte"]
    assert STAGE_GAP == 3  # two stages apart (band) is not flagged, three (segmented) is
    assert [c.borderline for c in cells] == [False, False, True, True]
    assert cells[2].borderline_reason == "curve says segmented"
    assert cells[3].borderline_reason == "SVM unsure: myelocyte 0.45 vs metamyelocyte 0.40"


def test_curve_end_marks_clamped_positions_only():
    assert curve_end(0.0) == BEFORE_START and curve_end(1.0) == BEYOND_END
    assert curve_end(float(np.float32(1.0))) == BEYOND_END
    assert curve_end(0.001) == curve_end(0.999) == curve_end(0.5) == "" and curve_end(None) == ""


@pytest.mark.parametrize("margin", [-0.1, 1.5])
def test_a_margin_outside_0_1_is_refused(margin):
    info = paper_info()
    out = _random_outputs(info, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="margin"):
        cells_from_outputs(info, out, margin=margin)

"""The review rule of smr.core.review: stages per lineage, the SVM margin and the curve's stage gap."""

from __future__ import annotations

import numpy as np
import pytest

from smr.core.review import (
    CURVE_DISAGREES,
    DEFAULT_REVIEW_MARGIN,
    STAGE_GAP,
    SVM_UNSURE,
    check_margin,
    choose_margin,
    class_stages,
    review,
    runner_up,
    stages,
)
from smr.core.targets import stage_boundaries, stage_from_position, uniform_targets

CLASSES = ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "other"]
LINEAGES = [["a0", "a1", "a2", "a3", "a4"], ["b0", "b1"]]
BOUNDARIES = [stage_boundaries(uniform_targets(len(stages))) for stages in LINEAGES]  # a: 0.125, 0.375 ...
CLASS_STAGE = class_stages(CLASSES, LINEAGES)


def one_hot(class_ids: list[int], p: float = 0.9) -> np.ndarray:
    """Probabilities with ``p`` on each row's class and the rest spread evenly."""
    out = np.full((len(class_ids), len(CLASSES)), (1 - p) / (len(CLASSES) - 1), dtype=np.float32)
    out[np.arange(len(class_ids)), class_ids] = p
    return out


def old_client_rule(probs, class_id, maturity, margin):
    """The rule as smr.clients.results wrote it before smr.core.review, cell by cell."""
    stage = np.stack(
        [stage_from_position(maturity[:, j].astype(np.float64), b) for j, b in enumerate(BOUNDARIES)], axis=1
    )
    flags = []
    for i, cid in enumerate(class_id):
        others = probs[i].copy()
        others[cid] = -np.inf
        gap = float(probs[i, cid]) - float(others.max())
        bits = SVM_UNSURE if gap < margin else 0
        own = next((j for j, s in enumerate(LINEAGES) if CLASSES[cid] in s), None)
        if own is not None and abs(int(stage[i, own]) - LINEAGES[own].index(CLASSES[cid])) >= STAGE_GAP:
            bits |= CURVE_DISAGREES
        flags.append(bits)
    return stage, np.array(flags, dtype=np.uint8)


def test_class_stages_name_each_class_lineage_and_stage():
    np.testing.assert_array_equal(
        CLASS_STAGE, [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0], [1, 1], [-1, -1]]
    )
    with pytest.raises(ValueError, match="'zz' is not one of the classes"):
        class_stages(CLASSES, [["a0", "zz"]])


def test_stages_read_each_lineage_by_its_boundaries():
    maturity = np.array([[0.0, 0.0], [0.125, 0.49], [0.6, 0.5], [1.0, 1.0]], dtype=np.float32)
    got = stages(maturity, BOUNDARIES)
    assert got.dtype == np.int32 and got.shape == (4, 2)
    np.testing.assert_array_equal(got, [[0, 0], [1, 0], [2, 1], [4, 1]])  # a boundary: the more mature
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        stages(maturity[:, :1], BOUNDARIES)


def test_runner_up_and_gap_in_float64_of_the_served_values():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45]], dtype=np.float32)
    runner, gap = runner_up(probs, np.array([0, 1]))
    np.testing.assert_array_equal(runner, [1, 2])
    assert gap[0] == float(np.float32(0.5)) - float(np.float32(0.3)) and gap[1] == 0.0
    single_runner, single_gap = runner_up(np.ones((2, 1), np.float32), np.zeros(2, np.int64))
    np.testing.assert_array_equal(single_runner, [0, 0])
    np.testing.assert_array_equal(single_gap, [1.0, 1.0])  # the class against nothing


def test_an_unsure_svm_is_flagged_below_the_margin_only():
    probs = one_hot([0, 0, 0])
    probs[0, [0, 1]] = 0.50, 0.46  # gap 0.04 < 0.05
    probs[1, [0, 1]] = 0.625, 0.375  # gap 0.25
    probs[2, [0, 1]] = 0.5, 0.25  # gap 0.25, but margin 0.25: not below
    maturity = np.zeros((3, 2), np.float32)
    result = review(probs, [0, 0, 0], maturity, BOUNDARIES, CLASS_STAGE, 0.05)
    np.testing.assert_array_equal(result.flags, [SVM_UNSURE, 0, 0])
    assert review(probs[2:], [0], maturity[2:], BOUNDARIES, CLASS_STAGE, 0.25).flags[0] == 0
    assert CLASSES[result.runner_up[0]] == "a1"


@pytest.mark.parametrize(("t", "flagged"), [(0.4, False), (0.6, False), (0.7, True), (1.0, True)])
def test_the_curve_is_flagged_three_stages_from_the_class(t, flagged):
    """Class a0 (stage 0 of five): stage 2 (t 0.4, 0.6) is two stages off, stage 3 (t 0.7) three."""
    result = review(one_hot([0]), [0], np.array([[t, 0.0]], np.float32), BOUNDARIES, CLASS_STAGE)
    assert result.flags[0] == (CURVE_DISAGREES if flagged else 0)


def test_classes_without_a_lineage_are_never_flagged_by_a_curve():
    maturity = np.array([[1.0, 1.0]], np.float32)
    assert review(one_hot([7]), [7], maturity, BOUNDARIES, CLASS_STAGE).flags[0] == 0


def test_both_reasons_set_both_bits_and_a_served_stage_is_used_as_it_is():
    probs = one_hot([4], p=0.3)
    probs[0, 3] = 0.29
    maturity = np.array([[0.0, 0.0]], np.float32)
    result = review(probs, [[4]], maturity, BOUNDARIES, CLASS_STAGE)
    assert result.flags[0] == SVM_UNSURE | CURVE_DISAGREES
    served = review(probs, [4], maturity, BOUNDARIES, CLASS_STAGE, stage=[[4, 0]])
    assert served.flags[0] == SVM_UNSURE and served.stage.tolist() == [[4, 0]]


def test_it_is_the_rule_the_client_applied_before():
    rng = np.random.default_rng(0)
    n = 400
    logits = rng.normal(size=(n, len(CLASSES))) * rng.uniform(0.1, 4, size=(n, 1))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    class_id = probs.argmax(axis=1)
    maturity = rng.uniform(0, 1, size=(n, 2)).astype(np.float32)
    result = review(probs, class_id, maturity, BOUNDARIES, CLASS_STAGE, DEFAULT_REVIEW_MARGIN)
    stage, flags = old_client_rule(probs, class_id, maturity, DEFAULT_REVIEW_MARGIN)
    np.testing.assert_array_equal(result.stage, stage)
    np.testing.assert_array_equal(result.flags, flags)
    assert {0, SVM_UNSURE, CURVE_DISAGREES} <= set(flags.tolist())  # every case occurs


def test_bad_margins_and_class_ids_are_refused():
    assert check_margin(0) == 0.0 and check_margin(1) == 1.0
    for margin in (-0.01, 1.5, float("nan")):
        with pytest.raises(ValueError, match="margin must lie in"):
            check_margin(margin)
    with pytest.raises(ValueError, match="class ids outside 0..7"):
        review(one_hot([0]), [8], np.zeros((1, 2)), BOUNDARIES, CLASS_STAGE)
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        review(np.zeros((1, 3)), [0], np.zeros((1, 2)), BOUNDARIES, CLASS_STAGE)


def test_an_empty_batch_has_empty_results():
    result = review(np.zeros((0, 8), np.float32), [], np.zeros((0, 2), np.float32), BOUNDARIES, CLASS_STAGE)
    assert result.stage.shape == (0, 2) and result.flags.shape == (0,)


def _flag_figures(p: np.ndarray, labels: np.ndarray, margin: float) -> tuple[int, int]:
    """(cells flagged, misclassified cells among them) at ``margin``: a plain loop over the cells."""
    flagged = found = 0
    for row, label in zip(p, labels, strict=True):
        top = sorted(row, reverse=True)
        if top[0] - top[1] < margin:
            flagged += 1
            found += int(np.argmax(row) != label)
    return flagged, found


@pytest.mark.parametrize(
    "seed, concentration, informative",
    [(0, 0.5, False), (1, 2.0, False), (2, 0.5, True), (3, 2.0, True), (4, 0.2, True)],
)
def test_choose_margin_is_the_smallest_that_finds_half_the_errors_within_a_fifth(
    seed, concentration, informative
):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(5, concentration), size=300)
    top2 = np.sort(p, axis=1)[:, -2:]
    # errors at random (the fifth caps the flags), or mostly among the least sure (half is reachable)
    unsure = top2[:, 1] - top2[:, 0] < np.quantile(top2[:, 1] - top2[:, 0], 0.15)
    wrong = rng.random(300) < (np.where(unsure, 0.8, 0.04) if informative else 0.25)
    labels = np.where(wrong, (p.argmax(axis=1) + rng.integers(1, 5, 300)) % 5, p.argmax(axis=1))
    errors = int((p.argmax(axis=1) != labels).sum())
    margin = choose_margin(p, labels)
    flagged, found = _flag_figures(p, labels, margin)
    # the brute-force reference: every cell's own gap as a candidate margin, smallest first
    gaps = sorted({float(np.sort(row)[-1] - np.sort(row)[-2]) for row in p})
    candidates = [g for g in gaps if _flag_figures(p, labels, np.nextafter(g, 2))[0] <= 60]  # <= 20 %
    enough = [g for g in candidates if 2 * _flag_figures(p, labels, np.nextafter(g, 2))[1] >= errors]
    assert flagged <= 60
    assert bool(enough) == informative
    if enough:  # the rule's target is reachable: the fewest flags that reach it
        best = _flag_figures(p, labels, np.nextafter(enough[0], 2))
        assert 2 * found >= errors and flagged == best[0] < 60
    else:  # not reachable: as many flags as the fifth allows
        assert flagged == _flag_figures(p, labels, np.nextafter(candidates[-1], 2))[0]
    assert 0.0 <= margin <= 1.0


def test_choose_margin_edges():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    assert choose_margin(p, np.array([0, 0, 0, 1])) == 0.0  # nothing misclassified
    assert choose_margin(p, np.array([0, 0, 1, 1]), max_flagged=0.0) == 0.0  # nothing may be flagged
    # one error (the 0.55/0.45 cell, gap 0.1, the least sure): flag it alone, halfway to the next gap
    margin = choose_margin(p, np.array([0, 0, 1, 1]), max_flagged=0.5)
    assert margin == pytest.approx(0.15) and _flag_figures(p, np.array([0, 0, 1, 1]), margin) == (1, 1)
    with pytest.raises(ValueError, match="disagree"):
        choose_margin(p, np.array([0, 1]))

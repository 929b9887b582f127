"""Differential count, M:E ratio, blasts, maturation indices and their intervals against plain counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from smr.clients.summary import (
    LOW_COUNT,
    CountDefinitions,
    differential_count,
    format_count,
    proportion_interval,
    ratio_interval,
    review_yield,
)
from smr.core.lineages import Lineage, LineageSpec
from tests.clients.helpers import paper_info


def test_counts_and_ratios_match_plain_counting():
    info = paper_info()
    rng = np.random.default_rng(4)
    classes = list(rng.choice(info.classes, size=733))
    positions = [float(rng.uniform()) if info.lineage_of(c) is not None else None for c in classes]
    border = list(rng.uniform(size=733) < 0.1)
    dc = differential_count(info, classes, positions=positions, borderline=border)

    assert dc.total == 733 and not dc.low_count
    for c in info.classes:
        n = sum(1 for k in classes if k == c)
        assert dc.counts[c] == n and dc.percentages[c] == pytest.approx(100 * n / 733)
    gran = ["blast", "promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented"]
    ery = [
        "proerythroblast",
        "basophilic_erythroblast",
        "polychromatic_erythroblast",
        "orthochromatic_erythroblast",
    ]
    myeloid = sum(1 for k in classes if k in gran + ["eosinophil", "basophil"])
    erythroid = sum(1 for k in classes if k in ery)
    assert (dc.myeloid, dc.erythroid) == (myeloid, erythroid)
    assert dc.me_ratio == pytest.approx(myeloid / erythroid)
    assert dc.blast_percentage == pytest.approx(100 * classes.count("blast") / 733)
    assert dc.borderline == sum(border)

    for lin, stages, half in (("granulopoiesis", gran, 3), ("erythropoiesis", ery, 2)):
        m = dc.maturation[lin]
        members = [i for i, k in enumerate(classes) if k in stages]
        immature = [i for i in members if classes[i] in stages[:half]]
        assert m.cells == len(members) and m.immature_classes == tuple(stages[:half])
        assert m.immature_by_class == pytest.approx(len(immature) / len(members))
        assert m.mature_by_class == pytest.approx(1 - len(immature) / len(members))
        split = info.lineages[info.lineage_names.index(lin)].boundaries[half - 1]
        below = [i for i in members if positions[i] < split]
        assert m.immature_by_curve == pytest.approx(len(below) / len(members))
        assert m.median_position == pytest.approx(float(np.median([positions[i] for i in members])))


def test_labels_only_few_cells_and_no_erythroid_cells():
    info = paper_info()
    dc = differential_count(info, ["blast", "band", "lymphocyte"])
    assert dc.low_count and dc.total < LOW_COUNT
    assert dc.me_ratio is None and dc.erythroid == 0
    assert dc.maturation["granulopoiesis"].immature_by_curve is None
    assert dc.maturation["erythropoiesis"].immature_by_class is None
    with pytest.raises(ValueError, match="not served"):
        differential_count(info, ["blast", "neutrophil"])


def test_definitions_follow_other_class_sets():
    spec = LineageSpec(
        lineages=(
            Lineage("granulopoiesis", ("BLA", "PMO", "MYB", "MMZ", "NGB", "NGS")),
            Lineage("erythropoiesis", ("PEB", "EBO")),
        ),
        other=("LYT", "MON", "EOS", "BAS"),
    )
    info = paper_info(spec=spec)
    defs = CountDefinitions.from_model(info)
    assert defs.blasts == ("BLA",)
    assert set(defs.erythroid) == {"PEB", "EBO"}
    assert set(defs.myeloid) == {"BLA", "PMO", "MYB", "MMZ", "NGB", "NGS"}  # EOS/BAS: abbreviations unknown
    dc = differential_count(info, ["BLA", "PEB", "EBO", "NGS"])
    assert dc.me_ratio == pytest.approx(1.0) and dc.blast_percentage == pytest.approx(25.0)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed term by term in log space (no scipy)."""
    if k < 0:
        return 0.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]  # fmt: skip
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _bisect(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of an increasing ``f`` on [lo, hi]."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _exact_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper and Pearson's definition, solved by bisection on the binomial tails."""
    low = 0.0 if k == 0 else _bisect(lambda p: (1 - _binomial_cdf(k - 1, n, p)) - alpha / 2)
    high = 1.0 if k == n else _bisect(lambda p: alpha / 2 - _binomial_cdf(k, n, p))
    return low, high


@pytest.mark.parametrize("k", [0, 1, 6, 250, 499, 500])
def test_intervals_are_clopper_pearson_at_known_values(k):
    n = 500
    low, high = proportion_interval(k, n)
    ref_low, ref_high = _exact_interval(k, n)
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-7)
    scipy_ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-9)
    assert low <= k / n <= high


def test_intervals_at_the_textbook_values():
    # 0 of n: the upper bound solves (1 - p)^n = alpha/2 (the "rule of three", exactly)
    assert proportion_interval(0, 500) == pytest.approx((0.0, 1 - 0.025 ** (1 / 500)))
    assert proportion_interval(500, 500) == pytest.approx((0.025 ** (1 / 500), 1.0))
    # 6 of 500 (1.2 % blasts): 0.44 % - 2.59 % (the "compatible with 0.5-2.6 %")
    low, high = proportion_interval(6, 500)
    assert round(100 * low, 2) == 0.44 and round(100 * high, 2) == 2.59
    # 250 of 500: 45.53 % - 54.47 %, symmetric about a half
    low, high = proportion_interval(250, 500)
    assert round(100 * low, 2) == 45.53 and low + high == pytest.approx(1.0)
    assert proportion_interval(0, 0) is None
    with pytest.raises(ValueError):
        proportion_interval(3, 2)


def test_the_me_ratio_interval_maps_the_myeloid_share():
    for m, e in ((300, 100), (7, 0), (0, 9), (40, 40)):
        low_p, high_p = _exact_interval(m, m + e)
        low, high = ratio_interval(m, e)
        assert low == pytest.approx(low_p / (1 - low_p), abs=1e-6)
        if e == 0:
            assert high is None  # unbounded
        else:
            assert high == pytest.approx(high_p / (1 - high_p), rel=1e-6)
            assert low <= m / e <= high
    assert ratio_interval(0, 0) is None


def test_the_count_carries_an_interval_for_every_share():
    info = paper_info()
    rng = np.random.default_rng(5)
    classes = list(rng.choice(info.classes, size=500))
    ends = {0: 0.0, 1: 1.0, 2: 1.0}  # cells clamped onto the curve's ends
    positions = [ends.get(i, float(rng.uniform(0.01, 0.99))) if info.lineage_of(c) is not None else None
                 for i, c in enumerate(classes)]  # fmt: skip
    dc = differential_count(info, classes, positions=positions)
    for c in info.classes:
        low, high = _exact_interval(classes.count(c), 500)
        assert dc.intervals[c] == pytest.approx((100 * low, 100 * high), abs=1e-5)
    low, high = _exact_interval(dc.blasts, 500)
    assert dc.blast_interval == pytest.approx((100 * low, 100 * high), abs=1e-5)
    low, high = _exact_interval(dc.myeloid, dc.myeloid + dc.erythroid)
    assert dc.me_interval == pytest.approx((low / (1 - low), high / (1 - high)), rel=1e-5)
    assert dc.me_interval[0] <= dc.me_ratio <= dc.me_interval[1]
    for lin in info.lineages:
        m = dc.maturation[lin.name]
        members = [i for i, c in enumerate(classes) if c in lin.classes]
        imm = sum(1 for i in members if classes[i] in m.immature_classes)
        assert m.immature_by_class_interval == pytest.approx(_exact_interval(imm, len(members)), abs=1e-7)
        assert m.mature_by_class_interval == pytest.approx(
            (1 - m.immature_by_class_interval[1], 1 - m.immature_by_class_interval[0])
        )
        below = sum(1 for i in members if positions[i] < m.split_position)
        assert m.immature_by_curve_interval == pytest.approx(_exact_interval(below, len(members)), abs=1e-7)
        assert m.before_start == sum(1 for i in members if positions[i] == 0.0)
        assert m.beyond_end == sum(1 for i in members if positions[i] == 1.0)
    assert sum(m.before_start + m.beyond_end for m in dc.maturation.values()) == sum(
        1 for i in ends if info.lineage_of(classes[i]) is not None
    )
    doc = dc.to_dict()  # JSON-ready, intervals included
    assert doc["intervals"]["blast"] == list(dc.intervals["blast"]) and doc["interval_method"].startswith(
        "Clop"
    )


def test_the_text_table_lists_every_class_with_both_counts_and_intervals():
    info = paper_info()
    rng = np.random.default_rng(9)
    pred, ref = list(rng.choice(info.classes, 50)), list(rng.choice(info.classes, 50))
    text = format_count(differential_count(info, pred), differential_count(info, ref))
    for c in info.classes:
        (line,) = [ln for ln in text.splitlines() if ln.split()[0] == c]
        ci_p, ci_r = _exact_interval(pred.count(c), 50), _exact_interval(ref.count(c), 50)
        assert line.split()[1:] == [str(pred.count(c)), f"{100 * pred.count(c) / 50:.1f}",
                                    f"{100 * ci_p[0]:.1f}-{100 * ci_p[1]:.1f}",
                                    str(ref.count(c)), f"{100 * ref.count(c) / 50:.1f}",
                                    f"{100 * ci_r[0]:.1f}-{100 * ci_r[1]:.1f}"]  # fmt: skip
    m = sum(1 for k in pred if k in CountDefinitions.from_model(info).myeloid)
    e = sum(1 for k in pred if k in CountDefinitions.from_model(info).erythroid)
    low, high = _exact_interval(m, m + e)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("M:E ratio")]
    assert line.split()[2:4] == [f"{m / e:.2f}", f"{low / (1 - low):.2f}-{high / (1 - high):.2f}"]
    assert "Clopper-Pearson" in text and "granulopoiesis:" in text


def test_the_headline_and_the_slide_row_carry_the_intervals():
    from smr.clients.summary import count_row, headline

    info = paper_info()
    classes = ["blast"] * 6 + ["band"] * 300 + ["proerythroblast"] * 100 + ["lymphocyte"] * 94
    dc = differential_count(info, classes, borderline=[i % 10 == 0 for i in range(500)])
    low, high = _exact_interval(6, 500)
    m_low, m_high = _exact_interval(306, 406)
    row = count_row(dc)
    assert row["blast_pct"] == 1.2 and (row["blast_low"], row["blast_high"]) == (
        round(100 * low, 2), round(100 * high, 2))  # fmt: skip
    assert row["me_ratio"] == round(306 / 100, 3)
    assert (row["me_low"], row["me_high"]) == (round(m_low / (1 - m_low), 3), round(m_high / (1 - m_high), 3))
    text = headline(dc)
    assert text == (f"500 cells, M:E 3.06 ({m_low / (1 - m_low):.2f}-{m_high / (1 - m_high):.2f}), "
                    f"blasts 1.2 % ({100 * low:.1f}-{100 * high:.1f}), 50 flagged for review")  # fmt: skip
    no_e = count_row(differential_count(info, ["band"]))
    assert no_e["me_ratio"] == "" and no_e["me_high"] == ""  # no erythroid cells: no ratio, unbounded


def test_review_yield_counts_the_errors_among_the_flagged_cells():
    rng = np.random.default_rng(3)
    names = ["blast", "myelocyte", "band"]
    truth = rng.choice(names, 200).tolist()
    predicted = [t if rng.random() < 0.7 else rng.choice(names) for t in truth]
    flagged = (rng.random(200) < 0.2).tolist()
    y = review_yield(predicted, flagged, truth)
    # a plain loop as the reference
    wrong = flagged_wrong = n_flagged = 0
    for p, t, f in zip(predicted, truth, flagged, strict=True):
        n_flagged += f
        wrong += p != t
        flagged_wrong += (p != t) and f
    assert (y.cells, y.flagged, y.misclassified, y.misclassified_flagged) == (
        200,
        n_flagged,
        wrong,
        flagged_wrong,
    )
    assert y.errors_found == pytest.approx(flagged_wrong / wrong)
    assert y.flagged_share == pytest.approx(n_flagged / 200)
    assert f"{n_flagged} of 200 cells flagged" in y.line()
    assert review_yield(["a"], [False], ["a"]).errors_found is None
    with pytest.raises(ValueError, match="lengths differ"):
        review_yield(["a"], [True, False], ["a"])

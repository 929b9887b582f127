"""Differential count, M:E ratio, blasts and maturation indices against plain counting."""

from __future__ import annotations

import numpy as np
import pytest

from smr.clients.summary import LOW_COUNT, CountDefinitions, differential_count
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


def test_the_text_table_lists_every_class_with_both_counts():
    from smr.clients.summary import format_count

    info = paper_info()
    rng = np.random.default_rng(9)
    pred, ref = list(rng.choice(info.classes, 50)), list(rng.choice(info.classes, 50))
    text = format_count(differential_count(info, pred), differential_count(info, ref))
    for c in info.classes:
        (line,) = [ln for ln in text.splitlines() if ln.split()[0] == c]
        assert line.split()[1:] == [str(pred.count(c)), f"{100 * pred.count(c) / 50:.1f}",
                                    str(ref.count(c)), f"{100 * ref.count(c) / 50:.1f}"]  # fmt: skip

"""Lineage spec: parsing, validation errors, class order and round trips."""

from __future__ import annotations

import re
import textwrap

import pytest
import tomllib

from smr.core.lineages import PAPER_SPEC, Lineage, LineageSpec, SpecError, load_spec, parse_spec

GOOD = textwrap.dedent(
    """\
    # a comment
    [[lineage]]
    name = "granulopoiesis"
    classes = ["blast", "promyelocyte", "band"]

    [[lineage]]
    name = "erythropoiesis"
    classes = ["proerythroblast", "normoblast"]

    [other]
    classes = ["lymphocyte", "monocyte"]
    """
)


def _write(tmp_path, text: str):
    path = tmp_path / "lineages.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_good_spec_class_order(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    raw = tomllib.loads(GOOD)  # independent reading of the same file
    expected = [c for lin in raw["lineage"] for c in lin["classes"]] + raw["other"]["classes"]
    assert list(spec.classes) == expected
    assert [lin.name for lin in spec.lineages] == [lin["name"] for lin in raw["lineage"]]
    for i, name in enumerate(expected):
        assert spec.class_index(name) == i
    # stage_of and lineage_class_indices agree with a naive walk over the TOML
    flat = 0
    for li, lin in enumerate(raw["lineage"]):
        assert spec.lineage_class_indices()[li] == list(range(flat, flat + len(lin["classes"])))
        for si, c in enumerate(lin["classes"]):
            assert spec.stage_of(c) == (li, si)
        flat += len(lin["classes"])
    for c in raw["other"]["classes"]:
        assert spec.stage_of(c) is None


def test_pbc_dev_spec(pbc_dev):
    spec = load_spec(pbc_dev / "lineages.toml")
    folders = sorted(p.name for p in pbc_dev.iterdir() if p.is_dir())
    assert sorted(spec.classes) == folders
    assert len(spec.lineages) == 1 and len(spec.lineages[0].classes) == 5
    spec.check_folders(folders)


def test_paper_spec_matches_design():
    assert [lin.name for lin in PAPER_SPEC.lineages] == ["granulopoiesis", "erythropoiesis"]
    assert len(PAPER_SPEC.classes) == 15 and len(set(PAPER_SPEC.classes)) == 15
    assert PAPER_SPEC.lineages[0].classes[0] == "blast"
    assert PAPER_SPEC.lineages[0].classes[-1] == "segmented"
    assert PAPER_SPEC.lineages[1].classes[-1] == "orthochromatic_erythroblast"
    assert set(PAPER_SPEC.other) == {"basophil", "eosinophil", "lymphocyte", "promonocyte", "monocyte"}


@pytest.mark.parametrize("spec", [PAPER_SPEC, "good", "ignore", "unicode"])
def test_round_trips(spec, tmp_path):
    if spec == "good":
        spec = parse_spec(GOOD)
    elif spec == "ignore":
        spec = LineageSpec(PAPER_SPEC.lineages, PAPER_SPEC.other, ("ART", "NIF"))
    elif spec == "unicode":
        spec = LineageSpec((Lineage('gr"an', ("a b", "ä'c")),), ())
    text = spec.to_toml()
    assert parse_spec(text) == spec
    assert load_spec(_write(tmp_path, text)) == spec
    assert LineageSpec.from_dict(spec.to_dict()) == spec
    # to_dict is plain data that matches the TOML read by an independent parser
    raw = tomllib.loads(text)
    assert spec.to_dict()["lineages"] == raw["lineage"]
    assert spec.to_dict()["other"] == raw["other"]["classes"]


BAD_SPECS = {
    "duplicate within lineage": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b", "a"]\n',
        ["duplicate class 'a'", "twice in lineage 'g'", ":3"],
    ),
    "duplicate across lineages": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[[lineage]]\nname = "e"\nclasses = ["c", "b"]\n',
        ["duplicate class 'b'", "lineage 'g'", "lineage 'e'", ":6"],
    ),
    "duplicate lineage and other": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n\n[other]\nclasses = ["x", "a"]\n',
        ["duplicate class 'a'", "lineage 'g' and other", ":6"],
    ),
    "duplicate in other": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[other]\nclasses = ["x", "x"]\n',
        ["duplicate class 'x'", "twice in other"],
    ),
    "duplicate lineage name": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[[lineage]]\nname = "g"\nclasses = ["c", "d"]\n',
        ["duplicate lineage name 'g'", ":5"],
    ),
    "empty lineage": ('[[lineage]]\nname = "g"\nclasses = []\n', ["lineage 'g' has no classes"]),
    "one-class lineage": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[[lineage]]\nname = "solo"\nclasses = ["c"]\n',
        ["lineage 'solo' has only one class ('c')", "[other]", ":5"],
    ),
    "missing name": ('[[lineage]]\nclasses = ["a", "b"]\n', ["[[lineage]] #1 has no 'name'"]),
    "missing classes": ('[[lineage]]\nname = "g"\n', ["lineage 'g' has no 'classes'"]),
    "empty class name": ('[[lineage]]\nname = "g"\nclasses = ["a", ""]\n', ["class name is empty"]),
    "non-string class": ('[[lineage]]\nname = "g"\nclasses = ["a", 3]\n', ["must be a string", "3"]),
    "slash in class": ('[[lineage]]\nname = "g"\nclasses = ["a", "b/c"]\n', ["'b/c' cannot be a folder"]),
    "no lineage": ('[other]\nclasses = ["a"]\n', ["no [[lineage]] table"]),
    "lineage as table": ('[lineage]\nname = "g"\nclasses = ["a", "b"]\n', ["write [[lineage]]"]),
    "unknown top key": (
        'title = "x"\n[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n',
        ["unknown key(s) 'title'", ":1"],
    ),
    "unknown lineage key": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\norder = 1\n',
        ["unknown key(s) 'order' in lineage 'g'", ":4"],
    ),
    "unknown other key": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[other]\nclass = ["x"]\n',
        ["unknown key(s) 'class' in [other]", ":5"],
    ),
    "other not a list": ('[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[other]\nclasses = "x"\n', ["list"]),
    "ignored class": (
        '[[lineage]]\nname = "g"\nclasses = ["a", "b"]\n[ignore]\nfolders = ["b"]\n',
        ["duplicate class 'b'", "ignore"],
    ),
    "bad toml": ('[[lineage]]\nname = "g\nclasses = ["a", "b"]\n', ["not valid TOML", "line 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_spec_errors(case, tmp_path):
    text, fragments = BAD_SPECS[case]
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_and_unreadable_spec_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    path = tmp_path / "lineages.toml"
    path.write_bytes(b"\xff\xfe\x00[[lineage]]")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(path)


def test_from_dict_errors():
    with pytest.raises(SpecError, match="unknown key.*'lineage'"):
        LineageSpec.from_dict({"lineage": [], "other": []})
    with pytest.raises(SpecError, match="has no 'name'"):
        LineageSpec.from_dict({"lineages": [{"classes": ["a", "b"]}]})
    with pytest.raises(SpecError, match="duplicate class 'a'"):
        LineageSpec.from_dict({"lineages": [{"name": "g", "classes": ["a", "b"]}], "other": ["a"]})


def test_constructor_validates():
    with pytest.raises(SpecError, match="only one class"):
        Lineage("g", ("a",))
    with pytest.raises(SpecError, match="no lineage"):
        LineageSpec((), ("a",))
    with pytest.raises(SpecError, match="not str"):
        LineageSpec((Lineage("g", ("a", "b")),), "c")


def test_unknown_class_lookups_name_valid_choices():
    with pytest.raises(SpecError) as info:
        PAPER_SPEC.class_index("neutrophil")
    assert "'neutrophil'" in str(info.value)
    for c in PAPER_SPEC.classes:
        assert c in str(info.value)
    with pytest.raises(SpecError, match="unknown class 'x'"):
        PAPER_SPEC.stage_of("x")


def test_check_folders_lists_every_mismatch():
    spec = parse_spec(GOOD)
    spec.check_folders(reversed(spec.classes))  # order does not matter
    folders = [c for c in spec.classes if c not in ("band", "monocyte")] + ["bands", "junk"]
    with pytest.raises(SpecError) as info:
        spec.check_folders(folders)
    message = str(info.value)
    for name in ("'bands'", "'junk'", "'band'", "'monocyte'"):
        assert name in message
    assert "did you mean 'band'?" in message
    assert message.index("'junk'") < message.index("without a folder") < message.index("'monocyte'")


def test_check_folders_allows_ignored():
    spec = LineageSpec(parse_spec(GOOD).lineages, ("lymphocyte",), ("ART",))
    spec.check_folders([*spec.classes, "ART"])
    spec.check_folders(spec.classes)
    assert "ART" not in spec.classes


def test_specs_in_docs_are_valid():
    """The TOML examples in docs/data.md parse; the first one is the built-in paper spec."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    paper = parse_spec(blocks[0], "docs/data.md")
    assert paper.lineages == PAPER_SPEC.lineages and paper.other == PAPER_SPEC.other
    matek = parse_spec(blocks[1], "docs/data.md")
    assert len(matek.classes) + len(matek.ignore) == 21  # the data set's 21 class codes


# -- [imaging] microns_per_pixel ---------------------------------------------------------------------


def test_imaging_scale_is_read_and_round_trips(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD + "\n[imaging]\nmicrons_per_pixel = 0.53125\n"))
    assert (
        spec.microns_per_pixel
        == tomllib.loads(GOOD + "[imaging]\nmicrons_per_pixel = 0.53125\n")["imaging"]["microns_per_pixel"]
    )
    assert parse_spec(spec.to_toml()) == spec
    assert LineageSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["imaging"] == {"microns_per_pixel": 0.53125}
    unknown = parse_spec(GOOD)  # no [imaging]: the scale is unknown, and nothing says otherwise
    assert unknown.microns_per_pixel is None
    assert "imaging" not in unknown.to_dict() and "[imaging]" not in unknown.to_toml()


@pytest.mark.parametrize(
    "table, message",
    [
        ("microns_per_pixel = 0", "microns_per_pixel = 0 is not a plausible pixel size; give micrometres "
                                  "per pixel between 0.01 and 50 (e.g. 0.25 for a 40x scan)"),
        ("microns_per_pixel = 250.0", "microns_per_pixel = 250.0 is not a plausible pixel size"),
        ('microns_per_pixel = "0.25"', "must be a number (micrometres per pixel), got '0.25'"),
        ("mpp = 0.25", "unknown key(s) 'mpp' in [imaging]; allowed: microns_per_pixel"),
    ],
)  # fmt: skip
def test_imaging_scale_errors(table, message):
    with pytest.raises(SpecError) as info:
        parse_spec(GOOD + "\n[imaging]\n" + table + "\n", "lineages.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("lineages.toml")

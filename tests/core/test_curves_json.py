"""The curves document: exact round trip, format errors, projection onto every lineage."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from smr.core.curves import fit_curve
from smr.core.curves_json import (
    CurvesFormatError,
    LineageCurve,
    curves_from_json,
    curves_to_json,
    load_curves,
    project_all,
    save_curves,
)
from smr.core.targets import frequency_targets, stage_boundaries, uniform_targets


def make_lineages(dim: int = 16, seed: int = 0) -> list[LineageCurve]:
    rng = np.random.default_rng(seed)
    granulo = ("blast", "promyelocyte", "myelocyte", "metamyelocyte", "band", "segmented")
    erythro = (
        "proerythroblast",
        "basophilic_erythroblast",
        "polychromatic_erythroblast",
        "orthochromatic_erythroblast",
    )
    g_counts = rng.integers(5, 400, len(granulo))
    e_counts = rng.integers(5, 400, len(erythro))
    g_targets = frequency_targets(g_counts)
    e_targets = uniform_targets(len(erythro))
    return [
        LineageCurve(
            "granulopoiesis",
            granulo,
            g_targets,
            stage_boundaries(g_targets),
            fit_curve("bezier", rng.normal(size=(len(granulo), dim)), g_counts),
        ),
        LineageCurve(
            "erythropoiesis",
            erythro,
            e_targets,
            stage_boundaries(e_targets),
            fit_curve("linear", rng.normal(size=(len(erythro), dim)), e_counts),
        ),
    ]


def assert_identical(a: list[LineageCurve], b: list[LineageCurve]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.name, x.classes, x.curve.kind) == (y.name, y.classes, y.curve.kind)
        for field in ("targets", "boundaries"):
            assert getattr(x, field).dtype == getattr(y, field).dtype == np.float64
            assert getattr(x, field).tobytes() == getattr(y, field).tobytes()
        assert x.curve.control_points.tobytes() == y.curve.control_points.tobytes()


def test_round_trip_through_a_file_is_bit_identical(tmp_path: Path) -> None:
    lineages = make_lineages()
    path = tmp_path / "curves.json"
    save_curves(path, lineages, space="tsne", meta={"run": "r1", "epoch": 7})
    assert_identical(load_curves(path), lineages)
    doc = json.loads(path.read_text())
    assert (doc["schema"], doc["version"], doc["space"]) == ("smr.curves", 1, "tsne")
    assert doc["meta"] == {"run": "r1", "epoch": 7}
    assert [lin["name"] for lin in doc["lineages"]] == ["granulopoiesis", "erythropoiesis"]


def test_round_trip_of_awkward_floats() -> None:
    lineages = make_lineages(dim=4, seed=1)
    lineages[0].curve = fit_curve(
        "bezier", np.array([[1e-300, -0.1], [1 / 3, 2e300], [np.pi, -5e-324]]), [1, 2, 3]
    )
    lineages[0] = LineageCurve(
        "granulopoiesis", ("a", "b", "c"), [0.0, 0.1 + 0.2, 1.0], [0.15, 0.65], lineages[0].curve
    )
    lineages = lineages[:1]
    text = json.dumps(curves_to_json(lineages))
    assert_identical(curves_from_json(json.loads(text)), lineages)


def test_project_all_matches_each_curve() -> None:
    lineages = make_lineages(dim=8, seed=2)
    X = np.random.default_rng(3).normal(size=(50, 8))
    t, dist = project_all(lineages, X)
    assert t.shape == dist.shape == (50, 2)
    # the linear lineage, checked against the closed form
    start, end = lineages[1].curve.control_points
    d = end - start
    t_ref = np.clip((X - start) @ d / (d @ d), 0, 1)
    np.testing.assert_allclose(t[:, 1], t_ref, atol=1e-12)
    np.testing.assert_allclose(dist[:, 1], np.linalg.norm(X - start - t_ref[:, None] * d, axis=1), atol=1e-12)
    t0, d0 = lineages[0].curve.project(X)
    np.testing.assert_array_equal(t[:, 0], t0)
    np.testing.assert_array_equal(dist[:, 0], d0)
    assert project_all([], X)[0].shape == (50, 0)


def _doc() -> dict:
    return curves_to_json(make_lineages(dim=3, seed=4))


def _without(path: tuple, doc: dict | None = None) -> dict:
    doc = copy.deepcopy(doc or _doc())
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def _with(path: tuple, value, doc: dict | None = None) -> dict:
    doc = copy.deepcopy(doc or _doc())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with(("schema",), "smr.svm"), "'schema' is 'smr.svm', expected 'smr.curves'"),
        (_without(("version",)), "no 'version'"),
        (_with(("version",), 2), "unsupported curves document version 2"),
        (_with(("version",), "1"), "unsupported curves document version '1'"),
        (_with(("version",), True), "unsupported curves document version True"),
        (_without(("lineages",)), "missing field(s): lineages"),
        (_with(("lineages",), {}), "'lineages' must be a list"),
        (_without(("lineages", 0, "targets")), "lineage 'granulopoiesis' is missing field(s): targets"),
        (
            _without(("lineages", 1, "curve", "kind")),
            "lineage 'erythropoiesis': curve is missing field(s): kind",
        ),
        (_with(("lineages", 1, "curve", "kind"), "spline"), "valid kinds"),
        (_with(("lineages", 0, "targets"), [0.0, 0.5, 1.0]), "6 classes need 6 targets"),
        (_with(("lineages", 0, "boundaries", 0), 0.9), "boundar"),
        (_with(("lineages", 0, "targets", 1), "x"), "'targets' must hold numbers"),
        (_with(("lineages", 1, "curve", "control_points"), [[0.0, 0.0], [1.0, 1.0]]), "one dimension"),
        (_with(("lineages", 1, "name"), "granulopoiesis"), "duplicate lineage name"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_documents_are_named(doc, message: str) -> None:
    with pytest.raises(CurvesFormatError) as info:
        curves_from_json(doc)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_files_are_named_and_existing_files_survive_failed_saves(tmp_path: Path) -> None:
    path = tmp_path / "curves.json"
    path.write_text("{not json")
    with pytest.raises(CurvesFormatError, match="curves.json: not valid JSON"):
        load_curves(path)
    path.write_text(json.dumps(_with(("version",), 99)))
    with pytest.raises(CurvesFormatError, match=r"curves\.json: unsupported curves document version 99"):
        load_curves(path)
    lineages = make_lineages(dim=3)
    save_curves(path, lineages)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="meta must be plain JSON data"):
        save_curves(path, lineages, meta={"weights": np.zeros(2)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.json"]


def test_nan_in_a_document_is_rejected() -> None:
    doc = json.loads(json.dumps(_doc()).replace('"targets": [0.0', '"targets": [NaN', 1))
    with pytest.raises(CurvesFormatError, match="targets must be finite"):
        curves_from_json(doc)


def test_lineage_curve_checks_its_parts() -> None:
    curve = fit_curve("linear", np.eye(3), [1, 1, 1])
    with pytest.raises(ValueError, match="3 classes need 2 stage boundaries"):
        LineageCurve("x", ("a", "b", "c"), uniform_targets(3), [0.5], curve)
    with pytest.raises(ValueError, match="at least 2"):
        LineageCurve("x", ("a",), [0.0], [], curve)
    with pytest.raises(ValueError, match="lists a class twice"):
        LineageCurve("x", ("a", "a"), [0.0, 1.0], [0.5], curve)

"""Reading detections (CSV, QuPath GeoJSON) and writing scored cells as QuPath-importable GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely.geometry

from smr.clients.detections import cells_feature_collection, polygon_centroid, read_detections
from smr.clients.errors import InputError


def test_csv_with_ids_and_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,x,y,class\na1,10.5,20,blast\na2,30,40.25,band\n")
    dets = read_detections(path)
    assert [(d.id, d.x, d.y, d.label) for d in dets] == [
        ("a1", 10.5, 20.0, "blast"),
        ("a2", 30.0, 40.25, "band"),
    ]


def test_qupath_measurement_export_as_tsv_without_ids(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("Image\tClass\tCentroid X px\tCentroid Y px\ns.svs\tTumor\t5\t6\ns.svs\t\t7\t8\n")
    dets = read_detections(path)
    assert [(d.id, d.x, d.y, d.label) for d in dets] == [("1", 5.0, 6.0, "Tumor"), ("2", 7.0, 8.0, None)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,a,b\n1,2,3\n", "needs columns 'x' and 'y'"),
        ("id,x,y\n1,2,three\n", "line 2, y: 'three' is not a number"),
        ("id,x,y\n1,2,3\n1,4,5\n", "'1' appears twice"),
        ("id,x,y\n", "no detections"),
        ("id,x,y\n1,2,nan\n", "not a finite number"),
    ],
)
def test_bad_csv_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_detections(path)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such detections file"):
        read_detections(tmp_path / "nope.csv")
    (tmp_path / "d.xlsx").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"valid: \.csv"):
        read_detections(tmp_path / "d.xlsx")


def _random_polygon(rng, n=9, offset=(5000.0, 7000.0)):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(5, 20, n)
    pts = np.c_[offset[0] + radii * np.cos(angles), offset[1] + radii * np.sin(angles)]
    return [[*p] for p in pts] + [[*pts[0]]]


def test_polygon_centroids_agree_with_shapely():
    rng = np.random.default_rng(3)
    for _ in range(20):
        outer = _random_polygon(rng)
        hole = [[5000 + 2 * np.cos(a), 7000 + 2 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 12)[:-1]]
        hole = hole[::-1] + [hole[-1]]
        for rings in ([outer], [outer, hole]):
            expected = shapely.geometry.Polygon(rings[0], rings[1:]).centroid
            x, y = polygon_centroid([rings])
            assert x == pytest.approx(expected.x, abs=1e-6) and y == pytest.approx(expected.y, abs=1e-6)
    polys = [[_random_polygon(rng, offset=(0, 0))], [_random_polygon(rng, offset=(100, 50))]]
    expected = shapely.geometry.MultiPolygon([(p[0], []) for p in polys]).centroid
    x, y = polygon_centroid(polys)
    assert x == pytest.approx(expected.x) and y == pytest.approx(expected.y)


def test_qupath_geojson_points_polygons_and_cells(tmp_path):
    rng = np.random.default_rng(1)
    poly = _random_polygon(rng)
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "u-1",
                "geometry": {"type": "Point", "coordinates": [12.5, 13.5]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "blast", "color": [1, 2, 3]},
                },
            },
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [poly]},
                "properties": {"objectType": "cell", "name": "cell-7"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
                "properties": {"classification": "band"},
            },
        ],
    }
    path = tmp_path / "d.geojson"
    path.write_text(json.dumps(doc))
    dets = read_detections(path)
    assert [d.id for d in dets] == ["u-1", "cell-7", "3-1", "3-2"]
    assert (dets[0].x, dets[0].y, dets[0].label) == (12.5, 13.5, "blast")
    c = shapely.geometry.Polygon(poly).centroid
    assert dets[1].x == pytest.approx(c.x) and dets[1].geometry["type"] == "Polygon"
    assert [(d.x, d.y, d.label) for d in dets[2:]] == [(1, 2, "band"), (3, 4, "band")]
    # older QuPath versions wrote a bare list of features
    path.write_text(json.dumps(doc["features"]))
    assert [d.id for d in read_detections(path)] == ["u-1", "cell-7", "3-1", "3-2"]


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"type": "Polygon", "coordinates": []}, "expected a GeoJSON FeatureCollection"),
        (
            [{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}],
            "no cell centre",
        ),
        (
            [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}],
            "malformed",
        ),
        ([{"type": "Feature", "properties": {}}], "not a GeoJSON Feature with a geometry"),
    ],
)
def test_bad_geojson_is_refused_with_the_reason(tmp_path, doc, message):
    path = tmp_path / "d.geojson"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message):
        read_detections(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_detections(path)


def test_scored_cells_geojson_is_valid_and_carries_classification_and_measurements():
    poly = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}
    records = [
        {
            "id": "a",
            "x": 2.0,
            "y": 2.0,
            "class": "blast",
            "probability": 0.8,
            "lineage": "granulopoiesis",
            "position": 0.05,
            "distance": 0.2,
            "stage_estimate": "blast",
            "borderline": False,
            "position_granulopoiesis": 0.05,
            "distance_granulopoiesis": 0.2,
        },
        {
            "id": "b",
            "x": 9.0,
            "y": 8.0,
            "class": "lymphocyte",
            "probability": 0.6,
            "lineage": "",
            "position": "",
            "distance": "",
            "stage_estimate": "",
            "borderline": True,
            "position_granulopoiesis": 0.5,
            "distance_granulopoiesis": 1.5,
        },
    ]
    colors = {"blast": (10, 20, 30), "lymphocyte": (1, 2, 3)}
    doc = json.loads(json.dumps(cells_feature_collection(records, {"a": poly}, colors, ["granulopoiesis"])))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    for feature, record in zip(doc["features"], records, strict=True):
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.is_valid
        assert geom.centroid.x == pytest.approx(record["x"]) and geom.centroid.y == pytest.approx(record["y"])
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["name"] == record["id"]
        assert props["classification"] == {"name": record["class"], "color": list(colors[record["class"]])}
        assert props["measurements"]["SMR probability"] == record["probability"]
        assert props["measurements"]["SMR granulopoiesis position"] == record["position_granulopoiesis"]
        assert props["measurements"]["SMR borderline"] == float(record["borderline"])
    assert (
        doc["features"][0]["geometry"]["type"] == "Polygon"
        and doc["features"][1]["geometry"]["type"] == "Point"
    )
    assert doc["features"][1]["properties"]["smr"]["position"] is None
    assert len({f["id"] for f in doc["features"]}) == 2


def test_every_class_probability_becomes_a_qupath_measurement():
    from smr.clients.detections import Detection
    from smr.clients.outputs import cell_fields, cell_records
    from smr.clients.results import BatchOutputs, cells_from_outputs
    from tests.clients.helpers import paper_info

    info = paper_info()
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(len(info.classes)), size=3).astype(np.float32)
    out = BatchOutputs(probs, probs.argmax(1), rng.uniform(size=(3, 2)).astype(np.float32),
                       rng.uniform(size=(3, 2)).astype(np.float32))  # fmt: skip
    dets = [Detection(f"c{i}", 10.0 * i, 5.0) for i in range(3)] + [Detection("off", -5.0, 1.0)]
    cells = dict(zip(["c0", "c1", "c2"], cells_from_outputs(info, out), strict=True))
    records = cell_records(info, dets, cells)
    assert all(set(r) == set(cell_fields(info)) for r in records)
    assert [f"p_{c}" for c in info.classes] == [f for f in cell_fields(info) if f.startswith("p_")]
    assert records[3]["status"] == "outside" and records[3]["p_blast"] == ""
    colors = dict.fromkeys(info.classes, (1, 2, 3))
    doc = json.loads(json.dumps(cells_feature_collection(records[:3], {}, colors, info.lineage_names)))
    for i, feature in enumerate(doc["features"]):
        m = feature["properties"]["measurements"]
        for k, c in enumerate(info.classes):
            assert m[f"SMR p({c})"] == pytest.approx(float(probs[i, k]), rel=1e-6)
        assert m["SMR margin"] == pytest.approx(
            float(np.sort(probs[i])[-1] - np.sort(probs[i])[-2]), rel=1e-5
        )
        assert feature["properties"]["smr"]["probabilities"] == pytest.approx(
            dict(zip(info.classes, probs[i].tolist(), strict=True)), rel=1e-6
        )


@pytest.mark.parametrize("text", ["=1+1", "+41", "-2+3", "@SUM(A1)", "\tx", "\r=x", '=HYPERLINK("x")'])
def test_text_that_a_spreadsheet_would_run_is_written_inert(text):
    import csv
    import io

    from smr.clients.outputs import csv_text, spreadsheet_safe

    written = csv_text(["id", "x", "class", "p"], [{"id": text, "x": -1.5, "class": text, "p": 0.25}])
    rows = list(csv.reader(io.StringIO(written, newline="")))
    assert rows[1] == ["'" + text, "-1.5", "'" + text, "0.25"]  # numbers stay numbers, text gets a quote
    for cell in rows[1]:  # no text cell starts with a formula character
        assert not (cell[:1] in "=+@\t\r" and cell[:1]) and not (cell.startswith("-") and cell != "-1.5")
    assert spreadsheet_safe("blast") == "blast" and spreadsheet_safe("a=b") == "a=b"

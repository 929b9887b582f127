"""``smr export`` and ``smr export --check`` from the command line, including INT8."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.metrics import f1_score

from smr.cli import main
from smr.export.check import check_repository


def test_check_ok(repo64, capsys):
    assert main(["export", "--check", str(repo64)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "64 px" in out and "10 classes" in out


def test_check_reports_problems(repo64, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(repo64, repo)
    (repo / "smr_backbone/1/model.onnx").write_bytes(b"\0" * 10)
    assert main(["export", "--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "smr_backbone/1/model.onnx: contents changed since export" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export"], "missing RUN"),
        (["export", "RUN", "--check", "DIR"], "either RUN"),
        (["export", "/nonexistent/run"], "run directory not found: /nonexistent/run"),
        (["export", "/no/run", "--runtime", "openvino", "--tensorrt", "fp16"], "--tensorrt needs --runtime"),
        (["export", "/no/run", "--review-margin", "1.5"], "--review-margin 1.5 is not a difference"),
    ],
)
def test_usage_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("smr export: error:") and message in err


def test_invalid_choice_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "run", "--runtime", "tensorrt"])
    assert exc.value.code == 2
    assert "choose from onnxruntime, python" in capsys.readouterr().err.replace("'", "")


def test_missing_split_images_fail_int8_clearly(run64, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run64.path, run)
    split = json.loads((run / "split.json").read_text())
    split["data"] = str(tmp_path / "moved")
    (run / "split.json").write_text(json.dumps(split))
    assert main(["export", str(run), "--repository", str(tmp_path / "repo"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "moved not found; pass --data DIR" in err
    assert not (tmp_path / "repo").exists()  # nothing half-written


@pytest.mark.slow
def test_int8_export_over_an_earlier_export(run64, repo64, tmp_path, capsys):
    """Replaces an earlier SMR export in place, leaves the user's other models alone, reports INT8."""
    repo = tmp_path / "repo_int8"
    shutil.copytree(repo64, repo)
    (repo / "their_model" / "1").mkdir(parents=True)
    (repo / "their_model" / "config.pbtxt").write_text('name: "their_model"')
    (repo / "README.md").write_text("notes")
    old_onnx = (repo / "smr_backbone/1/model.onnx").read_bytes()

    # the accuracy check's own tests are in test_export_precision.py; run64's classifier is near
    # chance, where INT8 moves a few % of cells across class boundaries
    args = ["--quantize", "int8", "--max-f1-loss", "1", "--min-agreement", "0"]
    assert main(["export", str(run64.path), "--repository", str(repo), *args]) == 0
    out = capsys.readouterr().out
    assert "INT8 vs FP32" in out and "ratio" in out
    # the user's model is kept, and (manifest.py) named as a folder Triton would load unchecked
    assert check_repository(repo).problems == [
        "their_model/: model folder not listed in MANIFEST.json (Triton would load it); remove it, or "
        "export the repository again"
    ]
    assert (repo / "smr_backbone/1/model.onnx").read_bytes() != old_onnx
    assert (repo / "their_model" / "config.pbtxt").read_text() == 'name: "their_model"'
    assert (repo / "README.md").read_text() == "notes"
    assert sorted(p.name for p in repo.iterdir()) == [
        "MANIFEST.json",
        "README.md",
        "smr",
        "smr_backbone",
        "smr_postprocess",
        "their_model",
    ]
    graph = onnx.load(str(repo / "smr_backbone/1/model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    report = json.loads((repo / "MANIFEST.json").read_text())["export"]["quantization"]
    assert report["images"] == len(run64.val)
    assert report["fp32_images_per_s"] > 0 and report["int8_images_per_s"] > 0
    assert report["speed_ratio"] == pytest.approx(report["int8_images_per_s"] / report["fp32_images_per_s"])
    # the FP32 macro F1 of the report, recomputed from PyTorch + scikit-learn
    images, labels = run64.images(run64.val)
    reference = run64.reference_embeddings(run64.val)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        predicted = run64.svc.predict_proba(reference.astype(np.float64)).argmax(axis=1)
    expected_f1 = f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0)
    assert report["macro_f1_fp32"] == pytest.approx(expected_f1, abs=1e-9)
    # the INT8 embeddings really are different, by the reported amount
    from smr.export.onnx_backbone import onnx_embed, ort_session

    int8 = onnx_embed(ort_session(repo / "smr_backbone/1/model.onnx"), images)
    distance = np.linalg.norm(int8 - reference, axis=1)
    assert 0 < distance.mean() == pytest.approx(report["embedding_distance_mean"], abs=1e-4)
    assert report["macro_f1_change"] == pytest.approx(report["macro_f1_int8"] - report["macro_f1_fp32"])


def test_check_prints_the_manifest_digest_and_catches_a_stale_one(repo64, tmp_path, capsys):
    from smr.export.repository import manifest_digest

    assert main(["export", "--check", str(repo64)]) == 0
    digest = manifest_digest(json.loads((repo64 / "MANIFEST.json").read_text()))
    assert f"manifest sha256: {digest}" in capsys.readouterr().out
    repo = tmp_path / "repo"
    shutil.copytree(repo64, repo)
    doc = json.loads((repo / "MANIFEST.json").read_text())
    doc["created"] = "2000-01-01T00:00:00+00:00"  # a manifest the ensemble's digest does not describe
    (repo / "MANIFEST.json").write_text(json.dumps(doc, indent=2) + "\n")
    assert main(["export", "--check", str(repo)]) == 1
    err = capsys.readouterr().err
    assert (
        f"smr/config.pbtxt: manifest_sha256 {digest[:12]}... does not match MANIFEST.json "
        f"({manifest_digest(doc)[:12]}...); export the repository again"
    ) in err


def test_export_and_serve_share_one_default_repository_in_the_working_directory(
    run64, tmp_path, monkeypatch, capsys
):
    import smr.export.repository as repository
    from smr.cli import build_parser

    seen = []

    def fake_export(run_dir, repo, options):
        seen.append(Path(repo))
        raise FileExistsError("stop here")

    monkeypatch.setattr(repository, "export_repository", fake_export)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run64.path)]) == 2
    assert seen and (Path.cwd() / seen[0]).resolve() == tmp_path / "model_repository"
    serve = build_parser().parse_args(["serve"])
    assert (Path.cwd() / serve.repository).resolve() == tmp_path / "model_repository"

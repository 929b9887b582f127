"""The exported repository: layout, configs, tensor-name agreement, manifest, tamper detection."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import fake_triton_utils as fake
import onnx
import pytest

from smr.core import contract as C
from smr.export.check import check_repository
from smr.export.manifest import MANIFEST_FILE, ManifestError, sha256_file, verify_manifest, write_manifest
from smr.export.pbtxt import parse_config, to_text
from smr.export.repository import TRITON_IO_MODULE, ExportOptions, export_repository
from smr.serving import triton_models
from smr.train.rundir import RunDirError

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_copy(repo64, tmp_path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(repo64, dest)
    return dest


def _reseal(repo: Path, rel: str) -> None:
    """Update the manifest's hash of ``rel``, so that only the other checks can catch a change."""
    doc = json.loads((repo / MANIFEST_FILE).read_text())
    doc["files"][rel]["sha256"] = sha256_file(repo / rel)
    write_manifest(repo, doc)


@pytest.mark.parametrize("fixture", ["repo64", "repo224_python"])
def test_fresh_export_passes_check(fixture, request):
    repo = request.getfixturevalue(fixture)
    result = check_repository(repo)
    assert result.problems == []
    verify_manifest(repo)


def test_layout_and_manifest_cover_every_file(repo64, run64):
    files = sorted(p.relative_to(repo64).as_posix() for p in repo64.rglob("*") if p.is_file())
    manifest = json.loads((repo64 / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == [f for f in files if f != MANIFEST_FILE]
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(repo64 / rel)
    for name in C.MODEL_NAMES:
        assert (repo64 / name / "1").is_dir()
    # the run it came from, and the artifacts are byte copies of the run's
    assert manifest["run"]["path"] == str(run64.path.resolve())
    assert manifest["run"]["config_sha256"] == sha256_file(run64.path / "config.json")
    assert sha256_file(repo64 / "smr_postprocess/1/curves.json") == sha256_file(run64.path / "curves.json")
    assert sha256_file(repo64 / "smr_postprocess/1/svm.json") == sha256_file(run64.path / "svm.json")
    assert set(manifest["versions"]) >= {"smr", "torch", "onnx", "onnxruntime"}
    # the vendored core is the installed smr.core, file for file
    core = Path(__import__("smr.core").core.__file__).parent
    for src in core.glob("*.py"):
        assert (repo64 / "smr_postprocess/1/smr_core" / src.name).read_bytes() == src.read_bytes()
    # no code in the data files: the served artifacts are JSON, ONNX and python sources only
    suffixes = {Path(f).suffix for f in manifest["files"]}
    assert suffixes <= {".pbtxt", ".onnx", ".py", ".json"}


def test_python_models_carry_their_own_copy_of_the_shared_tensor_io(repo64, repo224_python):
    """Every python model's folder holds ``smr_triton_io.py``, a byte copy of triton_io.py listed in
    the manifest, and the model imports that copy (the installed ``smr`` is not there at serve time)."""
    source = Path(triton_models.__file__).parent / "triton_io.py"
    python_models = {repo64: ["smr_postprocess"], repo224_python: ["smr_backbone", "smr_postprocess"]}
    for repo, models in python_models.items():
        manifest = json.loads((repo / MANIFEST_FILE).read_text())
        for model in models:
            rel = f"{model}/1/{TRITON_IO_MODULE}"
            assert (repo / rel).read_bytes() == source.read_bytes(), rel
            assert manifest["files"][rel]["sha256"] == sha256_file(source)
            loaded = fake.load_model(repo, model)
            # each model's helpers come from its own folder, even right after another model's load
            assert Path(loaded._module.triton_io.__file__) == repo / rel
    # the onnxruntime backbone is no python model: nothing to import there
    assert not (repo64 / "smr_backbone/1" / TRITON_IO_MODULE).exists()


def test_a_missing_shared_tensor_io_is_named(repo_copy):
    rel = f"smr_postprocess/1/{TRITON_IO_MODULE}"
    (repo_copy / rel).unlink()
    problems = check_repository(repo_copy).problems
    assert f"{rel}: listed in MANIFEST.json but missing" in problems, problems
    with pytest.raises(ModuleNotFoundError, match="smr_triton_io"):  # the model cannot load without it
        fake.load_model(repo_copy, "smr_postprocess")


def test_names_agree_between_graph_configs_and_ensemble(repo64, run64):
    """Independent of check.py: read each file and compare with the contract's table directly."""
    n_classes, n_lineages = len(run64.classes), len(run64.spec.lineages)
    design = {  # docs/architecture.md, "The tensor contract"
        "IMAGE": ("TYPE_UINT8", [64, 64, 3]),
        "PROBABILITIES": ("TYPE_FP32", [n_classes]),
        "CLASS_ID": ("TYPE_INT32", [1]),
        "MATURITY": ("TYPE_FP32", [n_lineages]),
        "CURVE_DISTANCE": ("TYPE_FP32", [n_lineages]),
        "STAGE": ("TYPE_INT32", [n_lineages]),
        "BORDERLINE": ("TYPE_UINT8", [1]),
        "EMBEDDING": ("TYPE_FP32", [256]),
    }
    from tritonclient.grpc import model_config_pb2 as mc

    def io(tensors):
        return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors}

    ens = parse_config(repo64 / "smr/config.pbtxt")
    bb = parse_config(repo64 / "smr_backbone/config.pbtxt")
    pp = parse_config(repo64 / "smr_postprocess/config.pbtxt")
    assert io(ens.input) == {"IMAGE": design["IMAGE"]}
    assert io(ens.output) == {k: v for k, v in design.items() if k != "IMAGE"}
    assert io(bb.input) == {"IMAGE": design["IMAGE"]}
    assert io(bb.output) == {"EMBEDDING": design["EMBEDDING"]}
    assert io(pp.input) == {"EMBEDDING": design["EMBEDDING"]}
    pp_outputs = {k: v for k, v in design.items() if k not in ("IMAGE", "EMBEDDING")}
    assert io(pp.output) == {**pp_outputs, "EMBEDDING_OUT": design["EMBEDDING"]}
    graph = onnx.load(str(repo64 / "smr_backbone/1/model.onnx"))
    assert [i.name for i in graph.graph.input] == ["IMAGE"]
    assert [o.name for o in graph.graph.output] == ["EMBEDDING"]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    steps = {s.model_name: s for s in ens.ensemble_scheduling.step}
    assert dict(steps["smr_backbone"].input_map) == {"IMAGE": "IMAGE"}
    # the backbone's embedding is internal to the ensemble (an ensemble output that a step also
    # reads is dropped when not requested: deadlock); the ensemble's EMBEDDING is the postprocess's copy
    internal = steps["smr_backbone"].output_map["EMBEDDING"]
    assert dict(steps["smr_backbone"].output_map) == {"EMBEDDING": internal}
    assert internal not in io(ens.output)
    assert dict(steps["smr_postprocess"].input_map) == {"EMBEDDING": internal}
    assert dict(steps["smr_postprocess"].output_map) == {
        **{k: k for k in pp_outputs},
        "EMBEDDING_OUT": "EMBEDDING",
    }
    # metadata for clients, scheduling
    params = {k: v.string_value for k, v in ens.parameters.items()}
    assert json.loads(params["classes"]) == run64.classes
    lineages = json.loads(params["lineages"])
    assert [lin["name"] for lin in lineages] == [lin.name for lin in run64.spec.lineages]
    assert [lin["classes"] for lin in lineages] == [list(lin.classes) for lin in run64.spec.lineages]
    curves = json.loads((run64.path / "curves.json").read_text())["lineages"]
    assert [lin["boundaries"] for lin in lineages] == [c["boundaries"] for c in curves]
    assert params["image_size"] == "64"
    # the review margin the postprocess flags cells with, announced to clients
    assert params["review_margin"] == "0.05"
    assert pp.parameters["review_margin"].string_value == "0.05"
    assert bb.platform == "onnxruntime_onnx" and pp.backend == "python"
    for cfg in (ens, bb, pp):
        assert cfg.max_batch_size == 64
    for cfg in (bb, pp):
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert [w.batch_size for w in cfg.model_warmup] == [1]


def test_python_runtime_layout(repo224_python):
    bb = parse_config(repo224_python / "smr_backbone/config.pbtxt")
    assert bb.backend == "python" and not bb.platform
    assert bb.max_batch_size == 8
    assert (repo224_python / "smr_backbone/1/model.py").is_file()
    assert (repo224_python / "smr_backbone/1/model.onnx").is_file()
    assert list(parse_config(repo224_python / "smr/config.pbtxt").input[0].dims) == [224, 224, 3]


def test_tampered_file_is_named(repo_copy):
    path = repo_copy / "smr_postprocess/1/svm.json"
    path.write_text(path.read_text().replace("0", "1", 1))
    problems = check_repository(repo_copy).problems
    assert any(p.startswith("smr_postprocess/1/svm.json: contents changed") for p in problems), problems
    with pytest.raises(ManifestError, match="smr_postprocess/1/svm.json"):
        verify_manifest(repo_copy)


def test_missing_and_added_files_are_named(repo_copy):
    (repo_copy / "smr_postprocess/1/smr_core/targets.py").unlink()
    (repo_copy / "smr_backbone/2").mkdir()
    (repo_copy / "smr_backbone/2/model.onnx").write_bytes(b"x")
    problems = check_repository(repo_copy).problems
    assert any(
        "smr_postprocess/1/smr_core/targets.py: listed in MANIFEST.json but missing" in p for p in problems
    )
    assert any("smr_backbone/2/model.onnx: not listed" in p for p in problems)


def test_python_byte_code_is_refused_and_named(repo_copy):
    """Python runs __pycache__/model.cpython-3XX.pyc instead of the checked model.py beside it."""
    (repo_copy / "smr_postprocess/1/__pycache__").mkdir()
    (repo_copy / "smr_postprocess/1/__pycache__/model.cpython-311.pyc").write_bytes(b"\0")
    problems = check_repository(repo_copy).problems
    assert [p for p in problems if "model.cpython-311.pyc" in p] == [
        "smr_postprocess/1/__pycache__/model.cpython-311.pyc: Python byte code not listed in MANIFEST.json "
        "(Python would run it instead of the checked source); remove it"
    ], problems


def test_renamed_tensor_is_caught_even_with_a_resealed_manifest(repo_copy):
    rel = "smr/config.pbtxt"
    text = (repo_copy / rel).read_text()
    (repo_copy / rel).write_text(text.replace('value: "PROBABILITIES"', 'value: "PROBS"'))
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any("output 'PROBABILITIES' is produced by no step" in p for p in problems), problems

    rel = "smr_postprocess/config.pbtxt"
    text = (repo_copy / rel).read_text()
    (repo_copy / rel).write_text(text.replace('name: "MATURITY"', 'name: "MATURITY_T"'))
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any(p.startswith("smr_postprocess/config.pbtxt outputs") and "MATURITY_T" in p for p in problems)


def test_ensemble_output_read_by_a_step_is_caught(repo_copy):
    """The layout that deadlocks when a client does not request EMBEDDING: the backbone writes the
    ensemble output EMBEDDING directly and the postprocess reads it."""
    rel = "smr/config.pbtxt"
    config = parse_config(repo_copy / rel)
    backbone, post = config.ensemble_scheduling.step
    backbone.output_map["EMBEDDING"] = "EMBEDDING"
    post.input_map["EMBEDDING"] = "EMBEDDING"
    del post.output_map["EMBEDDING_OUT"]
    (repo_copy / rel).write_text(to_text(config))
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any(
        "step smr_postprocess reads 'EMBEDDING', which is also an ensemble output" in p for p in problems
    ), problems
    assert any("output 'EMBEDDING' comes from smr_backbone.EMBEDDING" in p for p in problems), problems


def test_wrong_shape_and_unparsable_config_are_caught(repo_copy):
    rel = "smr_backbone/config.pbtxt"
    text = (repo_copy / rel).read_text()
    (repo_copy / rel).write_text(text.replace("dims: 256", "dims: 128", 1))
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any("smr_backbone/config.pbtxt outputs: EMBEDDING is TYPE_FP32 [128]" in p for p in problems), (
        problems
    )

    rel = "smr_postprocess/config.pbtxt"
    (repo_copy / rel).write_text((repo_copy / rel).read_text() + "\nmax_batch_sise: 4\n")
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any(
        p.startswith(str(repo_copy / rel)) and "not a valid Triton model config" in p for p in problems
    )


def test_svm_classes_must_match_the_ensemble(repo_copy):
    rel = "smr_postprocess/1/svm.json"
    doc = json.loads((repo_copy / rel).read_text())
    doc["classes"] = list(reversed(doc["classes"]))
    (repo_copy / rel).write_text(json.dumps(doc))
    _reseal(repo_copy, rel)
    problems = check_repository(repo_copy).problems
    assert any(p.startswith("smr_postprocess/1/svm.json: classes") for p in problems), problems


def test_failed_export_keeps_the_existing_repository(repo_copy, run64, tmp_path):
    before = {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()}
    broken = tmp_path / "broken_run"
    shutil.copytree(run64.path, broken)
    (broken / "curves.json").write_text("{not json")
    with pytest.raises(RunDirError, match="curves.json"):
        export_repository(broken, repo_copy, ExportOptions(), log=lambda _: None)
    after = {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in repo_copy.iterdir() if p.name.startswith(".smr-")]


def test_foreign_models_are_not_replaced(tmp_path, run64):
    repo = tmp_path / "repo"
    (repo / "smr_backbone").mkdir(parents=True)
    (repo / "smr_backbone" / "config.pbtxt").write_text('name: "someone_elses"')
    with pytest.raises(FileExistsError, match="--force"):
        export_repository(run64.path, repo, ExportOptions(), log=lambda _: None)
    assert (repo / "smr_backbone" / "config.pbtxt").read_text() == 'name: "someone_elses"'


def test_exported_files_are_ignored_by_git(repo64):
    """Exporting into model_repository/ must leave `git status` clean: every generated path is ignored."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.fail("this test needs git and the SMR checkout")
    rels = [p.relative_to(repo64).as_posix() for p in repo64.rglob("*") if p.is_file()]
    rels += ["smr_postprocess/1/__pycache__/model.cpython-311.pyc", ".smr-export-abc/x"]
    paths = [f"model_repository/{rel}" for rel in rels]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO_ROOT,
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(out.stdout.split()) == sorted(paths)
    readme = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "model_repository/README.md"], cwd=REPO_ROOT
    )
    assert readme.returncode == 1  # the README is committed


# -- scale and provenance in the ensemble's parameters ------------------------------------------------


def _ensemble_params(repo: Path) -> dict[str, str]:
    return {k: v.string_value for k, v in parse_config(repo / "smr/config.pbtxt").parameters.items()}


def test_ensemble_carries_the_scale_the_network_input_was_trained_at(run64, repo64, repo224_python):
    import numpy as np
    from PIL import Image

    sizes = []
    for path in sorted(run64.data.glob("*/*.jpg")):
        with Image.open(path) as im:
            sizes.append((im.height, im.width))
    h, w = np.median(np.array(sizes, dtype=float), axis=0)
    mpp = run64.spec.microns_per_pixel
    params = _ensemble_params(repo64)
    # the whole image (h x w px at mpp) is resized to 64 x 64: one input pixel is fov / 64 across
    assert float(params["microns_per_pixel"]) == pytest.approx(np.sqrt(h * mpp * w * mpp) / 64)
    assert json.loads(params["field_of_view_um"]) == pytest.approx([h * mpp, w * mpp])
    # a data set without [imaging] microns_per_pixel: the scale is left out, not guessed
    assert "microns_per_pixel" not in _ensemble_params(repo224_python)
    assert "field_of_view_um" not in _ensemble_params(repo224_python)


def test_ensemble_carries_provenance(run64, repo64):
    import hashlib

    from smr import __version__

    params = _ensemble_params(repo64)
    model_sha = hashlib.sha256((run64.path / "model.safetensors").read_bytes()).hexdigest()
    assert params["run_id"] == f"{run64.path.resolve().name}-{model_sha[:12]}"
    assert params["training_data"] == run64.data.resolve().name
    assert int(params["training_images"]) == len(run64.train)
    assert params["smr_version"] == __version__
    assert "val_macro_f1" not in params  # the helper's run has no training result
    # the manifest digest: MANIFEST.json without the ensemble config's own entry, canonical JSON
    doc = json.loads((repo64 / MANIFEST_FILE).read_text())
    del doc["files"]["smr/config.pbtxt"]
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert params["manifest_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_val_macro_f1_comes_from_the_run_result(run64, tmp_path):
    from smr.export.repository import model_parameters
    from smr.train.rundir import load_run, write_result

    run = tmp_path / "run"
    shutil.copytree(run64.path, run)
    write_result(run, {"best_epoch": 3, "best_val_macro_f1": 0.712345})
    params = model_parameters(load_run(run, model=False), run)
    assert params["val_macro_f1"] == "0.7123"


# -- the review outputs (STAGE, BORDERLINE) and their margin -----------------------------------------


def _edit_config(repo: Path, model: str, edit) -> None:
    rel = f"{model}/config.pbtxt"
    config = parse_config(repo / rel)
    edit(config)
    (repo / rel).write_text(to_text(config))
    _reseal(repo, rel)


def _drop_review(config) -> None:
    """What a config exported before STAGE and BORDERLINE looked like."""
    kept = [t for t in config.output if t.name not in C.REVIEW_OUTPUTS]
    del config.output[:]
    config.output.extend(kept)
    if C.REVIEW_MARGIN_PARAMETER in config.parameters:
        del config.parameters[C.REVIEW_MARGIN_PARAMETER]
    for step in config.ensemble_scheduling.step:
        for name in C.REVIEW_OUTPUTS:
            if name in step.output_map:
                del step.output_map[name]


def _set_margin(value: str):
    def edit(config) -> None:
        config.parameters[C.REVIEW_MARGIN_PARAMETER].string_value = value

    return edit


def test_a_review_margin_the_ensemble_announces_wrongly_is_caught(repo_copy):
    assert check_repository(repo_copy).facts["review_margin"] == 0.05
    _edit_config(repo_copy, C.POSTPROCESS, _set_margin("0.1"))
    problems = check_repository(repo_copy).problems
    assert problems == [
        "smr/config.pbtxt: review_margin 0.05 disagrees with smr_postprocess's 0.1, the one its flags are "
        "computed with"
    ]
    _edit_config(repo_copy, C.ENSEMBLE, _set_margin("1.5"))
    problems = check_repository(repo_copy).problems
    assert problems == ["smr/config.pbtxt: parameter review_margin '1.5' is not a margin in [0, 1]"]


def test_a_repository_from_before_the_review_outputs_still_passes_its_check(repo_copy):
    """Exported before STAGE/BORDERLINE: consistent with the contract of its time (clients derive them)."""
    _edit_config(repo_copy, C.ENSEMBLE, _drop_review)
    _edit_config(repo_copy, C.POSTPROCESS, _drop_review)
    result = check_repository(repo_copy)
    assert result.problems == [] and result.facts["review_margin"] is None
    # half of it is not: the postprocess computes STAGE, the ensemble does not return it
    _edit_config(repo_copy, C.POSTPROCESS, _set_margin("0.05"))
    problems = check_repository(repo_copy).problems
    assert any(p.startswith("smr/config.pbtxt outputs: tensors") and "STAGE" in p for p in problems), problems


def test_the_python_backbone_carries_the_contract_it_imports(repo224_python):
    core = Path(C.__file__).parent
    vendored = repo224_python / "smr_backbone/1/smr_core"
    assert sorted(p.name for p in vendored.iterdir()) == ["__init__.py", "contract.py"]
    for name in ("__init__.py", "contract.py"):
        assert (vendored / name).read_bytes() == (core / name).read_bytes()
    manifest = json.loads((repo224_python / MANIFEST_FILE).read_text())
    assert "smr_backbone/1/smr_core/contract.py" in manifest["files"]


def test_the_served_review_margin_is_the_runs_own_unless_given(run64, tmp_path):
    """A run that chose its margin (smr train) has it served; --review-margin overrides it."""
    run_dir = tmp_path / "run"
    shutil.copytree(run64.path, run_dir)
    doc = json.loads((run_dir / "config.json").read_text())
    doc.setdefault("result", {})["review_margin"] = 0.1234
    (run_dir / "config.json").write_text(json.dumps(doc))
    for option, served in ((None, "0.1234"), (0.2, "0.2")):
        repo = tmp_path / f"repo-{served}"
        export_repository(run_dir, repo, ExportOptions(review_margin=option), log=lambda _: None)
        for name in (C.ENSEMBLE, C.POSTPROCESS):
            config = parse_config(repo / name / "config.pbtxt")
            assert config.parameters[C.REVIEW_MARGIN_PARAMETER].string_value == served, (option, name)

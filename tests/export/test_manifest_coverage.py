"""MANIFEST.json covers the whole repository: an extra model folder, Python byte code beside a
checked model.py, or a stray file are refused by `smr export --check`, by the launcher of `smr serve`
and by the python models themselves, each time naming the file."""

from __future__ import annotations

import importlib.util
import marshal
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import fake_triton_utils as fake
import pytest

from smr.export.check import check_repository
from smr.export.manifest import ManifestError, build_manifest, manifest_problems
from smr.serving.launcher import RepositoryError, TritonProcess

SMR = str(Path(sys.executable).parent / "smr")
EXTRA = "zz_extra/: model folder not listed in MANIFEST.json"
CACHE = f"__pycache__/model.{sys.implementation.cache_tag}.pyc"


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture
def repo_copy(repo224_python, tmp_path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(repo224_python, dest)
    return dest


def _add_extra_model(repo: Path) -> None:
    """A python model that no manifest lists; Triton would load it and run its code."""
    (repo / "zz_extra" / "1").mkdir(parents=True)
    (repo / "zz_extra" / "config.pbtxt").write_text(
        'name: "zz_extra"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    (repo / "zz_extra" / "1" / "model.py").write_text(
        "import os\nos.system('touch /tmp/smr-pwned')\n\nclass TritonPythonModel:\n    pass\n"
    )


def _forge_bytecode(repo: Path, model: str) -> str:
    """An unchecked-hash .pyc beside an untouched model.py: Python would run it instead of the source."""
    source = repo / model / "1" / "model.py"
    forged = repo / model / "1" / CACHE
    forged.parent.mkdir()
    evil = source.parent / "evil_source.py"
    evil.write_text(source.read_text() + "\nimport os\nos.system('touch /tmp/smr-pwned')\n")
    py_compile.compile(
        str(evil), cfile=str(forged), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    evil.unlink()
    assert importlib.util.cache_from_source(str(source)) == str(forged)  # where Python looks for it
    assert marshal.loads(forged.read_bytes()[16:])  # a real code object
    return f"{model}/1/{CACHE}"


def test_an_extra_model_folder_is_refused_by_check_cli_and_launcher(repo_copy):
    _add_extra_model(repo_copy)
    assert any(p.startswith(EXTRA) for p in check_repository(repo_copy).problems)
    done = subprocess.run(
        [SMR, "export", "--check", str(repo_copy)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and EXTRA in done.stdout + done.stderr
    with pytest.raises(RepositoryError, match="zz_extra/: model folder not listed"):
        TritonProcess(repo_copy).check_repository()  # what `smr serve` runs before starting anything


def test_forged_bytecode_beside_model_py_is_refused_and_named(repo_copy):
    rel = _forge_bytecode(repo_copy, "smr_backbone")
    problems = check_repository(repo_copy).problems
    assert [p for p in problems if p.startswith(rel)] == [
        f"{rel}: Python byte code not listed in MANIFEST.json (Python would run it instead of the checked "
        "source); remove it"
    ]
    with pytest.raises(RepositoryError, match=rel.replace(".", r"\.")):
        TritonProcess(repo_copy).check_repository()
    done = subprocess.run([SMR, "serve", "--repository", str(repo_copy)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and rel in done.stderr and "smr serve: error:" in done.stderr


def test_byte_code_is_refused_even_when_listed_and_never_written_into_a_manifest(repo_copy):
    rel = _forge_bytecode(repo_copy, "smr_postprocess")
    with pytest.raises(ManifestError, match=rel.replace(".", r"\.")):
        build_manifest(repo_copy, ["smr", "smr_backbone", "smr_postprocess"])
    doc = __import__("json").loads((repo_copy / "MANIFEST.json").read_text())
    doc["files"][rel] = {"sha256": "0" * 64, "bytes": 1}
    assert any(p.startswith(f"{rel}: Python byte code listed") for p in manifest_problems(repo_copy, doc))


def test_a_stray_file_at_the_top_is_named_and_the_readme_allowed(repo_copy):
    (repo_copy / "README.md").write_text("notes\n")
    assert check_repository(repo_copy).problems == []
    (repo_copy / "notes.txt").write_text("x")
    assert "notes.txt: not listed in MANIFEST.json (added after export?); remove it" in (
        check_repository(repo_copy).problems
    )


@pytest.mark.parametrize("model", ["smr_postprocess", "smr_backbone"])
def test_the_python_models_refuse_to_load_either_bypass(repo_copy, model):
    _add_extra_model(repo_copy)
    with pytest.raises(ValueError, match=rf"{model}: refusing to load: .*zz_extra/: model folder"):
        fake.load_model(repo_copy, model)
    shutil.rmtree(repo_copy / "zz_extra")
    other = "smr_backbone" if model == "smr_postprocess" else "smr_postprocess"
    rel = _forge_bytecode(repo_copy, other)  # the forged model's own code would not check itself
    with pytest.raises(ValueError, match=rf"{model}: refusing to load: .*{rel.replace('.', '[.]')}"):
        fake.load_model(repo_copy, model)


@pytest.mark.parametrize("model", ["smr_postprocess", "smr_backbone"])
def test_loading_a_model_leaves_the_repository_byte_identical(repo_copy, model):
    before = _snapshot(repo_copy)
    fake.load_model(repo_copy, model)  # imports model.py the way the stub does, byte code on
    assert _snapshot(repo_copy) == before
    assert not list(repo_copy.rglob("__pycache__"))


def test_a_resealed_manifest_that_lists_an_extra_model_is_refused_by_check(repo_copy):
    """Listing zz_extra in MANIFEST.json with its checksums is resealing, not exporting."""
    import json

    _add_extra_model(repo_copy)
    doc = json.loads((repo_copy / "MANIFEST.json").read_text())
    resealed = build_manifest(repo_copy, [*doc["models"], "zz_extra"])
    (repo_copy / "MANIFEST.json").write_text(json.dumps({**doc, **resealed}))
    problems = check_repository(repo_copy).problems
    assert any(p.startswith("MANIFEST.json: models") and "zz_extra" in p for p in problems), problems

"""smr.core.contract: the served names, defined once, importable without numpy."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from smr.core import contract as C

REPO_ROOT = Path(__file__).resolve().parents[2]
# the Kubernetes probe: a standalone script in the Triton container, without the smr package
PROBE = REPO_ROOT / "deploy" / "kubernetes" / "probe" / "probe.py"


def test_the_contract_imports_without_numpy():
    code = "import sys, smr.core.contract; print('numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_names_are_distinct_and_the_outputs_ordered():
    tensors = [C.IMAGE, *C.ENSEMBLE_OUTPUTS, C.EMBEDDING_OUT, C.BACKBONE_EMBEDDING]
    assert len(set(tensors)) == len(tensors)
    assert len(set(C.MODEL_NAMES)) == 3 and C.ENSEMBLE in C.MODEL_NAMES
    assert C.ENSEMBLE_OUTPUTS == (*C.CLASSIFICATION_OUTPUTS, *C.REVIEW_OUTPUTS, C.EMBEDDING)
    assert 0 <= C.DEFAULT_REVIEW_MARGIN <= 1


def _tracked_sources() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return [REPO_ROOT / p for p in listed if p and not p.startswith("tests/") and (REPO_ROOT / p).is_file()]


def test_each_tensor_name_is_spelled_in_the_contract_only():
    """No other non-test module spells a served tensor name as a string: they import the contract."""
    names = {C.IMAGE, *C.ENSEMBLE_OUTPUTS, C.EMBEDDING_OUT, C.BACKBONE_EMBEDDING}
    contract = Path(C.__file__).resolve()
    found = []
    for path in _tracked_sources():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if path.resolve() == contract:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "tensor names spelled outside smr/core/contract.py:\n" + "\n".join(found)


def test_the_probe_names_the_ensemble_as_the_contract_does():
    """The probe reads tensor names from the server; the model name is the one it must know."""
    assert PROBE in _tracked_sources()  # scanned by the test above, no exception
    spec = importlib.util.spec_from_file_location("smr_k8s_probe", PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.MODEL == C.ENSEMBLE

"""Helpers of the deployment tests: rendered kustomizations and the validators.

``build`` renders a kustomization with ``kubectl kustomize`` (or a standalone ``kustomize``),
offline. Kubernetes' own kinds are validated with the schemas shipped by the ``kubernetes-validate``
package; the custom resources (ServiceMonitor, PrometheusRule, InferenceService) with the
schemas in ``schemas/`` (see schemas/README.md), whose Kubernetes types resolve to the same
package's strict definitions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Kubernetes releases the manifests must be valid for: the oldest one docs/scaling.md names and the
# newest one kubernetes-validate knows.
K8S_VERSIONS = ("1.30", "latest")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io.v1beta1.json",
}
# every kustomization a user applies, and what it must render
BUILDS = {
    "kubernetes": KUBERNETES,
    "base": KUBERNETES / "base",
    "cpu": KUBERNETES / "overlays" / "cpu",
    "s3": KUBERNETES / "overlays" / "s3",
    "kserve": KSERVE,
}


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_version(version: str) -> str:
    if version != "latest":
        return version
    from kubernetes_validate.utils import latest_version

    return latest_version()


@cache
def _crd_validator(api_version: str, kind: str):
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    defs_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    (latest,) = [d for d in defs_dir.iterdir() if d.name == f"v{_k8s_version('latest')}-local-strict"]
    definitions = json.loads((latest / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ Registry()
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[api_version, kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validation_errors(doc: dict, version: str = "latest") -> list[str]:
    """Why ``doc`` is not a valid object (empty list: valid); fails on a kind without a schema."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        errors = sorted(_crd_validator(*key).iter_errors(doc), key=lambda e: list(e.absolute_path))
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, _k8s_version(version), strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        pytest.fail(f"no schema for {key}: {err.message}")
    return []


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@cache
def _build(path: Path) -> str:
    cmd = kustomize_command()
    if cmd is None:
        pytest.fail("neither kustomize nor kubectl (which includes kustomize) is installed")
    done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} {path} failed:\n{done.stderr}")
    return done.stdout


def build(name: str) -> list[dict]:
    """The objects ``kubectl apply -k`` would create from BUILDS[name] (fresh copies)."""
    return [doc for doc in yaml.safe_load_all(_build(BUILDS[name])) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]

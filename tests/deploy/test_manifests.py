"""deploy/: every manifest valid offline, and in agreement with the docs and the Prometheus rules.

Sources of truth the manifests are compared with, never copied from: docs/serving.md (Triton's
settings and ports), docs/scaling.md (the Kubernetes settings table), docker-compose.yml (the
full Triton's python-backend settings), serving/prometheus/ (rules, scrape interval, job).
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    BUILDS,
    CRD_SCHEMAS,
    DEPLOY,
    K8S_VERSIONS,
    KUBERNETES,
    REPO_ROOT,
    build,
    load_yaml_docs,
    one,
    validation_errors,
)

SERVING_DOC = REPO_ROOT / "docs" / "serving.md"
SCALING_DOC = REPO_ROOT / "docs" / "scaling.md"
COMPOSE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_DIR = REPO_ROOT / "serving" / "prometheus"
PROBE = KUBERNETES / "probe" / "probe.py"
ADAPTER = KUBERNETES / "prometheus-adapter.yaml"
MIN_NGC_RELEASE = (25, 7)  # Triton 2.51 (24.10) has CVE-2025-23310 and others, fixed in 25.07
# flags of the embedded server (docs/serving.md "Settings") that a pod sets differently, and why
POD_DIFFERS = {
    "--model-repository": "the pod's mount or s3:// location",
    "--grpc-address": "gRPC must be reachable through the Service",
    "--metrics-address": "Prometheus scrapes the pod's IP",
    "--backend-directory": "embedded server only",
    "--allow-http": "HTTP serves the probes on the pod's loopback (--http-address)",
    "--backend-config=python,shm-region-prefix-name": "one server per container",
}
# flags a KServe serving runtime sets itself (repository, ports, endpoints)
KSERVE_RUNTIME_FLAGS = (
    "--model-repository=",
    "--http-address=",
    "--http-port=",
    "--grpc-address=",
    "--grpc-port=",
    "--metrics-address=",
)


# --------------------------------------------------------------------------------------------
# helpers


def flag_name(arg: str) -> str:
    """``--a=b`` -> ``--a``; ``--backend-config=python,shm-x=1`` -> ``--backend-config=python,shm-x``."""
    parts = arg.split("=")
    return "=".join(parts[:2]) if parts[0] == "--backend-config" else parts[0]


def flag_value(arg: str) -> str | None:
    name = flag_name(arg)
    return arg[len(name) + 1 :] if len(arg) > len(name) else None


RESTRICTED_FLAGS = ("--grpc-restricted-protocol", "--http-restricted-api")


def restricted_parts(value: str) -> tuple[str, str]:
    """``apis:header=secret`` (possibly in backticks or with a placeholder) -> (apis, header)."""
    value = (backticked(value) or [value])[0]
    apis, _, rest = value.partition(":")
    return apis.split("=")[-1], rest.split("=", 1)[0]


def args_by_flag(args: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for arg in args:
        name = flag_name(arg)
        assert name not in flags, f"{name} given twice"
        flags[name] = flag_value(arg) or ""
    return flags


def triton_container(docs: list[dict]) -> dict:
    (container,) = one(docs, "Deployment", "smr-triton")["spec"]["template"]["spec"]["containers"]
    return container


def markdown_table(text: str, heading: str) -> dict[str, str]:
    """First column -> second column of the first table after the heading ``heading``."""
    section = text.split(heading, 1)
    assert len(section) == 2, f"heading {heading!r} not found"
    rows = {}
    for line in section[1].lstrip().splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and not set(cells[0]) <= {"-", ":"}:
            rows[cells[0]] = cells[1]
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def scaling_settings() -> dict[str, str]:
    return markdown_table(SCALING_DOC.read_text(), "## Kubernetes settings")


def serving_settings() -> list[tuple[list[str], str, str]]:
    """docs/serving.md "Settings": (flags of the first column, value column, why column) per row."""
    text = SERVING_DOC.read_text().split("### Settings", 1)[1]
    rows = []
    for line in text.lstrip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        flags = [f for f in backticked(cells[0]) if f.startswith("--")]
        rows.append((flags, cells[1], cells[2] if len(cells) > 2 else ""))
    assert rows, "docs/serving.md has no Settings table"
    return rows


def load_probe_module():
    spec = importlib.util.spec_from_file_location("smr_k8s_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]


def recording_rule(name: str) -> str:
    (expr,) = [r["expr"] for g in rules_groups() for r in g["rules"] if r.get("record") == name]
    return expr


def normalise_promql(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).strip()


# --------------------------------------------------------------------------------------------
# every manifest is valid


def _manifest_files() -> list[Path]:
    """YAML files under deploy/ that are Kubernetes objects (not kustomizations, patches, configs)."""
    patches = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kustomization.read_text()).get("patches", []):
            if "path" in patch:
                patches.add((kustomization.parent / patch["path"]).resolve())
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.resolve() not in patches and p != ADAPTER
    )


MANIFEST_FILES = _manifest_files()


def test_manifest_files_are_found():
    names = {p.name for p in MANIFEST_FILES}
    assert {"deployment.yaml", "service.yaml", "hpa.yaml", "inferenceservice.yaml"} <= names


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_file_is_valid(path, version):
    for doc in load_yaml_docs(path):
        errors = validation_errors(doc, version)
        assert not errors, f"{path.relative_to(REPO_ROOT)} {doc['kind']}: {errors}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_kustomization_renders_valid_objects(name, version):
    docs = build(name)
    assert docs
    for doc in docs:
        errors = validation_errors(doc, version)
        assert not errors, f"kustomize build {name}: {doc['kind']} {doc['metadata']['name']}: {errors}"


def test_every_file_is_used_by_a_kustomization():
    """A manifest that no kustomization lists would silently not be applied."""
    listed = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        for entry in doc.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    orphans = [p for p in MANIFEST_FILES if p.resolve() not in listed]
    assert not orphans, f"not listed in any kustomization.yaml: {orphans}"


def test_kustomizations_render_the_expected_objects():
    kinds = {name: sorted((d["kind"], d["metadata"]["name"]) for d in build(name)) for name in BUILDS}
    plain = [
        ("ConfigMap", "smr-probe"),
        ("Deployment", "smr-triton"),
        ("HorizontalPodAutoscaler", "smr-triton"),
        ("Namespace", "smr"),
        ("PersistentVolumeClaim", "smr-model-repository"),
        ("PrometheusRule", "smr-rules"),
        ("Service", "smr-triton"),
        ("ServiceMonitor", "smr-triton"),
    ]
    assert kinds["kubernetes"] == kinds["base"] == kinds["cpu"] == plain
    assert kinds["s3"] == [k for k in plain if k[0] != "PersistentVolumeClaim"]
    assert kinds["kserve"] == [
        ("ConfigMap", "smr-probe"),
        ("HorizontalPodAutoscaler", "smr-predictor"),
        ("InferenceService", "smr"),
    ]
    for name in BUILDS:
        assert all(d["metadata"].get("namespace") == "smr" for d in build(name) if d["kind"] != "Namespace")


# the validators reject broken manifests: each mutation breaks one real manifest in one way
def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str):
    def mutate(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


DEPLOYMENT = "kubernetes/base/deployment.yaml"
SERVICE = "kubernetes/base/service.yaml"
HPA = "kubernetes/autoscaling/hpa.yaml"
MONITOR = "kubernetes/base/servicemonitor.yaml"
RULE = "kubernetes/base/prometheusrule.yaml"
ISVC = "kserve/inferenceservice.yaml"
BROKEN = {
    "deployment: port as text": (
        DEPLOYMENT,
        _set("spec.template.spec.containers.0.ports.0.containerPort", "grpc"),
    ),
    "deployment: misspelt field": (DEPLOYMENT, _set("spec.template.spec.containers.0.readinesProbe", {})),
    "deployment: no selector": (DEPLOYMENT, _delete("spec.selector")),
    "service: port out of type": (SERVICE, _set("spec.ports.0.port", "8001/TCP")),
    "hpa: unknown target field": (HPA, _set("spec.metrics.0.pods.target.foo", 1)),
    "servicemonitor: misspelt interval": (MONITOR, _set("spec.endpoints.0.intervall", "5s")),
    "servicemonitor: bad interval": (MONITOR, _set("spec.endpoints.0.interval", "5 sec")),
    "servicemonitor: no selector": (MONITOR, _delete("spec.selector")),
    "prometheusrule: rule without expr": (RULE, _delete("spec.groups.0.rules.0.expr")),
    "prometheusrule: bad for": (RULE, _set("spec.groups.3.rules.0.for", "five")),
    "inferenceservice: unknown protocol": (ISVC, _set("spec.predictor.model.protocolVersion", "v3")),
    "inferenceservice: no model format": (ISVC, _delete("spec.predictor.model.modelFormat")),
    "inferenceservice: bad probe": (ISVC, _set("spec.predictor.model.readinessProbe.periodSeconds", "15s")),
    "inferenceservice: misspelt storage": (ISVC, _set("spec.predictor.model.storageURI", "s3://x/y")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validators_reject_broken_manifests(case):
    relative, mutate = BROKEN[case]
    (doc,) = load_yaml_docs(DEPLOY / relative)
    assert not validation_errors(doc), "the unbroken manifest must pass"
    broken = copy.deepcopy(doc)
    mutate(broken)
    assert validation_errors(broken), f"{case}: the validator accepted a broken manifest"


def test_crd_schemas_cover_exactly_the_custom_kinds_used():
    custom = {
        (d["apiVersion"], d["kind"])
        for p in MANIFEST_FILES
        for d in load_yaml_docs(p)
        if not re.match(r"^(v1|apps/v1|autoscaling/v2)$", d["apiVersion"])
    }
    assert custom == set(CRD_SCHEMAS)


# --------------------------------------------------------------------------------------------
# agreement with docs/serving.md, docs/scaling.md, docker-compose.yml


def test_triton_flags_agree_with_the_settings_of_docs_serving():
    base = args_by_flag(triton_container(build("base"))["args"])
    cpu = args_by_flag(triton_container(build("cpu"))["args"])
    seen = 0
    for flags, value, why in serving_settings():
        for flag in flags:
            name = flag_name(flag)
            if name in POD_DIFFERS:
                if "embedded server only" in POD_DIFFERS[name]:
                    assert name not in base and name not in cpu, f"{name} is for the embedded server only"
                continue
            if "/" in name:  # "--http-address/--grpc-address/--metrics-address": HTTP stays on loopback
                assert base["--http-address"] == "127.0.0.1", "HTTP must listen on the pod's loopback only"
                continue
            seen += 1
            # the value is in the flag (`--a=b`) or alone in the value column (`--exit-timeout-secs` | 10)
            expected = flag_value(flag)
            number = re.match(r"^(\d+)(?:\s*$|\s+\()", value)
            if expected is None and number:
                expected = number.group(1)
            if "nvidiactl" in value + why:  # only on machines without a GPU
                assert name not in base and cpu.get(name) == expected, f"{flag}: only in overlays/cpu"
                continue
            assert name in base, f"docs/serving.md sets {flag}; the Deployment does not"
            if name in RESTRICTED_FLAGS:  # same APIs and header; the secret differs by design
                assert restricted_parts(base[name]) == restricted_parts(expected or value), name
                continue
            if expected is not None:
                assert base[name] == expected, (
                    f"{name}: Deployment {base[name]!r}, docs/serving.md {expected!r}"
                )
    assert seen >= 8, "docs/serving.md's Settings table was not read"


def test_python_backend_memory_matches_docker_compose():
    compose = yaml.safe_load(COMPOSE.read_text())
    compose_args = args_by_flag(compose["x-triton"]["command"][1:])
    base = args_by_flag(triton_container(build("base"))["args"])
    for name in (
        "--backend-config=python,shm-default-byte-size",
        "--backend-config=python,shm-growth-byte-size",
    ):
        assert base[name] == compose_args[name], name


def test_ports_agree_with_docs_serving():
    match = re.search(r"gRPC [\d.]*:(\d+), HTTP :(\d+), metrics :(\d+)", SERVING_DOC.read_text())
    assert match, "docs/serving.md no longer names smr serve's ports"
    grpc, http, metrics = (int(p) for p in match.groups())
    docs = build("base")
    container = triton_container(docs)
    args = args_by_flag(container["args"])
    assert (int(args["--grpc-port"]), int(args["--http-port"]), int(args["--metrics-port"])) == (
        grpc,
        http,
        metrics,
    )
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": grpc, "metrics": metrics}
    service = one(docs, "Service", "smr-triton")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (grpc, "grpc"),
        "metrics": (metrics, "metrics"),
    }, "the Service exposes gRPC and metrics only; HTTP stays in the pod"
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (target,) = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target.endswith(f":{metrics}")
    kserve = args_by_flag(one(build("kserve"), "InferenceService")["spec"]["predictor"]["model"]["args"])
    assert int(kserve["--metrics-port"]) == metrics


def test_image_agrees_with_docs_scaling_and_is_recent_enough():
    image = backticked(scaling_settings()["image"])[0]
    for name in ("base", "cpu", "s3"):
        assert triton_container(build(name))["image"] == image
    repository, tag = image.split(":")
    assert repository == "nvcr.io/nvidia/tritonserver" and tag.endswith("-py3")
    year, month = (int(x) for x in tag.removesuffix("-py3").split("."))
    assert (year, month) >= MIN_NGC_RELEASE, f"{image}: Triton before 25.07 has known CVEs"
    model = one(build("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    assert model["runtimeVersion"] == tag and model["runtime"] == "kserve-tritonserver"


def test_probes_agree_with_docs_scaling_and_the_probe_script():
    settings = scaling_settings()
    probe = load_probe_module()
    container = triton_container(build("base"))
    ready_cmd, ready_path = backticked(settings["readiness"])[:2]
    live_cmd, live_path = backticked(settings["liveness"])[:2]
    assert container["readinessProbe"]["exec"]["command"] == ready_cmd.split()
    assert container["startupProbe"]["exec"]["command"] == ready_cmd.split()
    assert container["livenessProbe"]["exec"]["command"] == live_cmd.split()
    assert ready_path == f"POST {probe.INFER_PATH}" and live_path == f"GET {probe.LIVE_PATH}"
    http = backticked(settings["HTTP"])[0]
    assert probe.DEFAULT_URL == f"http://{http}"
    args = args_by_flag(container["args"])
    assert f"{args['--http-address']}:{args['--http-port']}" == http
    # the script is mounted where the command runs it, from the generated ConfigMap, unchanged
    spec = one(build("base"), "Deployment")["spec"]["template"]["spec"]
    mount = next(
        m for m in container["volumeMounts"] if m["mountPath"] == str(Path(ready_cmd.split()[1]).parent)
    )
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = one(build("base"), "ConfigMap", volume["configMap"]["name"])
    assert configmap["data"]["probe.py"] == PROBE.read_text()


def test_lockdown_agrees_with_docs_scaling():
    settings = scaling_settings()
    restricted, header = backticked(settings["restricted APIs"])[:2]
    (control,) = backticked(settings["model control"])
    for name in ("base", "cpu", "s3", "kserve"):
        docs = build(name)
        if name == "kserve":
            container = one(docs, "InferenceService")["spec"]["predictor"]["model"]
        else:
            container = triton_container(docs)
        args = args_by_flag(container["args"])
        for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
            assert args[flag] == f"{restricted}:{header}=$(SMR_ADMIN_KEY)", (name, flag)
        assert f"{flag_name(control)}={args[flag_name(control)]}" == control
        env = {e["name"]: e for e in container["env"]}
        assert env["SMR_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "smr-triton-admin",
            "key": "admin-key",
        }
        allowed = {"--allow-metrics"} | ({"--allow-gpu-metrics"} if name == "cpu" else set())
        assert {f for f in args if f.startswith("--allow-")} <= allowed, f"{name}: extra --allow-... flags"
        assert "--model-load-thread-count" not in args and "--load-model" not in args


def test_pods_run_locked_down():
    for name in ("base", "cpu", "s3", "kserve"):
        docs = build(name)
        if name == "kserve":
            pod = one(docs, "InferenceService")["spec"]["predictor"]
            container = pod["model"]
        else:
            pod = one(docs, "Deployment")["spec"]["template"]["spec"]
            container = triton_container(docs)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = container["securityContext"]
        assert sc == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"  # python backend regions
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # writable scratch on a read-only root
        assert all(m.get("readOnly") for p, m in mounts.items() if p not in ("/tmp", "/dev/shm"))
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    namespace = one(build("base"), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_gpu_limits_and_the_cpu_overlay():
    gpu = triton_container(build("base"))["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and "cpu" in gpu["requests"] and "memory" in gpu["limits"]
    cpu_docs = build("cpu")
    cpu = triton_container(cpu_docs)["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"] and cpu["requests"] == gpu["requests"]
    assert "tolerations" not in one(cpu_docs, "Deployment")["spec"]["template"]["spec"]
    model = one(build("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    assert model["resources"] == gpu


def test_s3_overlay_reads_the_repository_from_a_bucket():
    docs = build("s3")
    container = triton_container(docs)
    env = {e["name"]: e for e in container["env"]}
    assert args_by_flag(container["args"])["--model-repository"] == "$(SMR_MODEL_REPOSITORY)"
    assert env["SMR_MODEL_REPOSITORY"]["value"].startswith("s3://")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "smr-model-store", "key": key}
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    assert "/models" not in {m["mountPath"] for m in container["volumeMounts"]}
    # the base reads the same variable from the volume
    base = triton_container(build("base"))
    assert {e["name"]: e.get("value") for e in base["env"]}["SMR_MODEL_REPOSITORY"] == "/models"
    assert {m["mountPath"]: m.get("readOnly") for m in base["volumeMounts"]}["/models"] is True


def test_kserve_runs_the_same_server_settings_and_probes():
    model = one(build("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    container = triton_container(build("base"))
    pod_args = [a for a in container["args"] if not a.startswith(KSERVE_RUNTIME_FLAGS)]
    assert model["args"] == pod_args
    assert model["protocolVersion"] in ("v2", "grpc-v2") and model["modelFormat"]["name"] == "triton"
    assert model["storageUri"].startswith(("s3://", "pvc://", "gs://"))
    kserve_http = ["--url", "http://127.0.0.1:8080"]  # the kserve-tritonserver runtime's --http-port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        expected = copy.deepcopy(container[probe])
        expected["exec"]["command"] += kserve_http
        assert model[probe] == expected, probe


# --------------------------------------------------------------------------------------------
# monitoring and autoscaling


def test_prometheusrule_carries_exactly_smrs_rules():
    rule = one(build("base"), "PrometheusRule")
    assert rule["spec"]["groups"] == rules_groups(), (
        "deploy/kubernetes/base/prometheusrule.yaml differs from serving/prometheus/rules.yml; "
        "run `python deploy/kubernetes/sync_prometheusrule.py`"
    )


def test_prometheusrule_comparison_can_fail(tmp_path):
    """The generator renders rules.yml; a changed expression makes the comparison above fail."""
    spec = importlib.util.spec_from_file_location("smr_sync_rules", KUBERNETES / "sync_prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (PROMETHEUS_DIR / "rules.yml").read_text()
    rendered = yaml.safe_load(module.render(text))
    assert rendered == yaml.safe_load((KUBERNETES / "base" / "prometheusrule.yaml").read_text())
    changed = yaml.safe_load(module.render(text.replace("> 2.5", "> 3", 1)))
    assert changed["spec"]["groups"] != rules_groups()


def test_servicemonitor_scrapes_like_prometheus_yml():
    docs = build("base")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # the operator names the job after the Service label jobLabel points to: the TritonDown alert's job
    job_name = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == job_name]  # Triton, not smr serve
    assert endpoint["interval"] == prometheus["global"]["scrape_interval"]
    assert endpoint["path"] == job["metrics_path"]
    alerts = [r["expr"] for g in rules_groups() for r in g["rules"] if r.get("alert") == "TritonDown"]
    assert alerts == [f'up{{job="{job_name}"}} == 0']


def test_hpa_scales_on_queue_time_through_the_adapter_rule():
    hpa = one(build("base"), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "smr-triton",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert metric["pods"]["metric"]["selector"]["matchLabels"] == {"model": "smr_backbone"}
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # the adapter's query is the recording rule model:queue_seconds:avg1m, per pod instead of per model
    expected = recording_rule("model:queue_seconds:avg1m").replace("sum by (model)", "sum by (<<.GroupBy>>)")
    expected = re.sub(r"\((nv_inference_[a-z_]+)\[", r"(\1{<<.LabelMatchers>>}[", expected)
    assert normalise_promql(rule["metricsQuery"]) == normalise_promql(expected)
    assert re.match(r"^\^?" + re.escape(rule["seriesQuery"].split("{")[0]), rule["name"]["matches"])
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (kserve_hpa,) = [d for d in build("kserve") if d["kind"] == "HorizontalPodAutoscaler"]
    assert kserve_hpa["spec"]["scaleTargetRef"]["name"] == "smr-predictor"
    assert kserve_hpa["spec"]["metrics"] == hpa["spec"]["metrics"]
    isvc = one(build("kserve"), "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"


def test_docs_scaling_names_the_hpa_metric_and_target():
    text = SCALING_DOC.read_text()
    hpa = one(build("base"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert f"`{metric['pods']['metric']['name']}`" in text
    assert f"`{metric['pods']['target']['averageValue']}`" in text
    assert "benchmarks/gpu_check.sh" in text
    assert "## Many servers from one client" in text and "## Many slides on a Ray cluster" in text
    assert "../shared" not in text and "DESIGN.md" not in text

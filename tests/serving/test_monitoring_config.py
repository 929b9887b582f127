"""Prometheus config and rules (promtool), Grafana dashboard and docker-compose.yml, checked statically."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from serving_helpers import GRAFANA_DIR, PROMETHEUS_DIR, REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
DASHBOARD = GRAFANA_DIR / "dashboards" / "smr.json"
# Prometheus metrics SMR's pieces expose: Triton's own (nv_*), the scrape's `up`, and the custom
# metrics of smr_postprocess (their presence on a real server is checked in test_prometheus.py)
SOURCE_METRIC = re.compile(r"^(nv_[a-z_]+|up|smr_[a-z_]+)$")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "without", "on", "ignoring",
    "group_left", "group_right", "histogram_quantile", "le", "and", "or", "unless", "bool", "offset",
    "label_values", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "vector", "scalar", "time",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers not followed by '(' that are not keywords/labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word, rest = match.group(0), expr[match.end() :].lstrip()
        if rest.startswith("(") or word in PROMQL_WORDS or re.fullmatch(r"\d+e\d+|e\d+", word):
            continue
        names.add(word)
    return names


def _rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


# --------------------------------------------------------------------------------------------
# Prometheus


@pytest.mark.integration
def test_promtool_accepts_the_config_and_its_rules(promtool, tmp_path):
    # check the config where docker-compose.yml puts it: beside rules.yml
    for name in ("prometheus.yml", "rules.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    cmd = [promtool, "check", "config", str(tmp_path / "prometheus.yml")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


@pytest.mark.integration
def test_promtool_rule_unit_tests_pass(promtool):
    cmd = [promtool, "test", "rules", "rules_test.yml"]
    done = subprocess.run(cmd, cwd=PROMETHEUS_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


@pytest.mark.integration
def test_promtool_rule_tests_can_fail(promtool, tmp_path):
    """A wrong expectation makes promtool fail, so the test above is not vacuous."""
    shutil.copy(PROMETHEUS_DIR / "rules.yml", tmp_path / "rules.yml")
    text = (PROMETHEUS_DIR / "rules_test.yml").read_text()
    assert "value: 48" in text
    (tmp_path / "rules_test.yml").write_text(text.replace("value: 48", "value: 47", 1))
    done = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode != 0 and "model:batch_size:avg1m" in done.stdout + done.stderr


def test_every_recording_rule_is_unit_tested():
    tested = set()
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    for case in doc["tests"]:
        for expr_test in case.get("promql_expr_test", []):
            tested |= promql_metric_names(expr_test["expr"])
        tested |= {a["alertname"] for a in case.get("alert_rule_test", [])}
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    untested = (recorded_names() - tested - {"model:execution_rate:rate1m"}) | (alerts - tested)
    # execution_rate is exercised through batch_size (inference_rate / execution_rate)
    assert not untested, f"rules without a promtool unit test: {sorted(untested)}"


def test_rules_read_only_metrics_that_exist():
    recorded = recorded_names()
    for rule in _rules():
        for name in promql_metric_names(rule["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in recorded or SOURCE_METRIC.match(base), (
                f"{rule.get('record') or rule['alert']}: {name}"
            )
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert any("latency" in rule["alert"].lower() for rule in alerts)


def test_promql_metric_name_extraction():
    names = promql_metric_names(
        'histogram_quantile(0.5, sum by (lineage, le) (rate(smr_curve_position_bucket{lineage="a b"}[5m])))'
        " / ignoring (class) group_left sum (x:y:z) / 1e6"
    )
    assert names == {"smr_curve_position_bucket", "x:y:z"}


# --------------------------------------------------------------------------------------------
# Grafana


def test_dashboard_panels_reference_recorded_or_exposed_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    recorded = recorded_names()
    exprs = dashboard_exprs(dashboard)
    assert exprs
    used_rules = set()
    for expr in exprs:
        names = promql_metric_names(expr.replace("$__range", "5m").replace("$lineage", "x"))
        assert names, expr
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in recorded or SOURCE_METRIC.match(base), f"panel expression {expr!r} reads {name}"
            used_rules |= {name} & recorded
    # the views the dashboard promises
    for needed in (
        "model:inference_rate:rate1m",
        "model:request_latency_seconds:p95",
        "model:queue_seconds:avg1m",
        "model:compute_seconds:avg1m",
        "model:batch_size:avg1m",
        "class:cells_classified:rate5m",
    ):
        assert needed in used_rules, needed
    assert any("smr_curve_position_bucket" in e for e in exprs)


def test_dashboard_is_well_formed_and_uses_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: unknown variable ${var}"
        if panel.get("repeat"):
            assert panel["repeat"] in variables
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "smr.yml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"


# --------------------------------------------------------------------------------------------
# docker-compose.yml


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])((?:[^{}]|\{[^}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?error} (raises ValueError(error))."""

    def value(match: re.Match) -> str:
        name, kind, arg = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise ValueError(f"{name}: {arg}")
        return arg if kind == "-" else ""

    return _VARIABLE.sub(value, text)


def _port_specs(service: dict, env: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, variables interpolated."""
    out = []
    for spec in service.get("ports", []):
        parts = interpolate(str(spec), env or {}).rsplit(":", 2)
        address = parts[0] if len(parts) == 3 else "0.0.0.0"  # compose's default: every interface
        out.append((address, int(parts[-2] if len(parts) > 1 else parts[-1]), int(parts[-1].split("/")[0])))
    return out


def _published(service: dict) -> dict[int, int]:
    """container port -> host port"""
    return {container: host for _, host, container in _port_specs(service)}


def test_compose_mounts_exist_in_the_repository():
    compose = _compose()
    named_volumes = set(compose.get("volumes", {}) or {})
    checked = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in named_volumes:
                continue
            path = (REPO_ROOT / source).resolve()
            assert path.exists(), f"service {name} mounts {source}, which is not in the repository"
            assert REPO_ROOT in path.parents, f"service {name} mounts {source} from outside the repository"
            checked += 1
    assert checked >= 5
    # the container paths the configs refer to are where the mounts put them
    prometheus = compose["services"]["prometheus"]
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_in_container = config_arg.split("=", 1)[1]
    assert Path(mounted[config_in_container]).name == "prometheus.yml"
    for rule_file in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]:
        assert str(Path(config_in_container).parent / rule_file) in mounted
    grafana = compose["services"]["grafana"]
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "smr.yml").read_text())
    dashboards_in_container = provider["providers"][0]["options"]["path"]
    assert (REPO_ROOT / grafana_mounts[dashboards_in_container] / DASHBOARD.name).is_file()
    assert grafana_mounts["/etc/grafana/provisioning"].endswith("serving/grafana/provisioning")


def test_compose_triton_serves_the_repository_and_prometheus_scrapes_it():
    compose = _compose()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "triton"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    tritons = {n: s for n, s in compose["services"].items() if "tritonserver" in s["image"]}
    assert set(tritons) == {"triton", "triton-gpu"}
    assert tritons["triton"]["profiles"] != tritons["triton-gpu"]["profiles"]  # one at a time
    gpu = tritons["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name, service in tritons.items():
        command = service["command"]
        metrics_port = int(next(a for a in command if a.startswith("--metrics-port=")).split("=")[1])
        assert "--metrics-config=summary_latencies=true" in command
        aliases = service["networks"]["default"]["aliases"]
        assert targets == [f"{alias}:{metrics_port}" for alias in aliases if alias == "triton"], name
        assert metrics_port in _published(service)
        repo_mount = next(v for v in service["volumes"] if v.split(":")[1] == "/models")
        assert "--model-repository=/models" in command
        assert (REPO_ROOT / repo_mount.split(":")[0]).resolve() == REPO_ROOT / "model_repository"
    assert 9090 in _published(compose["services"]["prometheus"])
    source = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"].endswith(":9090") and "prometheus" in compose["services"]


# the backends smr_backbone may use in the NGC image: its python backend's stub has neither
# onnxruntime nor openvino installed, so a python-backend backbone cannot run there
NGC_BACKBONE_BACKENDS = {"onnxruntime_onnx", "openvino"}


def test_compose_says_how_to_export_for_each_backbone_backend_of_its_image():
    from smr.export.pbtxt import RUNTIMES, ServingOptions, backbone_config

    text = COMPOSE.read_text()
    header = text[: text.index("x-triton:")]
    runtimes = re.findall(
        r"^#\s+smr export RUN --repository model_repository --runtime ([\w-]+)", header, re.M
    )
    assert runtimes == ["onnxruntime", "openvino-backend"]
    for runtime in runtimes:
        assert runtime in RUNTIMES
        config = backbone_config(image_size=64, embedding_dim=8, options=ServingOptions(runtime=runtime))
        assert (config.backend or config.platform) in NGC_BACKBONE_BACKENDS, runtime
    # and what it cannot serve is named as such
    python_backends = [r for r in RUNTIMES if r not in runtimes]
    assert python_backends and f"Not --runtime {' or '.join(sorted(python_backends))}:" in " ".join(
        line.lstrip("# ") for line in header.splitlines()
    )
    assert "not an export target" not in header


@pytest.mark.parametrize("service", ["triton", "triton-gpu", "prometheus", "grafana"])
def test_compose_images_are_pinned_to_tags(service):
    image = _compose()["services"][service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and "/" not in tag and tag != "latest", image
    if "tritonserver" in image:
        # 25.07 (Triton 2.59) fixed CVE-2025-23310 (a chunked HTTP request crashes the server) and the
        # python backend's shared-memory chain (CVE-2025-23319/23320/23334)
        match = re.fullmatch(r"(\d{2})\.(\d{2})-py3", tag)
        assert match and (int(match[1]), int(match[2])) >= (25, 7), image


def test_compose_publishes_every_port_on_loopback_unless_asked():
    compose = _compose()
    published = [
        (name, spec) for name, service in compose["services"].items() for spec in _port_specs(service)
    ]
    assert len(published) >= 5
    for name, (address, _, _) in published:
        assert address == "127.0.0.1", f"{name} publishes on {address}"
    # the user opts in with SMR_BIND
    for name, service in compose["services"].items():
        for address, _, _ in _port_specs(service, {"SMR_BIND": "0.0.0.0"}):
            assert address == "0.0.0.0", name


def test_compose_has_no_prometheus_lifecycle_api():
    assert "enable-lifecycle" not in COMPOSE.read_text()
    for name, service in _compose()["services"].items():
        assert not any("lifecycle" in str(arg) for arg in service.get("command", [])), name


def test_compose_grafana_refuses_to_start_without_an_admin_password():
    grafana = _compose()["services"]["grafana"]
    environment = grafana["environment"]
    password = environment["GF_SECURITY_ADMIN_PASSWORD"]
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(password, {})
    assert interpolate(password, {"GRAFANA_ADMIN_PASSWORD": "s3cret-9f"}) == "s3cret-9f"
    assert environment.get("GF_SECURITY_ADMIN_USER", "admin") == "admin"


def test_compose_triton_restricts_the_admin_apis_with_a_required_key():
    for name, service in _compose()["services"].items():
        if "tritonserver" not in service["image"]:
            continue
        restricted = [a for a in service["command"] if "restricted" in a]
        assert {a.split("=", 1)[0] for a in restricted} == {
            "--grpc-restricted-protocol",
            "--http-restricted-api",
        }
        for arg in restricted:
            apis = arg.split("=", 1)[1].split(":", 1)[0].split(",")
            assert set(apis) == {"shared-memory", "model-repository", "logging", "trace"}, name
            with pytest.raises(ValueError, match="SMR_ADMIN_KEY"):
                interpolate(arg, {})
            assert interpolate(arg, {"SMR_ADMIN_KEY": "k"}).endswith(":smr-admin-key=k")


def test_interpolation_follows_compose():
    assert interpolate("${A:-1.2.3.4}:80:80", {}) == "1.2.3.4:80:80"
    assert interpolate("${A:-1.2.3.4}:80:80", {"A": "::1"}) == "::1:80:80"
    assert interpolate("x${A}y", {}) == "xy"
    with pytest.raises(ValueError, match="A: needed"):
        interpolate("${A:?needed}", {})

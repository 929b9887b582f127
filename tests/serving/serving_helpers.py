"""Helpers of the serving tests (plain functions; the fixtures that use them are in conftest.py).

tests/ folders are not packages and several hold a ``conftest.py``, so test modules import these
helpers by this module's unique name (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from smr.serving.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "serving" / "prometheus"
GRAFANA_DIR = REPO_ROOT / "serving" / "grafana"
SMR = str(Path(sys.executable).parent / "smr")

# A python model in the style of SMR's: answers every request of an ``execute``, reads and writes
# tensors through DLPack (which, unlike as_numpy()/Tensor(), is numpy-2 safe in the 2.51 stub).
TOY_MODEL = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            if "{fail}":
                raise RuntimeError("{fail}")

        def execute(self, requests):
            responses = []
            for request in requests:
                x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "X"))
                y = np.ascontiguousarray(x * 2.0 + 1.0, dtype=np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("Y", y)]))
            return responses
    """
)

TOY_CONFIG = textwrap.dedent(
    """
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
    output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
    instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    dynamic_batching {{ }}
    """
)


def write_toy_model(repo: Path, name: str = "toy", fail: str = "") -> Path:
    """A python-backend model ``name``: Y = 2 X + 1 on FP32 [4]; ``fail`` makes it refuse to load."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(TOY_CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(TOY_MODEL.replace("{fail}", fail))
    return repo


# --------------------------------------------------------------------------------------------
# The exported repository and its offline reference


def pbc_dev_dir() -> Path:
    """The development data set, found as tests/conftest.py's ``pbc_dev`` fixture finds it."""
    env = os.environ.get("SMR_SHARED_DATA")
    path = (Path(env) if env else REPO_ROOT.parent / "shared" / "data") / "pbc-dev"
    if not (path / "lineages.toml").is_file():
        pytest.fail(f"development data not found at {path}; set SMR_SHARED_DATA to the shared/data folder")
    return path


def export_untrained_repository(tmp: Path, data: Path | None = None, image_size: int = 224) -> Path:
    """``smr export --runtime python`` of an untrained run written by the export tests' run helper.

    The run has two lineages (so MATURITY has two columns) and an SVM fitted on random unit
    vectors: serving is about the graph and the plumbing, not about accuracy. ``data``: the
    images for the run's split (default: the development data set).
    """
    data = data or pbc_dev_dir()
    export_tests = str(REPO_ROOT / "tests" / "export")
    if export_tests not in sys.path:
        sys.path.append(export_tests)
    from export_helpers import TWO_LINEAGES, make_run

    run = make_run(
        tmp / "run", data, spec=TWO_LINEAGES, image_size=image_size, n_train=4, n_val=2, real_svm=False
    )
    repo = tmp / "repository"
    cmd = [SMR, "export", str(run.path), "--repository", str(repo), "--runtime", "python"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"smr export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return repo


class OfflinePipeline:
    """The reference: onnxruntime on model.onnx, the numpy SVM, the core's curve projection, and the
    stages and review flags by ``smr.core.review`` (the rule a client applies to outputs it lacks)."""

    EDGE = 1e-4  # a position this close to a stage boundary, a gap this close to the margin: either way

    def __init__(self, repo: Path) -> None:
        import onnxruntime as ort

        from smr.core.curves_json import curves_from_json
        from smr.core.review import class_stages
        from smr.core.svm import RbfSvm
        from smr.export.pbtxt import parse_config

        self.session = ort.InferenceSession(
            str(repo / "smr_backbone" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        post = repo / "smr_postprocess" / "1"
        self.svm = RbfSvm.from_dict(json.loads((post / "svm.json").read_text()))
        self.curves = curves_from_json(json.loads((post / "curves.json").read_text()))
        self.class_stage = class_stages(list(self.svm.classes), [lc.classes for lc in self.curves])
        config = parse_config(repo / "smr_postprocess" / "config.pbtxt")
        self.margin = float(config.parameters["review_margin"].string_value)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The ensemble's outputs by name, and ``review_clear``: the cells whose STAGE and BORDERLINE
        no float rounding can change (not on a stage boundary, a tie or the margin)."""
        from smr.core.curves_json import project_all
        from smr.core.review import review

        embedding = self.session.run(["EMBEDDING"], {"IMAGE": images})[0]
        probabilities = self.svm.predict_proba(embedding.astype(np.float64))
        t, distance = project_all(self.curves, embedding.astype(np.float64))
        class_id = probabilities.argmax(axis=1)
        boundaries = [lc.boundaries for lc in self.curves]
        cells = review(probabilities, class_id, t, boundaries, self.class_stage, self.margin)
        near = [np.abs(t[:, [j]] - b[None, :]).min(axis=1) <= self.EDGE for j, b in enumerate(boundaries)]
        top2 = np.sort(probabilities, axis=1)[:, -2:]
        clear = ~np.any(near, axis=0) & (top2[:, 1] - top2[:, 0] > self.EDGE)
        return {
            "EMBEDDING": embedding,
            "PROBABILITIES": probabilities,
            "CLASS_ID": class_id[:, None],
            "MATURITY": t,
            "CURVE_DISTANCE": distance,
            "STAGE": cells.stage,
            "BORDERLINE": cells.flags[:, None],
            "review_clear": clear & (np.abs(cells.gap - self.margin) > self.EDGE),
        }


# --------------------------------------------------------------------------------------------
# Metrics and Prometheus


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition, names as exposed."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of ``name``: sorted label pairs -> value."""
    return {tuple(sorted(labels.items())): value for n, labels, value in parse_exposition(text) if n == name}


def exposed_metric_names(text: str) -> set[str]:
    """Every sample name exposed (histograms give _bucket/_sum/_count, summaries _sum/_count)."""
    return {name for name, _, _ in parse_exposition(text)}


def prometheus_config(
    targets: list[str], scrape_interval: str = "1s", supervisor_targets: list[str] | None = None
) -> dict:
    """serving/prometheus/prometheus.yml with the test's targets, a short interval, absolute rule paths.

    ``targets``: Triton metrics endpoints (job triton); ``supervisor_targets``: `smr serve`
    supervisors' health endpoints (job smr_serve; the job is dropped without them)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    jobs["triton"]["static_configs"] = [{"targets": targets}]
    if supervisor_targets:
        jobs["smr_serve"]["static_configs"] = [{"targets": supervisor_targets}]
    else:
        config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] != "smr_serve"]
    return config


class PrometheusProcess:
    """A real ``prometheus`` with its own config and data folder on a free loopback port."""

    def __init__(self, config: dict, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus is not installed (Debian package 'prometheus'; `make system-deps` installs it)"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus not ready after 60 s:\n{self.log_path.read_text()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, predicate, timeout: float = 60.0) -> list[dict]:
        """Poll ``expr`` until ``predicate(result)`` holds; fail with the last result otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"{expr} did not reach the expected value in {timeout:.0f} s; last: {result}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0

"""Fixtures of the serving tests: tiny hand-made repositories, a real exported one, real servers.

``smr_server`` (session) is a real ``tritonserver`` on a real ``smr export --runtime python`` of an
untrained run at 224 px, on random loopback ports; the helpers behind it are in serving_helpers.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from smr.serving.launcher import TritonProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers, for the test modules too
from serving_helpers import OfflinePipeline, export_untrained_repository, write_toy_model  # noqa: E402


@pytest.fixture(scope="session")
def toy_repository(tmp_path_factory):
    return write_toy_model(tmp_path_factory.mktemp("toy-repo"))


@pytest.fixture(scope="session")
def toy_server(toy_repository):
    with TritonProcess(toy_repository, model="toy", check_manifest=False, ready_timeout=120) as server:
        yield server


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory, pbc_dev):
    """``smr export --runtime python`` (max batch 64) of an untrained 224 px run, once per session."""
    return export_untrained_repository(tmp_path_factory.mktemp("smr-export"), pbc_dev)


@pytest.fixture(scope="session")
def smr_server(exported_repository):
    """A real tritonserver serving the exported ``smr`` ensemble (fails with its log if it dies)."""
    with TritonProcess(exported_repository, ready_timeout=300) as server:
        yield server


@pytest.fixture(scope="session")
def offline_pipeline(exported_repository):
    return OfflinePipeline(exported_repository)


@pytest.fixture(scope="session")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus'; `make system-deps` installs it)")
    return binary

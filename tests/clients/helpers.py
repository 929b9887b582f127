"""Helpers shared by the client tests: a served model's config in the form tritonclient returns it."""

from __future__ import annotations

import json

import numpy as np
from google.protobuf.json_format import MessageToJson
from tritonclient.grpc import model_config_pb2 as mc

from smr.clients.model_info import ModelInfo, model_info_from_config
from smr.core.lineages import PAPER_SPEC, LineageSpec
from smr.core.targets import stage_boundaries, uniform_targets


def lineage_docs(spec: LineageSpec, targets: dict[str, np.ndarray] | None = None) -> list[dict]:
    docs = []
    for lin in spec.lineages:
        t = uniform_targets(len(lin.classes)) if targets is None else np.asarray(targets[lin.name])
        docs.append(
            {
                "name": lin.name,
                "classes": list(lin.classes),
                "targets": t.tolist(),
                "boundaries": stage_boundaries(t).tolist(),
            }
        )
    return docs


def config_json(
    spec: LineageSpec = PAPER_SPEC, *, image_size: int = 64, max_batch_size: int = 8, targets=None
) -> dict:
    """The ensemble's ModelConfig as ``get_model_config(as_json=True)`` returns it (via protobuf)."""
    config = mc.ModelConfig(name="smr", platform="ensemble", max_batch_size=max_batch_size)
    tensor = config.input.add()
    tensor.name, tensor.data_type = "IMAGE", mc.TYPE_UINT8
    tensor.dims.extend([image_size, image_size, 3])
    config.parameters["classes"].string_value = json.dumps(list(spec.classes))
    config.parameters["lineages"].string_value = json.dumps(lineage_docs(spec, targets))
    config.parameters["image_size"].string_value = str(image_size)
    config.parameters["embedding_dim"].string_value = "256"
    return {"config": json.loads(MessageToJson(config, preserving_proto_field_name=True))}


def paper_info(**kwargs) -> ModelInfo:
    return model_info_from_config(config_json(**kwargs))


def chromium_screenshot(
    html_path, png_path, *, width: int = 1200, height: int = 2600, timeout: float = 90
) -> None:
    """Render ``html_path`` in headless Chromium (Debian's ``chromium``) and save a screenshot."""
    import shutil
    import subprocess

    import pytest

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.fail("headless Chromium is needed to check the report: apt-get install -y chromium")
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        f"--user-data-dir={png_path.parent / 'chromium-profile'}",
        f"--screenshot={png_path}", f"--window-size={width},{height}", f"file://{html_path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png_path.is_file():
        pytest.fail(f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}")


def screenshot_stats(png_path) -> dict:
    """How much a screenshot shows: share of non-white pixels, colourful pixels, distinct colours."""
    from PIL import Image

    arr = np.asarray(Image.open(png_path).convert("RGB")).astype(np.int16)
    non_white = (arr.min(axis=2) < 235).mean()
    colourful = ((arr.max(axis=2) - arr.min(axis=2)) > 60).mean()
    distinct = len(np.unique(arr.reshape(-1, 3)[::7], axis=0))
    return {"non_white": float(non_white), "colourful": float(colourful), "distinct": distinct,
            "shape": arr.shape}  # fmt: skip

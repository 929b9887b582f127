"""How the backbone engine schedules the graph: config parameters, OpenVINO streams, ORT spinning.

The served ``smr_backbone`` and ``smr bench``'s in-process baseline read the same parameters, so
both sides run the graph the same way; a batch split across OpenVINO streams gives the rows of one
stream, in order.
"""

from __future__ import annotations

import numpy as np
import pytest

from smr.serving.bench import backbone_engine
from smr.serving.triton_models.engines import (
    BackboneEngine,
    openvino_config,
    scheduling_options,
    split_bounds,
)

SIZE = 8


def _row_graph(path) -> None:
    """uint8 (N, S, S, 3) -> float32 (N, 4): each row its own projection, a stand-in backbone."""
    import onnx
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["IMAGE"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["x", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["EMBEDDING"]),
        ],
        "rows",
        [helper.make_tensor_value_info("IMAGE", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, SIZE * SIZE * 3]),
            helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.ravel()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines") / "model.onnx"
    _row_graph(path)
    return path


def test_scheduling_options_from_config_parameters():
    params = {"intra_op_threads": "0", "streams": "2", "cpu_pinning": "false", "spinning": "True"}
    assert scheduling_options(lambda key: params.get(key, "")) == {
        "threads": 0,
        "streams": 2,
        "pinning": False,
        "spinning": True,
    }
    assert scheduling_options(lambda key: "") == {}  # nothing set: the engine's defaults
    with pytest.raises(ValueError, match="cpu_pinning: 'maybe' is not a boolean"):
        scheduling_options(lambda key: "maybe" if key == "cpu_pinning" else "")


def test_openvino_config_per_stream_count():
    one = openvino_config("bf16", 0, 1, None)
    assert one["PERFORMANCE_HINT"] == "LATENCY" and one["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "NUM_STREAMS" not in one and "INFERENCE_NUM_THREADS" not in one
    assert "ENABLE_CPU_PINNING" not in one  # OpenVINO's own default
    auto = openvino_config("fp32", 0, 0, None)
    assert auto["PERFORMANCE_HINT"] == "THROUGHPUT" and "NUM_STREAMS" not in auto  # OpenVINO's count
    two = openvino_config("fp32", 2, 2, False)
    assert two["PERFORMANCE_HINT"] == "THROUGHPUT" and two["NUM_STREAMS"] == 2
    assert two["INFERENCE_NUM_THREADS"] == 2 and two["ENABLE_CPU_PINNING"] is False


def test_split_bounds_give_every_stream_a_part_and_more_parts_of_four():
    assert split_bounds(1, 2, 4) == [0, 1]
    assert split_bounds(3, 2, 4) == [0, 1, 3]
    assert split_bounds(8, 2, 4) == [0, 4, 8]
    assert split_bounds(16, 2, 4) == [0, 4, 8, 12, 16]
    assert split_bounds(17, 2, 4) == [0, 4, 8, 12, 17]
    assert split_bounds(64, 2, 4) == [0, 16, 32, 48, 64]
    assert split_bounds(64, 4, 8) == [0, 8, 16, 24, 32, 40, 48, 56, 64]
    for n in range(1, 70):
        bounds = split_bounds(n, 2, 4)
        sizes = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        assert bounds[0] == 0 and bounds[-1] == n and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_openvino_streams_answer_every_batch_size_row_for_row(graph):
    images = np.random.default_rng(1).integers(0, 256, size=(17, SIZE, SIZE, 3), dtype=np.uint8)
    single = BackboneEngine(graph, "openvino", "fp32", streams=1)
    split = BackboneEngine(graph, "openvino", "fp32", streams=2, threads=2, pinning=False)
    assert single.settings["num_streams"] == 1
    assert split.settings["num_streams"] == 2 and split.settings["enable_cpu_pinning"] is False
    assert "num_streams 2" in split.describe()
    default = BackboneEngine(graph, "openvino", "fp32")  # OpenVINO's stream count for THROUGHPUT
    assert default.settings["num_streams"] >= 1
    np.testing.assert_allclose(default(images), single(images), rtol=1e-6, atol=1e-4)
    for n in (1, 2, 3, 16, 17):
        got = split(images[:n])
        assert got.shape == (n, 4) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, single(images[:n]), rtol=1e-6, atol=1e-4)
    first = split(images[:4])
    split(images[4:8])  # the requests' output memory is reused: an answer must not change after it
    np.testing.assert_allclose(first, single(images[:4]), rtol=1e-6, atol=1e-4)


def test_onnxruntime_spinning_is_a_setting(graph):
    images = np.random.default_rng(2).integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    quiet = BackboneEngine(graph, "onnxruntime", "fp32", spinning=False, threads=1)
    spinning = BackboneEngine(graph, "onnxruntime", "fp32", spinning=True, threads=1)
    assert quiet.settings["spinning"] is False and spinning.settings["spinning"] is True
    np.testing.assert_array_equal(quiet(images), spinning(images))


def test_the_baseline_runs_the_served_models_scheduling(graph, tmp_path):
    folder = tmp_path / "repo" / "smr_backbone"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(graph.read_bytes())
    params = {"engine": "openvino", "precision": "fp32", "streams": "2", "cpu_pinning": "false"}
    (folder / "config.pbtxt").write_text(
        'name: "smr_backbone"\nbackend: "python"\nmax_batch_size: 8\n'
        + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    )
    engine = backbone_engine(tmp_path / "repo")
    assert engine.engine == "openvino" and engine.settings["num_streams"] == 2
    assert engine.settings["enable_cpu_pinning"] is False

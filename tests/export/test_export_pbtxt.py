"""Config builders and serving options (no export needed)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from smr.export.pbtxt import ServingOptions, backbone_config, ensemble_config, postprocess_config, to_text


def _roundtrip(config: mc.ModelConfig) -> mc.ModelConfig:
    return text_format.Parse(to_text(config), mc.ModelConfig())


def test_tensorrt_gpu_backbone():
    options = ServingOptions(tensorrt="fp16", instance_kind="gpu", instances=2, max_batch_size=256)
    config = _roundtrip(backbone_config(image_size=224, embedding_dim=256, options=options))
    assert config.platform == "onnxruntime_onnx"
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]
    assert accelerators[0].parameters["precision_mode"] == "FP16"
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert config.max_batch_size == 256


def test_postprocess_stays_on_cpu_and_warms_up_with_zeros():
    options = ServingOptions(instance_kind="gpu", warmup_batch_sizes=(1, 16))
    config = _roundtrip(postprocess_config(embedding_dim=256, n_classes=15, n_lineages=2, options=options))
    assert config.backend == "python"
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert [w.batch_size for w in config.model_warmup] == [1, 16]
    assert all(w.inputs["EMBEDDING"].zero_data for w in config.model_warmup)
    assert {o.name: list(o.dims) for o in config.output} == {
        "PROBABILITIES": [15],
        "CLASS_ID": [1],
        "MATURITY": [2],
        "CURVE_DISTANCE": [2],
        "STAGE": [2],
        "BORDERLINE": [1],
        "EMBEDDING_OUT": [256],
    }
    assert config.parameters["review_margin"].string_value == "0.05"  # the clients' default margin


def test_the_review_margin_is_written_for_the_postprocess_and_the_ensemble():
    options = ServingOptions()
    post = postprocess_config(embedding_dim=8, n_classes=3, n_lineages=1, options=options, review_margin=0.1)
    lineage = {"name": "l", "classes": ["a", "b"], "targets": [0.0, 1.0], "boundaries": [0.5]}
    ensemble = ensemble_config(
        image_size=64, embedding_dim=8, classes=["a", "b", "c"], lineages=[lineage], options=options,
        review_margin=0.1,
    )  # fmt: skip
    assert post.parameters["review_margin"].string_value == "0.1"
    assert ensemble.parameters["review_margin"].string_value == "0.1"
    with pytest.raises(ValueError, match="review margin 1.5 must lie in"):
        postprocess_config(embedding_dim=8, n_classes=3, n_lineages=1, options=options, review_margin=1.5)


def test_the_ensemble_outputs_are_the_contracts_in_its_order():
    from smr.core.contract import ENSEMBLE_OUTPUTS
    from smr.export.tensors import ensemble_outputs

    assert tuple(s.name for s in ensemble_outputs(3, 2, 8)) == ENSEMBLE_OUTPUTS


def test_python_runtime_backbone_parameters():
    options = ServingOptions(runtime="python", intra_op_threads=2)
    config = _roundtrip(backbone_config(image_size=96, embedding_dim=256, options=options))
    assert config.backend == "python" and not config.platform
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {
        "onnx_file": "model.onnx",
        "engine": "onnxruntime",
        "precision": "fp32",
        "cpu_features": "",
        "intra_op_threads": "2",
        "execution_providers": "CPUExecutionProvider",
    }
    assert list(config.input[0].dims) == [96, 96, 3]
    assert config.model_warmup[0].inputs["IMAGE"].random_data


def test_ensemble_has_no_scheduling_of_its_own():
    config = _roundtrip(
        ensemble_config(
            image_size=64,
            embedding_dim=256,
            classes=["a", "b", "c"],
            lineages=[{"name": "l", "classes": ["a", "b"], "targets": [0.0, 1.0], "boundaries": [0.5]}],
            options=ServingOptions(max_batch_size=32),
        )
    )
    assert config.platform == "ensemble" and config.max_batch_size == 32
    assert not config.instance_group and not config.HasField("dynamic_batching") and not config.model_warmup


def test_no_step_reads_an_ensemble_output():
    """An ensemble output that a step also reads is dropped when the client does not request it."""
    config = ensemble_config(
        image_size=64,
        embedding_dim=8,
        classes=["a", "b"],
        lineages=[{"name": "l", "classes": ["a", "b"], "targets": [0.0, 1.0], "boundaries": [0.5]}],
        options=ServingOptions(),
    )
    outputs = {o.name for o in config.output}
    backbone, post = config.ensemble_scheduling.step
    read = set(backbone.input_map.values()) | set(post.input_map.values())
    assert not read & outputs
    assert backbone.output_map["EMBEDDING"] == post.input_map["EMBEDDING"]
    assert post.output_map["EMBEDDING_OUT"] == "EMBEDDING"
    assert set(post.output_map.values()) == outputs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ServingOptions(runtime="tensorflow"), "choose one of: onnxruntime, python"),
        (ServingOptions(tensorrt="int4", instance_kind="gpu"), "choose one of: fp16, fp32"),
        (ServingOptions(runtime="openvino", tensorrt="fp16", instance_kind="gpu"), "needs --runtime"),
        (ServingOptions(tensorrt="fp16"), "--instance-kind gpu"),
        (ServingOptions(instance_kind="tpu"), "choose one of: cpu, gpu"),
        (ServingOptions(max_batch_size=0), "max batch size 0"),
        (ServingOptions(warmup_batch_sizes=(128,)), "warm-up batch sizes [128]"),
    ],
)
def test_invalid_options_name_the_valid_choices(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        options.validate()

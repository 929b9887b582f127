"""``smr export --runtime openvino-backend``: ``smr_backbone`` on Triton's own openvino backend.

Nothing here can start that backend (it ships in the NGC image, not in the nvidia-pytriton wheel):
the configs are checked against what the backend reads (its parameters and their values, the model
file name, the batch layout), the precision check against what the backend computes, and the
repository against ``smr export --check`` and ``smr serve``'s pre-start check.
"""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

import smr.export.openvino_backend as OV
from smr.cli import main
from smr.core import contract as C
from smr.core.svm import RbfSvm
from smr.export.check import check_repository
from smr.export.manifest import build_manifest, read_manifest, write_manifest
from smr.export.pbtxt import ServingOptions, backbone_config, parse_config, to_text
from smr.export.precision import candidate_precisions, choose_precision, computed_precision
from smr.serving.triton_models.engines import cpu_flags

AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"}
AVX2 = {"avx2", "fma"}
BACKBONE_CONFIG = f"{C.BACKBONE}/config.pbtxt"


def _config(tmp_path, **options) -> mc.ModelConfig:
    """The backbone config as written to disk and parsed back (as --check and Triton read it)."""
    config = backbone_config(
        image_size=96, embedding_dim=256, options=ServingOptions(runtime="openvino-backend", **options)
    )
    path = tmp_path / "config.pbtxt"
    path.write_text(to_text(config))
    return parse_config(path)


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("fp32", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}),
        ("bf16", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "HINT_BF16": "YES"}),
        ("int8", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}),  # the QDQ graph says INT8
    ],
)
def test_config_is_the_openvino_backend_on_the_onnx_file(precision, expected, tmp_path):
    config = _config(tmp_path, precision=precision, max_batch_size=32, warmup_batch_sizes=(1, 16))
    assert config.backend == "openvino" and not config.platform
    assert config.default_model_filename == "model.onnx"  # the backend looks for model.xml otherwise
    assert _parameters(config) == expected
    assert OV.parameter_problems(_parameters(config), "x") == []
    # no Triton batching: the backend would fix the batch at max_batch_size and refuse smaller ones
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        (C.IMAGE, mc.TYPE_UINT8, [-1, 96, 96, 3])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        (C.EMBEDDING, mc.TYPE_FP32, [-1, 256])
    ]
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    # warm-up of a non-batching model: batch_size 1, the batch in the dims
    assert [(w.batch_size, list(w.inputs[C.IMAGE].dims)) for w in config.model_warmup] == [
        (1, [1, 96, 96, 3]),
        (1, [16, 96, 96, 3]),
    ]
    assert OV.config_problems(config, "x", precision=precision) == []


def test_instances_get_one_stream_each_and_threads_per_instance(tmp_path):
    config = _config(tmp_path, instances=3, intra_op_threads=2)
    assert _parameters(config) == {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": "3",
        "INFERENCE_NUM_THREADS": "6",
    }
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--runtime", "openvino-backend", "--tensorrt", "fp16"],
            "smr export: error: --tensorrt needs --runtime onnxruntime (Triton's onnxruntime backend) or "
            "python (onnxruntime's TensorRT provider in the python backend)\n",
        ),
        (
            ["--runtime", "openvino-backend", "--instance-kind", "gpu"],
            "smr export: error: --runtime openvino-backend runs on CPU instances (--instance-kind cpu)\n",
        ),
        (
            ["--runtime", "python", "--precision", "bf16"],
            "smr export: error: --runtime python cannot run precision bf16; it runs fp32, int8 (bf16 needs "
            "--runtime openvino or openvino-backend)\n",
        ),
    ],
)
def test_cli_refuses_bad_combinations_with_exact_messages(argv, message, capsys):
    assert main(["export", "/no/run", *argv]) == 2
    assert capsys.readouterr().err == message


def test_cli_names_the_runtime_among_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        main(["export", "/no/run", "--runtime", "openvino_backend"])
    assert "choose from onnxruntime, python, openvino, openvino-backend" in capsys.readouterr().err.replace(
        "'", ""
    )


def test_what_the_backend_computes_in():
    # FP32 and INT8's float parts follow OpenVINO's default; BF16 is asked for
    assert computed_precision("openvino-backend", "fp32", "bf16") == "bf16"
    assert computed_precision("openvino-backend", "int8", "bf16") == "bf16"
    assert computed_precision("openvino-backend", "int8", "fp32") == "int8"
    assert computed_precision("openvino-backend", "fp32", "fp32") == "fp32"
    assert computed_precision("openvino-backend", "bf16", "fp32") == "bf16"
    assert computed_precision("openvino", "fp32", "bf16") == "fp32"  # the python model sets f32 itself
    assert (
        OV.inference_precision("int8", "bf16") == "bf16" and OV.inference_precision("int8", "fp32") == "fp32"
    )
    assert OV.default_inference_precision() in ("fp32", "bf16")
    assert OV.computed_note("fp32", "bf16") == " computed in BF16 on this CPU"
    assert OV.computed_note("int8", "bf16") == " with its float parts in BF16 on this CPU"
    assert OV.computed_note("int8", "fp32") == OV.computed_note("bf16", "bf16") == ""
    assert OV.computed_note("fp32", None) == ""


def test_auto_candidates_measure_bf16_where_fp32_would_be_bf16_anyway():
    assert candidate_precisions("openvino-backend", "auto", AMX, default="bf16") == ["bf16", "int8"]
    assert candidate_precisions("openvino-backend", "auto", AVX2, default="fp32") == ["fp32", "int8"]
    assert candidate_precisions("openvino-backend", "auto", AMX, default="fp32") == ["fp32", "bf16", "int8"]
    assert candidate_precisions("openvino-backend", "fp32", AMX, default="bf16") == ["fp32"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"HINT_BF16": "NO"},
            "parameter HINT_BF16 'NO' is refused by Triton's openvino backend; it takes YES",
        ),
        ({"NUM_STREAMS": "two"}, "parameter NUM_STREAMS 'two' is refused by Triton's openvino backend"),
        ({"PERFORMANCE_HINT": "FAST"}, "it takes LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT"),
        ({"INFERENCE_PRECISION_HINT": "f32"}, "'INFERENCE_PRECISION_HINT' is not one of Triton's openvino"),
    ],
)
def test_parameters_the_backend_refuses_or_ignores_are_named(parameters, message):
    (problem,) = OV.parameter_problems(parameters, BACKBONE_CONFIG)
    assert problem.startswith(f"{BACKBONE_CONFIG}: ") and message in problem


# -- the precision check, as the backend computes ------------------------------------------------


@pytest.fixture(scope="module")
def checked_inputs(run64, repo64):
    images, labels = run64.images(run64.val)
    svm = RbfSvm.from_dict(json.loads((repo64 / "smr_postprocess/1/svm.json").read_text()))
    return {"fp32": str(repo64 / "smr_backbone/1/model.onnx")}, images, labels, svm


@pytest.mark.slow
def test_an_fp32_computed_in_bf16_is_held_to_the_accuracy_bounds_not_to_parity(checked_inputs):
    graphs, images, labels, svm = checked_inputs
    chosen, (report,) = choose_precision(
        "openvino-backend", "fp32", graphs, images, labels, svm=svm, flags=cpu_flags(), default="bf16"
    )
    assert chosen == "fp32" and report.passed and report.computed_in == "bf16"
    assert report.accuracy.max_abs_diff > 1e-4  # a BF16 result: FP32 parity would have refused it
    assert "openvino-backend FP32 computed in BF16 on this CPU vs FP32 on 12" in report.summary()
    assert report.to_dict()["computed_in"] == "bf16"
    # computed in FP32 (a CPU without a bf16 path), the same precision meets the parity tolerance
    _, (exact,) = choose_precision(
        "openvino-backend", "fp32", graphs, images, labels, svm=svm, flags=cpu_flags(), default="fp32"
    )
    assert exact.passed and exact.computed_in == "fp32" and exact.accuracy.max_abs_diff <= 1e-4
    assert "computed in" not in exact.summary()


# -- an exported repository ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_repo(run64, tmp_path_factory):
    repo = tmp_path_factory.mktemp("ovb") / "repo"
    argv = ["export", str(run64.path), "--repository", str(repo), "--runtime", "openvino-backend"]
    assert main([*argv, "--precision", "auto", "--warmup-batch-sizes", "1,8"]) == 0
    return repo


@pytest.mark.slow
def test_auto_export_records_what_it_chose_and_checks(auto_repo, capsys):
    assert check_repository(auto_repo).ok
    export = read_manifest(auto_repo)["export"]
    precision = export["precision"]
    default = OV.default_inference_precision()
    assert export["runtime"] == "openvino-backend" and precision["requested"] == "auto"
    checks = {c["precision"]: c for c in precision["checks"]}
    assert list(checks) == candidate_precisions("openvino-backend", "auto", cpu_flags(), default=default)
    passing = [c for c in checks.values() if c["passed"]]
    assert precision["chosen"] == max(passing, key=lambda c: c["images_per_s"])["precision"]
    assert precision["computed_in"] == OV.inference_precision(precision["chosen"], default)
    assert all(c["computed_in"] == OV.inference_precision(p, default) for p, c in checks.items())
    config = parse_config(auto_repo / BACKBONE_CONFIG)
    assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
    assert ("HINT_BF16" in config.parameters) == (precision["chosen"] == "bf16")
    # the backbone is the ONNX file alone: no python model, nothing for a stub to import
    assert sorted(p.name for p in (auto_repo / C.BACKBONE / "1").iterdir()) == ["model.onnx"]
    graph = onnx.load(str(auto_repo / "smr_backbone/1/model.onnx"), load_external_data=False)
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node) == (precision["chosen"] == "int8")


@pytest.mark.slow
def test_check_accepts_it_and_says_where_it_runs(auto_repo, capsys):
    assert main(["export", "--check", str(auto_repo)]) == 0
    out = capsys.readouterr().out
    assert "OK (openvino backbone, 64 px" in out
    assert "not `smr serve`, whose embedded server has the python backend only" in out


def _reseal(repo) -> None:
    doc = read_manifest(repo)
    info = {k: v for k, v in doc.items() if k not in ("schema", "version", "models", "files")}
    write_manifest(repo, build_manifest(repo, doc["models"], **info))


def _edit_backbone(repo, edit) -> None:
    config = parse_config(repo / BACKBONE_CONFIG)
    edit(config)
    (repo / BACKBONE_CONFIG).write_text(to_text(config))
    _reseal(repo)


def _toggle_bf16(config) -> None:
    if "HINT_BF16" in config.parameters:
        del config.parameters["HINT_BF16"]
    else:
        config.parameters["HINT_BF16"].string_value = "YES"


def _batched(config) -> None:
    config.max_batch_size = 8
    config.dynamic_batching.max_queue_delay_microseconds = 100


def _onnx_less(config) -> None:
    config.default_model_filename = ""


def _dims(config) -> None:
    del config.input[0].dims[:]
    config.input[0].dims.extend([-1, 96, 96, 3])


def _gpu(config) -> None:
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _toggle_bf16,
            r"parameter HINT_BF16 (set|missing), but MANIFEST.json says the backbone was exported at",
        ),
        (_batched, r"max_batch_size 8 / dynamic_batching: Triton's openvino backend fixes the batch"),
        (_onnx_less, r"default_model_filename '', expected 'model.onnx' \(without it .* model.xml\)"),
        (
            _dims,
            r"smr_backbone/config.pbtxt inputs: IMAGE is TYPE_UINT8 \[-1, 96, 96, 3\], expected "
            r"TYPE_UINT8 \[-1, 64, 64, 3\]",
        ),  # fmt: skip
        (_gpu, r"Triton's openvino backend runs CPU instances only"),
    ],
)
def test_check_rejects_a_tampered_backbone_config(auto_repo, tmp_path, edit, message):
    repo = tmp_path / "repo"
    shutil.copytree(auto_repo, repo)
    _edit_backbone(repo, edit)  # resealed: only the config checks can see it
    problems = check_repository(repo).problems
    assert any(re.search(message, p) for p in problems), problems
    assert all(p.startswith(BACKBONE_CONFIG) for p in problems), problems


@pytest.mark.slow
def test_check_names_an_unsealed_change(auto_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(auto_repo, repo)
    text = (repo / BACKBONE_CONFIG).read_text()
    (repo / BACKBONE_CONFIG).write_text(text.replace('"LATENCY"', '"THROUGHPUT"'))
    assert main(["export", "--check", str(repo)]) == 1
    assert f"{BACKBONE_CONFIG}: contents changed since export" in capsys.readouterr().err


@pytest.mark.slow
def test_smr_serve_refuses_it_before_starting_with_the_fix(auto_repo):
    from smr.serving.launcher import RepositoryError, TritonProcess, find_tritonserver

    if not find_tritonserver(None).is_embedded:
        pytest.skip("a full tritonserver is installed here; it may have the openvino backend")
    server = TritonProcess(auto_repo, tritonserver=None)
    with pytest.raises(RepositoryError) as refused:
        server.check_repository()
    message = str(refused.value)
    assert "\n" not in message and server.pid is None
    assert message.startswith("smr_backbone (openvino): the embedded tritonserver from ")
    assert "has the python backend only; export with `--runtime python` or `--runtime openvino`" in message
    assert "run a full Triton (docker compose" in message


@pytest.mark.slow
def test_an_explicit_fp32_is_checked_where_openvino_would_compute_it_in_bf16(
    run64, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(OV, "default_inference_precision", lambda: "bf16")
    repo = tmp_path / "repo"
    argv = ["export", str(run64.path), "--repository", str(repo), "--runtime", "openvino-backend"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: Triton's openvino backend cannot keep OpenVINO at FP32, which computes in BF16" in out
    assert "openvino-backend backbone at FP32 computed in BF16 on this CPU" in out
    precision = read_manifest(repo)["export"]["precision"]
    assert precision["chosen"] == "fp32" and precision["computed_in"] == "bf16"
    (check,) = precision["checks"]
    assert check["passed"] and check["computed_in"] == "bf16"
    assert set(precision["cpu_features"]) == set(cpu_flags()) & {"avx512_bf16", "amx_bf16"}
    assert "HINT_BF16" not in parse_config(repo / BACKBONE_CONFIG).parameters
    assert check_repository(repo).ok


@pytest.mark.slow
def test_an_fp32_computed_in_fp32_is_not_checked_again(run64, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(OV, "default_inference_precision", lambda: "fp32")
    repo = tmp_path / "repo"
    argv = ["export", str(run64.path), "--repository", str(repo), "--runtime", "openvino-backend"]
    assert main(argv) == 0
    assert "cannot keep OpenVINO at FP32" not in capsys.readouterr().out
    precision = read_manifest(repo)["export"]["precision"]
    assert precision["checks"] == [] and precision["computed_in"] == "fp32"
    assert precision["cpu_features"] == []
    parameters = _parameters(parse_config(repo / BACKBONE_CONFIG))
    assert parameters == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    assert check_repository(repo).ok

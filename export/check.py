"""``smr export --check DIR``: is this a complete, consistent SMR model repository?

Checks, each reported with the file it concerns:

- every model folder has a ``config.pbtxt`` that parses as a Triton ``ModelConfig`` (tritonclient's
  protobuf schema) and a version folder ``1/``;
- the files match ``MANIFEST.json`` (SHA-256; nothing missing, nothing added: no unlisted model
  folder, file or Python byte code), and the manifest lists exactly SMR's three models;
- tensor names, data types and shapes agree between the ONNX graph, the three configs and the
  ensemble's input/output maps, and with the contract's table (``tensors.py``);
- the ensemble's ``classes``/``lineages`` parameters agree with ``svm.json`` and ``curves.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import tensors as T
from .manifest import MANIFEST_FILE, ManifestError, manifest_problems, read_manifest

__all__ = ["CheckResult", "check_repository"]

_ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16"}


@dataclass
class CheckResult:
    repository: Path
    problems: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _tensors(config) -> dict[str, T.TensorSpec]:
    from tritonclient.grpc import model_config_pb2 as mc

    return {t.name: T.TensorSpec(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in config}


def _onnx_interface(path: Path) -> tuple[dict[str, T.TensorSpec], dict[str, T.TensorSpec]]:
    """Graph inputs and outputs as Triton would see them (batch dimension dropped)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> T.TensorSpec:
        tt = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return T.TensorSpec(value.name, _ONNX_TYPES.get(tt.elem_type, f"onnx:{tt.elem_type}"), dims[1:])

    return ({v.name: spec(v) for v in model.graph.input}, {v.name: spec(v) for v in model.graph.output})


def _compare(
    problems: list[str], where: str, got: dict[str, T.TensorSpec], expected: list[T.TensorSpec]
) -> None:
    want = {s.name: s for s in expected}
    if set(got) != set(want):
        problems.append(f"{where}: tensors {sorted(got)}, expected {sorted(want)}")
    for name in sorted(set(got) & set(want)):
        if got[name] != want[name]:
            g, w = got[name], want[name]
            problems.append(
                f"{where}: {name} is {g.data_type} {list(g.dims)}, expected {w.data_type} {list(w.dims)}"
            )


def _load_json(repo: Path, rel: str, problems: list[str]):
    try:
        return json.loads((repo / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{rel}: unreadable ({exc})")
        return None


def check_repository(repository: str | Path) -> CheckResult:
    """Every problem of the repository (empty when it is ready to serve)."""
    from .pbtxt import ConfigFormatError, parse_config

    repo = Path(repository)
    result = CheckResult(repo)
    problems = result.problems
    if not repo.is_dir():
        problems.append(f"{repo}: not a directory")
        return result

    configs = {}
    for name in T.MODEL_NAMES:
        path = repo / name / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{name}/config.pbtxt: missing")
            continue
        try:
            configs[name] = parse_config(path)
        except ConfigFormatError as exc:
            problems.append(str(exc))
            continue
        if configs[name].name != name:
            problems.append(f"{name}/config.pbtxt: model name {configs[name].name!r}, expected {name!r}")
        if not (repo / name / "1").is_dir():
            problems.append(f"{name}/1/: missing version folder")

    problems.extend(manifest_problems(repo))
    try:
        models = read_manifest(repo)["models"]
    except ManifestError:
        models = list(T.MODEL_NAMES)  # already reported by manifest_problems
    if sorted(models) != sorted(T.MODEL_NAMES):
        problems.append(
            f"{MANIFEST_FILE}: models {models}, expected {list(T.MODEL_NAMES)} (a repository of SMR's "
            "ensemble holds nothing else)"
        )
    if len(configs) < len(T.MODEL_NAMES):
        return result

    ensemble, backbone, post = configs[T.ENSEMBLE], configs[T.BACKBONE], configs[T.POSTPROCESS]

    # -- the ensemble's metadata, the SVM and the curves --------------------------------------
    params = {k: v.string_value for k, v in ensemble.parameters.items()}
    try:
        classes = json.loads(params.get("classes", ""))
        lineages = json.loads(params.get("lineages", ""))
        image_size = int(params.get("image_size", ""))
        embedding_dim = int(params.get("embedding_dim", ""))
    except ValueError as exc:
        problems.append(
            f"{T.ENSEMBLE}/config.pbtxt: parameters classes/lineages/image_size/embedding_dim "
            f"missing or malformed ({exc})"
        )
        return result
    result.facts.update(
        classes=len(classes),
        lineages=[lin.get("name") for lin in lineages],
        image_size=image_size,
        embedding_dim=embedding_dim,
        max_batch_size=ensemble.max_batch_size,
    )
    svm = _load_json(repo, f"{T.POSTPROCESS}/1/svm.json", problems)
    curves = _load_json(repo, f"{T.POSTPROCESS}/1/curves.json", problems)
    if svm is not None and svm.get("classes") != classes:
        problems.append(
            f"{T.POSTPROCESS}/1/svm.json: classes {svm.get('classes')} disagree with the ensemble's "
            f"'classes' parameter {classes}"
        )
    if svm is not None and svm.get("support_vectors") and len(svm["support_vectors"][0]) != embedding_dim:
        problems.append(
            f"{T.POSTPROCESS}/1/svm.json: {len(svm['support_vectors'][0])}-D support vectors, "
            f"embedding_dim is {embedding_dim}"
        )
    if curves is not None:
        served = [
            {k: lin.get(k) for k in ("name", "classes", "targets", "boundaries")}
            for lin in curves.get("lineages", [])
        ]
        if served != lineages:
            problems.append(
                f"{T.POSTPROCESS}/1/curves.json: lineages disagree with the ensemble's 'lineages' parameter"
            )

    # -- tensors: the contract's table, the configs, the ONNX graph, the ensemble maps ----------
    n_classes, n_lineages = len(classes), len(lineages)
    _compare(
        problems, f"{T.ENSEMBLE}/config.pbtxt inputs", _tensors(ensemble.input), T.backbone_inputs(image_size)
    )
    _compare(
        problems,
        f"{T.ENSEMBLE}/config.pbtxt outputs",
        _tensors(ensemble.output),
        T.ensemble_outputs(n_classes, n_lineages, embedding_dim),
    )
    _compare(
        problems, f"{T.BACKBONE}/config.pbtxt inputs", _tensors(backbone.input), T.backbone_inputs(image_size)
    )
    _compare(
        problems,
        f"{T.BACKBONE}/config.pbtxt outputs",
        _tensors(backbone.output),
        T.backbone_outputs(embedding_dim),
    )
    _compare(
        problems,
        f"{T.POSTPROCESS}/config.pbtxt inputs",
        _tensors(post.input),
        T.postprocess_inputs(embedding_dim),
    )
    _compare(
        problems,
        f"{T.POSTPROCESS}/config.pbtxt outputs",
        _tensors(post.output),
        T.postprocess_outputs(n_classes, n_lineages, embedding_dim),
    )

    onnx_path = repo / T.BACKBONE / "1" / "model.onnx"
    if onnx_path.is_file():
        try:
            graph_in, graph_out = _onnx_interface(onnx_path)
        except Exception as exc:  # a damaged file; the manifest check names it too
            problems.append(f"{T.BACKBONE}/1/model.onnx: unreadable ONNX ({type(exc).__name__}: {exc})")
        else:
            _compare(
                problems, f"{T.BACKBONE}/1/model.onnx graph inputs", graph_in, T.backbone_inputs(image_size)
            )
            _compare(
                problems,
                f"{T.BACKBONE}/1/model.onnx graph outputs",
                graph_out,
                T.backbone_outputs(embedding_dim),
            )
    else:
        problems.append(f"{T.BACKBONE}/1/model.onnx: missing")

    runtime = "python" if backbone.backend == "python" else backbone.platform
    result.facts["backbone"] = runtime
    if runtime not in ("onnxruntime_onnx", "python"):
        problems.append(
            f"{T.BACKBONE}/config.pbtxt: platform {backbone.platform!r} / backend {backbone.backend!r}; "
            "expected onnxruntime_onnx or the python backend"
        )
    for name, config in ((T.BACKBONE, backbone), (T.POSTPROCESS, post)):
        if config.backend == "python" and not (repo / name / "1" / "model.py").is_file():
            problems.append(f"{name}/1/model.py: missing (python backend)")
        if config.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"{name}/config.pbtxt: max_batch_size {config.max_batch_size} < the ensemble's "
                f"{ensemble.max_batch_size}"
            )

    if ensemble.platform != "ensemble":
        problems.append(f"{T.ENSEMBLE}/config.pbtxt: platform {ensemble.platform!r}, expected 'ensemble'")
    steps = list(ensemble.ensemble_scheduling.step)
    if [s.model_name for s in steps] != [T.BACKBONE, T.POSTPROCESS]:
        problems.append(
            f"{T.ENSEMBLE}/config.pbtxt: steps {[s.model_name for s in steps]}, "
            f"expected {[T.BACKBONE, T.POSTPROCESS]}"
        )
        return result
    # every ensemble tensor is produced exactly once (an ensemble input or a step output), every
    # step reads/writes tensors its model declares, and no step reads an ensemble output: Triton
    # drops an ensemble output the client did not request, and a step waiting for it deadlocks
    ensemble_outputs = {t.name for t in ensemble.output}
    produced = {t.name: f"ensemble input {t.name}" for t in ensemble.input}
    for step, config in zip(steps, (backbone, post), strict=True):
        declared_in = {t.name for t in config.input}
        declared_out = {t.name for t in config.output}
        for model_tensor, ens_tensor in step.input_map.items():
            if model_tensor not in declared_in:
                problems.append(
                    f"{T.ENSEMBLE}/config.pbtxt: step {step.model_name} input_map key {model_tensor!r} "
                    f"is not an input of {step.model_name} {sorted(declared_in)}"
                )
            if ens_tensor not in produced:
                problems.append(
                    f"{T.ENSEMBLE}/config.pbtxt: step {step.model_name} reads {ens_tensor!r}, "
                    "which no earlier step or ensemble input provides"
                )
            if ens_tensor in ensemble_outputs:
                problems.append(
                    f"{T.ENSEMBLE}/config.pbtxt: step {step.model_name} reads {ens_tensor!r}, which is "
                    "also an ensemble output; a request that does not ask for it deadlocks (map the "
                    "producing step's output to an internal tensor name)"
                )
        if set(step.input_map) != declared_in:
            problems.append(
                f"{T.ENSEMBLE}/config.pbtxt: step {step.model_name} maps inputs {sorted(step.input_map)}, "
                f"the model declares {sorted(declared_in)}"
            )
        for model_tensor, ens_tensor in step.output_map.items():
            if model_tensor not in declared_out:
                problems.append(
                    f"{T.ENSEMBLE}/config.pbtxt: step {step.model_name} output_map key "
                    f"{model_tensor!r} is not an output of {step.model_name} {sorted(declared_out)}"
                )
            if ens_tensor in produced:
                problems.append(f"{T.ENSEMBLE}/config.pbtxt: {ens_tensor!r} is produced twice")
            produced[ens_tensor] = f"{step.model_name}.{model_tensor}"
    for t in ensemble.output:
        if t.name not in produced:
            problems.append(f"{T.ENSEMBLE}/config.pbtxt: output {t.name!r} is produced by no step")
            continue
        expected = f"{T.POSTPROCESS}.{T.ensemble_output_source(t.name)}"
        if produced[t.name] != expected:
            problems.append(
                f"{T.ENSEMBLE}/config.pbtxt: output {t.name!r} comes from {produced[t.name]}, "
                f"expected {expected}"
            )
    result.facts["manifest"] = str(repo / MANIFEST_FILE)
    return result

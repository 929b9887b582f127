"""``smr export --check DIR``: is this a complete, consistent SMR model repository?

Checks, each reported with the file it concerns:

- every model folder has a ``config.pbtxt`` that parses as a Triton ``ModelConfig`` (tritonclient's
  protobuf schema) and a version folder ``1/``;
- the files match ``MANIFEST.json`` (SHA-256; nothing missing, nothing added: no unlisted model
  folder, file or Python byte code), and the manifest lists exactly SMR's three models;
- tensor names, data types and shapes agree between the ONNX graph, the three configs and the
  ensemble's input/output maps, and with the contract's table (``tensors.py``);
- the ensemble's ``classes``/``lineages`` parameters agree with ``svm.json`` and ``curves.json``,
  and its ``review_margin`` with the one ``smr_postprocess`` applies;
- a backbone on Triton's openvino backend (``--runtime openvino-backend``) names ``model.onnx``,
  is not batched by Triton (``max_batch_size: 0``, dims ``[-1, ...]``), runs CPU instances, has
  only parameters the backend accepts, and asks for BF16 exactly when the manifest says BF16
  (``openvino_backend.config_problems``).

A repository exported before the outputs ``STAGE`` and ``BORDERLINE`` existed (no ``review_margin``
either) is checked against the contract of its time (``facts["review_margin"]`` is None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smr.core import contract as C

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


@dataclass(frozen=True)
class _Metadata:
    """What the ensemble's parameters say about the served model."""

    classes: list[str]
    lineages: list[dict[str, Any]]
    image_size: int
    embedding_dim: int
    review: bool  # serves STAGE and BORDERLINE (False: exported before they existed)


def _read_configs(repo: Path, problems: list[str]) -> dict[str, Any]:
    """Each model's parsed ``config.pbtxt`` (those that parse), its name and version folder checked."""
    from .pbtxt import ConfigFormatError, parse_config

    configs = {}
    for name in C.MODEL_NAMES:
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
    return configs


def _check_manifest(repo: Path, problems: list[str]) -> None:
    """The files against ``MANIFEST.json``, which lists exactly SMR's three models."""
    problems.extend(manifest_problems(repo))
    try:
        models = read_manifest(repo)["models"]
    except ManifestError:
        models = list(C.MODEL_NAMES)  # already reported by manifest_problems
    if sorted(models) != sorted(C.MODEL_NAMES):
        problems.append(
            f"{MANIFEST_FILE}: models {models}, expected {list(C.MODEL_NAMES)} (a repository of SMR's "
            "ensemble holds nothing else)"
        )


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def _serves_review(ensemble, post) -> bool:
    """Whether the repository has any part of the review outputs (then it must have all of them)."""
    names = {t.name for t in (*ensemble.output, *post.output)}
    margins = C.REVIEW_MARGIN_PARAMETER in ensemble.parameters or C.REVIEW_MARGIN_PARAMETER in post.parameters
    return margins or bool(names & set(C.REVIEW_OUTPUTS))


def _metadata(ensemble, post, result: CheckResult) -> _Metadata | None:
    """The ensemble's parameters (None, with the problem recorded, when they are unreadable)."""
    params = _parameters(ensemble)
    try:
        meta = _Metadata(
            classes=json.loads(params.get(C.CLASSES_PARAMETER, "")),
            lineages=json.loads(params.get(C.LINEAGES_PARAMETER, "")),
            image_size=int(params.get(C.IMAGE_SIZE_PARAMETER, "")),
            embedding_dim=int(params.get(C.EMBEDDING_DIM_PARAMETER, "")),
            review=_serves_review(ensemble, post),
        )
    except ValueError as exc:
        result.problems.append(
            f"{C.ENSEMBLE}/config.pbtxt: parameters {C.CLASSES_PARAMETER}/{C.LINEAGES_PARAMETER}/"
            f"{C.IMAGE_SIZE_PARAMETER}/{C.EMBEDDING_DIM_PARAMETER} missing or malformed ({exc})"
        )
        return None
    result.facts.update(
        classes=len(meta.classes),
        lineages=[lin.get("name") for lin in meta.lineages],
        image_size=meta.image_size,
        embedding_dim=meta.embedding_dim,
        max_batch_size=ensemble.max_batch_size,
    )
    return meta


def _check_artifacts(repo: Path, meta: _Metadata, problems: list[str]) -> None:
    """``svm.json`` and ``curves.json`` against the ensemble's ``classes``/``lineages``/``embedding_dim``."""
    svm = _load_json(repo, f"{C.POSTPROCESS}/1/svm.json", problems)
    curves = _load_json(repo, f"{C.POSTPROCESS}/1/curves.json", problems)
    if svm is not None and svm.get("classes") != meta.classes:
        problems.append(
            f"{C.POSTPROCESS}/1/svm.json: classes {svm.get('classes')} disagree with the ensemble's "
            f"'{C.CLASSES_PARAMETER}' parameter {meta.classes}"
        )
    vectors = svm.get("support_vectors") if svm is not None else None
    if vectors and len(vectors[0]) != meta.embedding_dim:
        problems.append(
            f"{C.POSTPROCESS}/1/svm.json: {len(vectors[0])}-D support vectors, "
            f"{C.EMBEDDING_DIM_PARAMETER} is {meta.embedding_dim}"
        )
    if curves is not None:
        served = [
            {k: lin.get(k) for k in ("name", "classes", "targets", "boundaries")}
            for lin in curves.get("lineages", [])
        ]
        if served != meta.lineages:
            problems.append(
                f"{C.POSTPROCESS}/1/curves.json: lineages disagree with the ensemble's "
                f"'{C.LINEAGES_PARAMETER}' parameter"
            )


def _margin(text: str | None) -> float | None:
    """A ``review_margin`` parameter's value, or None unless it is a number in [0, 1]."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def _check_review_margin(ensemble, post, meta: _Metadata, result: CheckResult) -> None:
    """The margin ``smr_postprocess`` flags cells with is the one the ensemble announces, in [0, 1]."""
    result.facts["review_margin"] = None
    if not meta.review:
        return
    key = C.REVIEW_MARGIN_PARAMETER
    texts = {C.ENSEMBLE: _parameters(ensemble).get(key), C.POSTPROCESS: _parameters(post).get(key)}
    margins = {name: _margin(text) for name, text in texts.items()}
    bad = [name for name, margin in margins.items() if margin is None]
    for name in bad:
        result.problems.append(
            f"{name}/config.pbtxt: parameter {key} {texts[name]!r} is not a margin in [0, 1]"
        )
    if bad:
        return
    if margins[C.ENSEMBLE] != margins[C.POSTPROCESS]:
        result.problems.append(
            f"{C.ENSEMBLE}/config.pbtxt: {key} {texts[C.ENSEMBLE]} disagrees with {C.POSTPROCESS}'s "
            f"{texts[C.POSTPROCESS]}, the one its flags are computed with"
        )
        return
    result.facts["review_margin"] = margins[C.ENSEMBLE]


def _check_tensor_table(configs: dict[str, Any], meta: _Metadata, problems: list[str]) -> None:
    """Every config's inputs and outputs against the contract's table (``tensors.py``); a backbone
    without Triton batching (``max_batch_size: 0``) has the batch as its dims' first, variable one."""
    n_classes, n_lineages, dim = len(meta.classes), len(meta.lineages), meta.embedding_dim
    backbone = (T.backbone_inputs(meta.image_size), T.backbone_outputs(dim))
    if configs[C.BACKBONE].max_batch_size == 0:
        backbone = (T.unbatched(backbone[0]), T.unbatched(backbone[1]))
    expected = {
        C.ENSEMBLE: (
            T.backbone_inputs(meta.image_size),
            T.ensemble_outputs(n_classes, n_lineages, dim, review=meta.review),
        ),
        C.BACKBONE: backbone,
        C.POSTPROCESS: (
            T.postprocess_inputs(dim),
            T.postprocess_outputs(n_classes, n_lineages, dim, review=meta.review),
        ),
    }
    for name, (inputs, outputs) in expected.items():
        _compare(problems, f"{name}/config.pbtxt inputs", _tensors(configs[name].input), inputs)
        _compare(problems, f"{name}/config.pbtxt outputs", _tensors(configs[name].output), outputs)


def _check_onnx_graph(repo: Path, meta: _Metadata, problems: list[str]) -> None:
    """``model.onnx``'s inputs and outputs against the contract's table."""
    rel = f"{C.BACKBONE}/1/model.onnx"
    if not (repo / rel).is_file():
        problems.append(f"{rel}: missing")
        return
    try:
        graph_in, graph_out = _onnx_interface(repo / rel)
    except Exception as exc:  # a damaged file; the manifest check names it too
        problems.append(f"{rel}: unreadable ONNX ({type(exc).__name__}: {exc})")
        return
    _compare(problems, f"{rel} graph inputs", graph_in, T.backbone_inputs(meta.image_size))
    _compare(problems, f"{rel} graph outputs", graph_out, T.backbone_outputs(meta.embedding_dim))


def _manifest_precision(repo: Path) -> str | None:
    """The backbone's precision as MANIFEST.json records it (None: not recorded, or no manifest)."""
    try:
        precision = read_manifest(repo).get("export", {}).get("precision")
    except ManifestError:
        return None
    return precision.get("chosen") if isinstance(precision, dict) else None


def _check_backends(repo: Path, configs: dict[str, Any], result: CheckResult) -> None:
    """The backbone's platform or backend (Triton's openvino backend's settings too), each python
    model's ``model.py``, batch sizes, the ensemble platform."""
    from . import openvino_backend as OV

    problems = result.problems
    ensemble, backbone, post = configs[C.ENSEMBLE], configs[C.BACKBONE], configs[C.POSTPROCESS]
    runtime = backbone.backend if backbone.backend in ("python", OV.BACKEND) else backbone.platform
    result.facts["backbone"] = runtime
    if runtime not in ("onnxruntime_onnx", "python", OV.BACKEND):
        problems.append(
            f"{C.BACKBONE}/config.pbtxt: platform {backbone.platform!r} / backend {backbone.backend!r}; "
            "expected onnxruntime_onnx, the openvino backend or the python backend"
        )
    if runtime == OV.BACKEND:
        where = f"{C.BACKBONE}/config.pbtxt"
        problems.extend(OV.config_problems(backbone, where, precision=_manifest_precision(repo)))
    for name, config in ((C.BACKBONE, backbone), (C.POSTPROCESS, post)):
        if config.backend == "python" and not (repo / name / "1" / "model.py").is_file():
            problems.append(f"{name}/1/model.py: missing (python backend)")
        if config.backend == OV.BACKEND:
            continue  # no Triton batching: each request whole, at its own batch size (config_problems)
        if config.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"{name}/config.pbtxt: max_batch_size {config.max_batch_size} < the ensemble's "
                f"{ensemble.max_batch_size}"
            )
    if ensemble.platform != "ensemble":
        problems.append(f"{C.ENSEMBLE}/config.pbtxt: platform {ensemble.platform!r}, expected 'ensemble'")


def _check_step_inputs(
    step, config, produced: dict[str, str], outputs: set[str], problems: list[str]
) -> None:
    """A step reads inputs its model declares, from tensors produced before it, none an ensemble output."""
    where = f"{C.ENSEMBLE}/config.pbtxt: step {step.model_name}"
    declared = {t.name for t in config.input}
    for model_tensor, ens_tensor in step.input_map.items():
        if model_tensor not in declared:
            problems.append(
                f"{where} input_map key {model_tensor!r} is not an input of {step.model_name} "
                f"{sorted(declared)}"
            )
        if ens_tensor not in produced:
            problems.append(f"{where} reads {ens_tensor!r}, which no earlier step or ensemble input provides")
        if ens_tensor in outputs:
            problems.append(
                f"{where} reads {ens_tensor!r}, which is also an ensemble output; a request that does not "
                "ask for it deadlocks (map the producing step's output to an internal tensor name)"
            )
    if set(step.input_map) != declared:
        problems.append(
            f"{where} maps inputs {sorted(step.input_map)}, the model declares {sorted(declared)}"
        )


def _record_step_outputs(step, config, produced: dict[str, str], problems: list[str]) -> None:
    """Add the step's outputs to ``produced`` (tensor -> producer); each is produced once only."""
    declared = {t.name for t in config.output}
    for model_tensor, ens_tensor in step.output_map.items():
        if model_tensor not in declared:
            problems.append(
                f"{C.ENSEMBLE}/config.pbtxt: step {step.model_name} output_map key {model_tensor!r} is not "
                f"an output of {step.model_name} {sorted(declared)}"
            )
        if ens_tensor in produced:
            problems.append(f"{C.ENSEMBLE}/config.pbtxt: {ens_tensor!r} is produced twice")
        produced[ens_tensor] = f"{step.model_name}.{model_tensor}"


def _check_ensemble_steps(configs: dict[str, Any], problems: list[str]) -> bool:
    """The ensemble's steps and maps: every ensemble tensor is produced exactly once (an ensemble input
    or a step output), every step reads/writes tensors its model declares, and no step reads an
    ensemble output (Triton drops an ensemble output the client did not request, and a step waiting
    for it deadlocks; see ``smr.core.contract``); every ensemble output comes from smr_postprocess.
    False when the steps are not SMR's two (nothing more is checked then)."""
    ensemble = configs[C.ENSEMBLE]
    steps = list(ensemble.ensemble_scheduling.step)
    if [s.model_name for s in steps] != [C.BACKBONE, C.POSTPROCESS]:
        problems.append(
            f"{C.ENSEMBLE}/config.pbtxt: steps {[s.model_name for s in steps]}, "
            f"expected {[C.BACKBONE, C.POSTPROCESS]}"
        )
        return False
    outputs = {t.name for t in ensemble.output}
    produced = {t.name: f"ensemble input {t.name}" for t in ensemble.input}
    for step, config in zip(steps, (configs[C.BACKBONE], configs[C.POSTPROCESS]), strict=True):
        _check_step_inputs(step, config, produced, outputs, problems)
        _record_step_outputs(step, config, produced, problems)
    _check_output_sources(ensemble, produced, problems)
    return True


def _check_output_sources(ensemble, produced: dict[str, str], problems: list[str]) -> None:
    """Every ensemble output is produced, by ``smr_postprocess`` (``EMBEDDING`` from ``EMBEDDING_OUT``)."""
    for t in ensemble.output:
        if t.name not in produced:
            problems.append(f"{C.ENSEMBLE}/config.pbtxt: output {t.name!r} is produced by no step")
            continue
        expected = f"{C.POSTPROCESS}.{T.ensemble_output_source(t.name)}"
        if produced[t.name] != expected:
            problems.append(
                f"{C.ENSEMBLE}/config.pbtxt: output {t.name!r} comes from {produced[t.name]}, "
                f"expected {expected}"
            )


def check_repository(repository: str | Path) -> CheckResult:
    """Every problem of the repository (empty when it is ready to serve)."""
    repo = Path(repository)
    result = CheckResult(repo)
    if not repo.is_dir():
        result.problems.append(f"{repo}: not a directory")
        return result
    configs = _read_configs(repo, result.problems)
    _check_manifest(repo, result.problems)
    if len(configs) < len(C.MODEL_NAMES):
        return result
    meta = _metadata(configs[C.ENSEMBLE], configs[C.POSTPROCESS], result)
    if meta is None:
        return result
    _check_artifacts(repo, meta, result.problems)
    _check_review_margin(configs[C.ENSEMBLE], configs[C.POSTPROCESS], meta, result)
    _check_tensor_table(configs, meta, result.problems)
    _check_onnx_graph(repo, meta, result.problems)
    _check_backends(repo, configs, result)
    if _check_ensemble_steps(configs, result.problems):
        result.facts["manifest"] = str(repo / MANIFEST_FILE)
    return result

"""Triton python model ``smr_postprocess``: embeddings -> SVM probabilities, class, curve positions,
stages and review flags.

``smr export`` copies this file to ``smr_postprocess/1/model.py``, next to ``curves.json``,
``svm.json``, a copy of ``smr.core`` (``smr_core/``), of the manifest checker
(``smr_manifest.py``) and of the tensor I/O shared with ``smr_backbone`` (``smr_triton_io.py``,
from ``triton_io.py``). It imports numpy, the standard library, Triton's
``triton_python_backend_utils`` and those copies only (and threadpoolctl where installed, to run
numpy's BLAS on one thread), so it runs on a stock Triton image where the ``smr`` package is not
installed (the python backend puts the version folder on ``sys.path``).

Tensor and parameter names come from ``smr_core.contract``. It also returns its input unchanged as
``EMBEDDING_OUT``, the ensemble's ``EMBEDDING`` (see ``smr.core.contract`` for why the backbone's
output is not the ensemble's directly).

Per ``execute`` it stacks the embeddings of all requests into one batch, evaluates the RBF SVM
and projects onto every lineage's curve once, reads each cell's stages and review flags from those
outputs (``smr_core.review``, with the ``review_margin`` parameter; the clients apply the same
function), and answers each request with its own rows. A
request whose ``EMBEDDING`` has the wrong data type, rank, size or non-finite values gets an
``INVALID_ARGUMENT`` error naming the tensor; the other requests of the batch are unaffected.

Custom Prometheus metrics (python backend ``MetricFamily``):

- ``smr_cells_classified_total{class=...}`` (counter): cells per predicted class, the live
  differential count;
- ``smr_curve_position{lineage=...}`` (histogram): position t on the lineage's curve of the cells
  classified into one of that lineage's stages;
- ``smr_postprocess_seconds{model=...}`` (histogram): time of one ``execute`` (one batch).

A zero embedding, which the backbone never produces (it L2-normalises), is what the model's
warm-up sends; such rows are answered but left out of the metrics, and so are the rows of requests
with the parameter ``smr_probe`` (the probe inferences of ``smr serve``'s supervisor).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

# no byte code beside the vendored modules: serving leaves the repository as exported
_WRITE_BYTECODE, sys.dont_write_bytecode = sys.dont_write_bytecode, True
import smr_triton_io as triton_io  # noqa: E402
from smr_core import contract as C  # noqa: E402
from smr_core.curves_json import curves_from_json, project_all  # noqa: E402
from smr_core.review import check_margin, class_stages, review  # noqa: E402
from smr_core.svm import RbfSvm  # noqa: E402

sys.dont_write_bytecode = _WRITE_BYTECODE

INPUT = C.EMBEDDING
OUTPUTS = {  # name -> Triton data type
    C.PROBABILITIES: "TYPE_FP32",
    C.CLASS_ID: "TYPE_INT32",
    C.MATURITY: "TYPE_FP32",
    C.CURVE_DISTANCE: "TYPE_FP32",
    C.STAGE: "TYPE_INT32",
    C.BORDERLINE: "TYPE_UINT8",
    # a copy of the input: the ensemble's EMBEDDING output (the deadlock rule of smr_core.contract)
    C.EMBEDDING_OUT: "TYPE_FP32",
}
POSITION_BUCKETS = [round(0.05 * i, 2) for i in range(1, 21)]
SECONDS_BUCKETS = [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5]
# BLAS threads of the stub process (model parameter ``blas_threads`` overrides; 0: numpy's default)
BLAS_THREADS = 1


class TritonPythonModel:
    """SVM probabilities and curve projections of a batch of embeddings (numpy only)."""

    def initialize(self, args: dict) -> None:
        triton_io.silence_dlpack_capsule_noise()
        config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", C.POSTPROCESS)
        model_dir = args["model_repository"]
        version_dir = os.path.join(model_dir, str(args.get("model_version", "1")))
        triton_io.verify_repository(args, config, self.model_name)

        curves_path = os.path.join(
            version_dir, triton_io.config_parameter(config, "curves_file", "curves.json")
        )
        svm_path = os.path.join(version_dir, triton_io.config_parameter(config, "svm_file", "svm.json"))
        with open(curves_path, encoding="utf-8") as fh:
            self.curves = curves_from_json(json.load(fh))
        with open(svm_path, encoding="utf-8") as fh:
            svm_doc = json.load(fh)
        self.svm = RbfSvm.from_dict(svm_doc)
        self.classes = list(self.svm.classes)
        self.lineages = [lc.name for lc in self.curves]
        dims = {lc.curve.dim for lc in self.curves}
        self._check_config(config, dims)
        self._init_review(config, f"{curves_path} against {svm_path}")
        self._init_metrics()
        self._blas_limits = self._limit_blas_threads(
            int(triton_io.config_parameter(config, "blas_threads", str(BLAS_THREADS)))
        )
        pb_utils.Logger.log_info(
            f"{self.model_name}: {len(self.classes)} classes, lineages {self.lineages}, "
            f"embedding dim {self.embedding_dim}, review margin {self.review_margin:g}, "
            f"max batch {config.get('max_batch_size')}"
        )

    def _init_review(self, config: dict, where: str) -> None:
        """What ``smr_core.review`` needs: each class's lineage and stage, the stage boundaries, the
        SVM margin (model parameter ``review_margin``)."""
        try:
            self._class_stage = class_stages(self.classes, [lc.classes for lc in self.curves])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        self._boundaries = [lc.boundaries for lc in self.curves]
        text = triton_io.config_parameter(config, C.REVIEW_MARGIN_PARAMETER, str(C.DEFAULT_REVIEW_MARGIN))
        try:
            self.review_margin = check_margin(float(text))
        except ValueError as exc:
            raise ValueError(f"config.pbtxt: parameter {C.REVIEW_MARGIN_PARAMETER} {text!r}: {exc}") from None

    def _limit_blas_threads(self, threads: int):
        """numpy's BLAS at ``threads`` threads in this stub process (0: leave its default).

        A batch's products are small (64 x 256 by 256 x ~1000): a second BLAS thread costs more to
        wake than it saves, and it competes with the backbone for the same cores
        (benchmarks/postprocess_compute.py measures both). threadpoolctl sets the limit at run
        time; numpy is imported before ``initialize`` (by the python backend's utilities), too
        late for OPENBLAS_NUM_THREADS. Without threadpoolctl the default stays, with a warning.
        """
        if threads <= 0:
            return None
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pb_utils.Logger.log_warn(
                f"{self.model_name}: threadpoolctl is not installed; numpy's BLAS keeps its default "
                "threads (set OPENBLAS_NUM_THREADS=1 in the server's environment instead)"
            )
            return None
        return threadpool_limits(limits=threads, user_api="blas")

    def _check_config(self, config: dict, curve_dims: set[int]) -> None:
        inputs = {t["name"]: t for t in config.get("input", [])}
        outputs = {t["name"]: t for t in config.get("output", [])}
        if list(inputs) != [INPUT]:
            raise ValueError(f"config.pbtxt inputs {list(inputs)}, expected [{INPUT!r}]")
        if set(outputs) != set(OUTPUTS):
            raise ValueError(f"config.pbtxt outputs {sorted(outputs)}, expected {sorted(OUTPUTS)}")
        if inputs[INPUT]["data_type"] != "TYPE_FP32" or len(inputs[INPUT]["dims"]) != 1:
            raise ValueError(f"config.pbtxt: {INPUT} must be TYPE_FP32 with dims [D]")
        self.embedding_dim = int(inputs[INPUT]["dims"][0])
        if curve_dims - {self.embedding_dim}:
            raise ValueError(f"curves live in {sorted(curve_dims)}-D, {INPUT} has {self.embedding_dim}")
        if self.svm.n_features != self.embedding_dim:
            raise ValueError(
                f"the SVM expects {self.svm.n_features}-D embeddings, {INPUT} has {self.embedding_dim}"
            )
        n_lineages = len(self.curves)
        expected = {
            C.PROBABILITIES: [len(self.classes)],
            C.CLASS_ID: [1],
            C.MATURITY: [n_lineages],
            C.CURVE_DISTANCE: [n_lineages],
            C.STAGE: [n_lineages],
            C.BORDERLINE: [1],
            C.EMBEDDING_OUT: [self.embedding_dim],
        }
        for name, dtype in OUTPUTS.items():
            got = [int(d) for d in outputs[name]["dims"]]
            if outputs[name]["data_type"] != dtype or got != expected[name]:
                raise ValueError(
                    f"config.pbtxt: output {name} is {outputs[name]['data_type']} {got}, "
                    f"expected {dtype} {expected[name]}"
                )

    def _init_metrics(self) -> None:
        self._counts = self._positions = self._seconds = None
        family = getattr(pb_utils, "MetricFamily", None)
        if family is None:
            pb_utils.Logger.log_warn(f"{self.model_name}: this Triton has no custom metrics; none reported")
            return
        self._count_family = family(
            name="smr_cells_classified_total",
            description="Cells classified, per predicted class (the differential count)",
            kind=family.COUNTER,
        )
        self._counts = [self._count_family.Metric(labels={"class": c}) for c in self.classes]
        if getattr(family, "HISTOGRAM", None) is None:
            pb_utils.Logger.log_warn(
                f"{self.model_name}: this Triton has no histogram metrics; "
                "curve positions and timings are not reported"
            )
            return
        self._position_family = family(
            name="smr_curve_position",
            description="Position t on the lineage's curve (0 immature, 1 mature) of cells classified "
            "into one of its stages",
            kind=family.HISTOGRAM,
        )
        self._positions = [
            self._position_family.Metric(labels={"lineage": name}, buckets=POSITION_BUCKETS)
            for name in self.lineages
        ]
        self._seconds_family = family(
            name="smr_postprocess_seconds",
            description="Time of one smr_postprocess execute (one batch), seconds",
            kind=family.HISTOGRAM,
        )
        self._seconds = self._seconds_family.Metric(
            labels={"model": self.model_name}, buckets=SECONDS_BUCKETS
        )

    # ------------------------------------------------------------------------------------------
    def _embedding(self, request) -> np.ndarray:
        x = triton_io.input_array(request, INPUT, "FP32", (self.embedding_dim,))
        if not np.all(np.isfinite(x)):
            raise triton_io.BadRequest(f"input tensor {INPUT}: contains NaN or infinite values")
        self._probe_rows.append(np.full(len(x), triton_io.is_probe(request)))
        return x

    def compute(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for embeddings ``X`` (N, D), as the model returns them."""
        X64 = X.astype(np.float64)  # once for the SVM and the curves
        probabilities = self.svm.predict_proba(X64).astype(np.float32)
        class_id = probabilities.argmax(axis=1).astype(np.int32)
        t, distance = project_all(self.curves, X64)
        maturity = t.astype(np.float32)
        # from the outputs as served (float32), as a client deriving them would read them
        cells = review(
            probabilities, class_id, maturity, self._boundaries, self._class_stage, self.review_margin
        )
        return {
            C.PROBABILITIES: probabilities,
            C.CLASS_ID: class_id[:, None],
            C.MATURITY: maturity,
            C.CURVE_DISTANCE: distance.astype(np.float32),
            C.STAGE: cells.stage,
            C.BORDERLINE: cells.flags[:, None],
            # a copy: X may be a read-only view of the request's input, which DLPack cannot export
            # (BufferError)
            C.EMBEDDING_OUT: np.array(X, dtype=np.float32, copy=True),
        }

    def execute(self, requests):
        start = time.perf_counter()
        self._probe_rows = []  # per readable request: are its rows a supervisor's probe?
        responses, X, outputs = triton_io.batched_responses(
            requests, self._embedding, self.compute, self.model_name
        )
        if outputs is not None:
            self._record(X, outputs)
        if self._seconds is not None:
            self._seconds.observe(time.perf_counter() - start)
        return responses

    def _record(self, X: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        if self._counts is None:
            return
        cells = np.any(X != 0, axis=1)  # zero rows are the warm-up
        if self._probe_rows:  # probe inferences of `smr serve` are not cells either
            cells &= ~np.concatenate(self._probe_rows)
        class_id = outputs[C.CLASS_ID][cells, 0]
        for c, n in zip(*np.unique(class_id, return_counts=True), strict=True):
            self._counts[int(c)].increment(float(n))
        if self._positions is not None:
            lineage = self._class_stage[class_id, 0]
            t = outputs[C.MATURITY][cells]
            for row in np.flatnonzero(lineage >= 0):
                self._positions[lineage[row]].observe(float(t[row, lineage[row]]))

    def finalize(self) -> None:
        if getattr(self, "_blas_limits", None) is not None:
            self._blas_limits.restore_original_limits()
            self._blas_limits = None
        # metrics first, then their families (the python backend requires this order)
        self._counts = self._positions = self._seconds = None
        for name in ("_count_family", "_position_family", "_seconds_family"):
            if hasattr(self, name):
                delattr(self, name)

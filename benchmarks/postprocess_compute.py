"""smr_postprocess's ``compute()`` per cell, before and after the vectorised SVM coupling.

``compute()`` (serving/triton_models/postprocess.py, imported here with a stand-in for Triton's
python backend utilities) is timed at batch 16 and 64, for the exported run's SVM (10 classes)
and for a 15-class SVM fitted here on synthetic 256-D embeddings, in four variants measured in
turns within one run: the SVM's probabilities by the per-class loops it had before
(``_couple_before``, a verbatim copy) or by today's ``smr.core.svm``, each with numpy's BLAS at
its default threads and at 1 thread (what the served model now sets). Each figure is the best of
``--rounds`` turns of ``--repeats`` calls, in ms per cell (the median too). The share is
postprocess / (backbone + postprocess) per cell, with the backbone (the repository's ONNX graph,
in-process, at the repository's image size) timed
in the same turns at the same batch size. The CPU's model and flags are printed first.

    .venv/bin/python benchmarks/postprocess_compute.py --repository REPO [--run RUN] \\
        [--engine onnxruntime|openvino] [--precision fp32|bf16|int8]

REPO is an exported repository (``smr export RUN --repository REPO``); with ``--run``, the
embeddings of the 10-class rows are the backbone's on the run's validation images, else
perturbed support vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from smr.core.curves_json import curves_from_json
from smr.core.svm import _MIN_PROB, RbfSvm
from smr.serving.triton_models.engines import BackboneEngine
from smr.train.recipe import cpu_features

BATCHES = (16, 64)


def _couple_before(pairwise: np.ndarray, pairs: list[tuple[int, int]], k: int) -> np.ndarray:
    """smr.core.svm's coupling before vectorisation (the per-class loops), verbatim."""
    n = len(pairwise)
    r: list[list[Any]] = [[None] * k for _ in range(k)]  # r[i][j]: (n,) arrays; the diagonal unused
    for col, (i, j) in enumerate(pairs):
        r[i][j] = pairwise[:, col]
        r[j][i] = 1.0 - pairwise[:, col]
    q = [[np.zeros(n) for _ in range(k)] for _ in range(k)]
    for t in range(k):
        for j in range(t):
            q[t][t] = q[t][t] + r[j][t] * r[j][t]
            q[t][j] = q[j][t]
        for j in range(t + 1, k):
            q[t][t] = q[t][t] + r[j][t] * r[j][t]
            q[t][j] = -r[j][t] * r[t][j]
    p = [np.full(n, 1.0 / k) for _ in range(k)]
    eps = 0.005 / k
    active = np.ones(n, dtype=bool)
    for _ in range(max(100, k)):
        qp = []
        pqp = np.zeros(n)
        for t in range(k):
            acc = np.zeros(n)
            for j in range(k):
                acc = acc + q[t][j] * p[j]
            qp.append(acc)
            pqp = pqp + p[t] * acc
        max_error = np.zeros(n)
        for t in range(k):
            max_error = np.maximum(max_error, np.abs(qp[t] - pqp))
        active &= ~(max_error < eps)
        if not active.any():
            break
        for t in range(k):
            # rows that have converged take diff = 0, which leaves them unchanged bit for bit
            diff = np.where(active, (-qp[t] + pqp) / q[t][t], 0.0)
            p[t] = p[t] + diff
            pqp = (pqp + diff * (diff * q[t][t] + 2 * qp[t])) / (1 + diff) / (1 + diff)
            for j in range(k):
                qp[j] = (qp[j] + diff * q[t][j]) / (1 + diff)
                p[j] = p[j] / (1 + diff)
    return np.stack(p, axis=1)


class RbfSvmBefore(RbfSvm):
    """The SVM with the coupling it had before (decision values and sigmoid unchanged)."""

    def predict_proba(self, X):
        dec = self._pair_values(self._check(X))
        f = dec * self.prob_a + self.prob_b
        with np.errstate(over="ignore"):
            e = np.exp(-np.abs(f))
            sig = np.where(f >= 0, e / (1.0 + e), 1.0 / (1.0 + np.exp(f)))
        return _couple_before(np.clip(sig, _MIN_PROB, 1 - _MIN_PROB), self._pairs, len(self.classes))


def postprocess_module() -> types.ModuleType:
    """serving/triton_models/postprocess.py, its vendored imports pointed at the ``smr`` modules."""
    import smr.core
    import smr.core.contract
    import smr.core.curves_json
    import smr.core.review
    import smr.core.svm

    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    for name in ("contract", "curves_json", "review", "svm"):
        sys.modules.setdefault(f"smr_core.{name}", getattr(smr.core, name))
    sys.modules.setdefault("smr_core", smr.core)
    from smr.serving.triton_models import triton_io

    sys.modules.setdefault("smr_triton_io", triton_io)
    from smr.serving.triton_models import postprocess

    return postprocess


def postprocess_state(svm, curves) -> SimpleNamespace:
    """What ``TritonPythonModel.initialize`` leaves for ``compute()``: SVM, curves, review rule."""
    from smr.core.contract import DEFAULT_REVIEW_MARGIN
    from smr.core.review import class_stages

    try:
        stage_of_class = class_stages(list(svm.classes), [lc.classes for lc in curves])
    except ValueError:  # the synthetic SVM's classes are not the curves' stages: no class has a stage
        stage_of_class = np.full((len(svm.classes), 2), -1, dtype=np.int64)
    return SimpleNamespace(
        svm=svm,
        curves=curves,
        _boundaries=[lc.boundaries for lc in curves],
        _class_stage=stage_of_class,
        review_margin=DEFAULT_REVIEW_MARGIN,
    )


def synthetic_svm(k: int, dim: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """A k-class SVC fitted on overlapping blobs on the unit sphere, and held-out embeddings."""
    from sklearn.svm import SVC

    from smr.core.svm import svm_to_dict

    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def blobs(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n)
        x = centres[y] + rng.normal(size=(len(y), dim)) * (1.2 / np.sqrt(dim))
        return x / np.linalg.norm(x, axis=1, keepdims=True), y

    x, y = blobs(100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        svc = SVC(kernel="rbf", probability=True, random_state=0).fit(x, y)
    return svm_to_dict(svc, [f"class_{i}" for i in range(k)]), blobs(8)[0]


def best_ms(fn, rounds: int) -> float:
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True, help="an exported repository")
    parser.add_argument("--run", type=Path, help="the run it was exported from (validation images)")
    parser.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "openvino"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"))
    parser.add_argument("--rounds", type=int, default=15, help="turns; each figure is the best")
    parser.add_argument("--repeats", type=int, default=5, help="calls per timing within a turn")
    args = parser.parse_args(argv)

    cpu = cpu_features()
    print(f"CPU: {cpu['model']} ({cpu['machine']}); flags: {' '.join(cpu['flags']) or '-'}")
    post_dir = args.repository / "smr_postprocess" / "1"
    manifest = json.loads((args.repository / "MANIFEST.json").read_text())
    size = int(manifest["export"]["image_size"])
    engine = BackboneEngine(args.repository / "smr_backbone/1/model.onnx", args.engine, args.precision)
    blas = [f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"backbone: {engine.describe()}, {size} px, in-process; numpy BLAS (default threads): {blas}")

    curves = curves_from_json(json.loads((post_dir / "curves.json").read_text()))
    real_doc = json.loads((post_dir / "svm.json").read_text())
    rng = np.random.default_rng(0)
    if args.run is not None:
        from smr.export.run_images import load_split_images

        images = load_split_images(
            args.run, "val", classes=real_doc["classes"], image_size=size, limit=max(BATCHES)
        ).images
        real_x = engine.embed(images)
    else:
        sv = np.asarray(real_doc["support_vectors"])
        real_x = sv[rng.choice(len(sv), max(BATCHES))] + rng.normal(size=(max(BATCHES), sv.shape[1])) * 0.02
        real_x /= np.linalg.norm(real_x, axis=1, keepdims=True)
    synth_doc, synth_x = synthetic_svm(15, len(real_doc["support_vectors"][0]), rng)
    models = {  # k -> (svm document, embeddings)
        len(real_doc["classes"]): (real_doc, real_x),
        15: (synth_doc, synth_x),
    }
    compute = postprocess_module().TritonPythonModel.compute
    images = rng.integers(0, 256, size=(max(BATCHES), size, size, 3), dtype=np.uint8)

    variants = [("before", None), ("before", 1), ("after", None), ("after", 1)]
    samples: dict[tuple, list[float]] = {}  # (k, batch, variant, threads) -> ms per cell, per call
    backbone: dict[int, float] = {}
    cases = []
    for k, (doc, x) in models.items():
        for cls, name in ((RbfSvmBefore, "before"), (RbfSvm, "after")):
            stub = postprocess_state(cls.from_dict(doc), curves)
            for batch in BATCHES:
                cases.append((k, name, batch, stub, np.resize(x.astype(np.float32), (batch, x.shape[1]))))
        # same outputs before and after (the check of this benchmark, not the test)
        xb = x[: max(BATCHES)].astype(np.float32)
        before = compute(postprocess_state(RbfSvmBefore.from_dict(doc), curves), xb)
        after = compute(postprocess_state(RbfSvm.from_dict(doc), curves), xb)
        diff = max(float(np.abs(before[n].astype(np.float64) - after[n]).max()) for n in before)
        print(
            f"{k} classes: largest output difference before/after {diff:.1e}; "
            f"{len(doc['support_vectors'])} support vectors"
        )

    def timed(stub, xb, batch: int, key: tuple) -> None:
        for _ in range(args.repeats):
            start = time.perf_counter()
            compute(stub, xb)
            samples.setdefault(key, []).append((time.perf_counter() - start) * 1e3 / batch)

    for _ in range(args.rounds):
        for batch in BATCHES:
            ms = best_ms(lambda b=batch: engine(images[:b]), 2)
            backbone[batch] = min(backbone.get(batch, np.inf), ms / batch)
        for k, name, batch, stub, xb in cases:
            for variant, threads in variants:
                if variant != name:
                    continue
                key = (k, batch, name, threads)
                if threads is None:
                    timed(stub, xb, batch, key)
                else:
                    with threadpool_limits(limits=threads, user_api="blas"):
                        timed(stub, xb, batch, key)
    best = {key: min(v) for key, v in samples.items()}
    median = {key: float(np.median(v)) for key, v in samples.items()}

    print("\nbackbone ms per cell (best): " + ", ".join(f"batch {b}: {backbone[b]:.3f}" for b in BATCHES))
    print(
        "\npostprocess compute(), ms per cell, best and median of the calls; share of the cell's "
        "compute = best post / (best backbone + best post)"
    )
    header = (
        "| classes | batch | BLAS threads | before | after | before/after | median before | median after "
        "| share before | share after |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for k in models:
        for batch in BATCHES:
            for threads in (None, 1):
                b, a = best[(k, batch, "before", threads)], best[(k, batch, "after", threads)]
                mb, ma = median[(k, batch, "before", threads)], median[(k, batch, "after", threads)]
                bb = backbone[batch]
                print(
                    f"| {k} | {batch} | {'default' if threads is None else threads} | {b:.4f} | {a:.4f} "
                    f"| {b / a:.2f} | {mb:.4f} | {ma:.4f} | {100 * b / (bb + b):.2f} % "
                    f"| {100 * a / (bb + a):.2f} % |"
                )
    for k in models:
        for batch in BATCHES:
            old, new = best[(k, batch, "before", None)], best[(k, batch, "after", 1)]
            print(
                f"{k} classes, batch {batch}: as served before (loops, default BLAS) {old:.4f} ms/cell "
                f"-> now (vectorised, 1 BLAS thread) {new:.4f} ms/cell ({old / new:.1f}x); share "
                f"{100 * old / (backbone[batch] + old):.2f} % -> {100 * new / (backbone[batch] + new):.2f} %"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

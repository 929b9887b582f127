#!/usr/bin/env bash
# SMR on an NVIDIA GPU, in one go (under 8 minutes on an H200-class machine):
#   1. installs what the GPU paths need from PyPI (onnxruntime-gpu with CUDA 12 and TensorRT 10 wheels),
#   2. exports the run with the CUDA path (--runtime python --instance-kind gpu: onnxruntime's CUDA
#      provider, FP32) and the TensorRT FP16 path (the same with --tensorrt fp16: onnxruntime's
#      TensorRT provider, FP16 engines cached in the temporary folder),
#   3. serves each with the embedded tritonserver (`smr serve`'s launcher) and prints cells/s at
#      batch 64 and 256 (`smr bench`'s client processes), and
#   4. prints the parity of each GPU path with the CPU result (onnxruntime FP32 on the same images).
#
#   bash benchmarks/gpu_check.sh [RUN] [SIZE]     # RUN default: a fresh untrained 224 px run
#
# Target (issue 14): >= 20,000 cells/s at 224 px on an H200. Needs the NVIDIA driver; everything
# else comes from PyPI. Not run yet on a GPU: no machine with one was lent while it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:-}
SIZE=${2:-224}
OUT=${OUT:-/tmp/smr-gpu-check}
START=$(date +%s)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ ! -x "$PY" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c requirements/constraints.txt -e '.[dev]'
fi
# the GPU build of onnxruntime replaces the CPU one (same module name); TensorRT's python wheel
# brings libnvinfer, which onnxruntime's TensorRT provider loads
"$PY" -m pip uninstall -q -y onnxruntime || true
"$PY" -m pip install -q "onnxruntime-gpu>=1.20" "tensorrt-cu12>=10.0" "nvidia-cudnn-cu12>=9" \
  "nvidia-cublas-cu12" "nvidia-cuda-runtime-cu12" "nvidia-cufft-cu12" "nvidia-curand-cu12"
# the wheels' CUDA libraries for onnxruntime's providers (in this shell and in the server's stubs)
NV_LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = set()
for root in site.getsitepackages():
    for pattern in ("nvidia/*/lib", "tensorrt_libs", "tensorrt"):
        dirs.update(d for d in glob.glob(os.path.join(root, pattern)) if os.path.isdir(d))
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PY" -c "import onnxruntime as o; p = o.get_available_providers(); print('providers:', p); \
assert 'CUDAExecutionProvider' in p, 'onnxruntime-gpu has no CUDA provider here'"

"$PY" - "$RUN" "$SIZE" "$OUT" <<'EOF'
import json, sys, time
from pathlib import Path

import numpy as np

run_arg, size, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, "tests/export")

if run_arg:
    run = Path(run_arg)
else:  # an untrained run on random "images": speed and parity, not accuracy
    from export_helpers import TWO_LINEAGES, make_run, shared_pbc_dev

    data = shared_pbc_dev()  # the development data set, as the tests find it ($SMR_SHARED_DATA)
    run = make_run(out / "run", data, spec=TWO_LINEAGES, image_size=size, n_train=4, n_val=2,
                   real_svm=False).path

from smr.export.pbtxt import ServingOptions
from smr.export.repository import ExportOptions, export_repository
from smr.serving.bench import bench_served
from smr.serving.launcher import TritonProcess
from smr.serving.triton_models.engines import BackboneEngine

images = np.random.default_rng(0).integers(0, 256, size=(64, size, size, 3), dtype=np.uint8)
common = dict(runtime="python", instance_kind="gpu", max_batch_size=256, warmup_batch_sizes=(64, 256),
              instances=2)
paths = {  # the python backend runs onnxruntime with the CUDA, or TensorRT (FP16 engine), provider
    "cuda-fp32": (ServingOptions(**common), ["CUDAExecutionProvider"], "fp32"),
    "tensorrt-fp16": (ServingOptions(**common, tensorrt="fp16"),
                      ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "fp16"),
}
results = {}
cpu = None
for name, (serving, providers, trt_precision) in paths.items():
    repo = out / name
    t = time.perf_counter()
    export_repository(run, repo, ExportOptions(serving=serving), log=lambda _: None)
    print(f"{name}: exported in {time.perf_counter() - t:.0f} s", flush=True)
    onnx_path = repo / "smr_backbone/1/model.onnx"
    if cpu is None:
        cpu = BackboneEngine(onnx_path, "onnxruntime", "fp32")(images)
    t = time.perf_counter()
    gpu = BackboneEngine(onnx_path, "onnxruntime", "fp32", providers=providers,
                         tensorrt_precision=trt_precision)
    got = gpu(images)
    parity = float(np.max(np.abs(got - cpu)))
    distance = float(np.linalg.norm(got - cpu, axis=1).max())
    print(f"{name}: providers {gpu.providers} ({time.perf_counter() - t:.0f} s to build); parity with "
          f"the CPU: max abs {parity:.2e}, max embedding distance {distance:.2e}", flush=True)
    with TritonProcess(repo, ready_timeout=400) as server:
        for batch in (64, 256):
            r = bench_served(server.grpc_url, batch_size=batch, concurrency=4, duration=10, warmup=5,
                             image_shape=(size, size, 3), server_pid=server.pid)
            results[(name, batch)] = r.cells_per_s
            print(f"{name}: batch {batch}: {r.cells_per_s:,.0f} cells/s served (p50 {r.p50_ms:.1f} ms, "
                  f"errors {r.errors}{': ' + r.first_error if r.errors else ''})", flush=True)
print(json.dumps({f"{k[0]} batch {k[1]}": round(v) for k, v in results.items()}, indent=1))
EOF
echo "gpu_check: $(( $(date +%s) - START )) s in all"

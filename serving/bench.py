"""``smr bench``: served throughput and latency, per concurrency, against in-process onnxruntime.

Each concurrency setting runs that many client *processes* (so the Python client is not the
bottleneck), each sending synchronous gRPC requests of ``batch_size`` random uint8 patches in a
loop. All clients start together, send unmeasured requests for ``warmup`` seconds, then the
requests that *finish* inside the next ``duration`` seconds are counted: throughput is their cells
divided by ``duration``, latencies are their round-trip times. Triton's statistics API, read at
both ends of the measured window, gives each model's compute and queue time per cell and the
average batch the dynamic batcher formed.

``--baseline`` runs the repository's ``smr_backbone/1/model.onnx`` in this process on the same
batch for the same time, with the runtime and precision the served backbone runs (its config's
``engine`` and ``precision``; onnxruntime for Triton's onnxruntime backend): the throughput a user
would get without a server.
"""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from smr.core.contract import BACKBONE, CLASSIFICATION_OUTPUTS, ENSEMBLE, IMAGE, POSTPROCESS

CSV_FIELDS = (
    "mode", "batch_size", "concurrency", "duration_s", "requests", "cells", "cells_per_s",
    "p50_ms", "p95_ms", "p99_ms", "errors", "avg_batch", "backbone_ms_per_cell",
    "postprocess_ms_per_cell", "postprocess_share", "queue_ms_per_request", "cpu_seconds", "cells_per_cpu_s",
    "cpu_ms_per_cell", "server_cpu_ms_per_cell", "backbone_cpu_ms_per_cell", "postprocess_cpu_ms_per_cell",
    "client_cpu_ms_per_cell",
)  # fmt: skip
# where a served cell's CPU time goes: the server process tree by role, and the client processes
CPU_ROLES = ("server", BACKBONE, POSTPROCESS)


class BenchError(RuntimeError):
    """The benchmark cannot run (no server, wrong model, missing ONNX file)."""


@dataclass
class BenchResult:
    mode: str  # "served" or "in-process"
    batch_size: int
    concurrency: int
    duration_s: float
    requests: int
    cells: int
    cells_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int = 0  # client processes that stopped on a failed request
    avg_batch: float = math.nan  # cells per backbone execution (dynamic batching)
    backbone_ms_per_cell: float = math.nan  # compute (input + infer + output) per cell
    postprocess_ms_per_cell: float = math.nan
    postprocess_share: float = math.nan  # postprocess / (backbone + postprocess) compute per cell
    queue_ms_per_request: float = math.nan  # time the backbone's requests waited in its queue
    cpu_seconds: float = math.nan  # CPU time of the server's process tree (or this process) in the window
    # CPU seconds in the window of the server tree's parts (CPU_ROLES: tritonserver itself, each python
    # model's stub) and of the client processes; empty in-process or without the server's pid
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    first_error: str = field(default="", repr=False)

    @property
    def cells_per_cpu_s(self) -> float:
        """Cells per CPU-second: throughput that does not depend on what else the machine runs."""
        return self.cells / self.cpu_seconds if self.cpu_seconds > 0 else math.nan

    def cpu_ms_per_cell(self, role: str | None = None) -> float:
        """CPU milliseconds per cell: all of it (``role`` None), or one role's (NaN when unmeasured)."""
        seconds = self.cpu_seconds if role is None else self.cpu_by_role.get(role, math.nan)
        return 1e3 * seconds / self.cells if self.cells else math.nan

    def row(self) -> dict:
        data = asdict(self)
        data["cells_per_cpu_s"] = self.cells_per_cpu_s
        data["cpu_ms_per_cell"] = self.cpu_ms_per_cell()
        for role in (*CPU_ROLES, "client"):
            data[f"{_role_key(role)}_cpu_ms_per_cell"] = self.cpu_ms_per_cell(role)
        return {key: data[key] for key in CSV_FIELDS}


def _role_key(role: str) -> str:
    return {BACKBONE: "backbone", POSTPROCESS: "postprocess"}.get(role, role)


def latency_percentiles(latencies_s: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds (NaN without samples)."""
    if not len(latencies_s):
        return math.nan, math.nan, math.nan
    p50, p95, p99 = np.percentile(np.asarray(latencies_s) * 1e3, [50, 95, 99])
    return float(p50), float(p95), float(p99)


# --------------------------------------------------------------------------------------------
# Served


def random_images(batch_size: int, image_shape: Sequence[int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(batch_size, *image_shape), dtype=np.uint8)


def server_image_shape(url: str, model: str) -> tuple[tuple[int, ...], int]:
    """(IMAGE shape without the batch, max_batch_size) of ``model`` on the server at ``url``."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        if not client.is_model_ready(model):
            raise BenchError(f"model '{model}' is not ready on {url}")
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as exc:
        raise BenchError(
            f"no Triton server answering at {url} ({exc.message()}); start one with `smr serve`"
        ) from exc
    finally:
        client.close()
    inputs = config.get("input", [])
    if len(inputs) != 1 or inputs[0].get("data_type") != "TYPE_UINT8":
        raise BenchError(f"model '{model}' on {url} does not take one UINT8 IMAGE input: {inputs}")
    return tuple(int(d) for d in inputs[0]["dims"]), int(config.get("max_batch_size", 0))


def _client_loop(
    url, model, batch_size, image_shape, outputs, seed, start_at, warmup, duration, results
) -> None:
    """One client process: synchronous requests until the window closes; report measured latencies.

    A failed request ends the client (a benchmark of errors measures nothing, and failing requests
    come back fast enough to flood the server); the error is reported.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    images = random_images(batch_size, image_shape, seed)
    inputs = [grpcclient.InferInput(IMAGE, list(images.shape), "UINT8")]
    inputs[0].set_data_from_numpy(images)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    window_start, window_end = start_at + warmup, start_at + warmup + duration
    latencies, errors, first_error = [], 0, ""
    while time.time() < start_at:
        time.sleep(0.005)
    while time.time() < window_end:
        sent = time.time()
        try:
            client.infer(model, inputs, outputs=requested)
        except InferenceServerException as exc:
            errors, first_error = 1, exc.message()
            break
        done = time.time()
        if window_start <= done <= window_end:  # completions in the window: an unbiased rate
            latencies.append(done - sent)
    client.close()
    results.put((latencies, errors, first_error))


def _processes() -> tuple[dict[int, int], dict[int, float]]:
    """(parent, user + system CPU seconds) of every live process (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return parents, cpu


def _tree(pid: int, parents: dict[int, int]) -> set[int]:
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(children)
        frontier = children
    return tree


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc), e.g. tritonserver
    and its python backend stubs."""
    return sum(server_cpu_by_role(pid).values())


def _stub_model(pid: int) -> str | None:
    """The model a python backend stub serves (its command line: ``<repo>/<model>/<version>/model.py``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in argv[1:2]:
        parts = Path(arg.decode(errors="replace")).parts
        if len(parts) >= 3 and parts[-1] == "model.py":
            return parts[-3]
    return None


def server_cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds of the server tree of ``pid`` by role: ``"server"`` (tritonserver and anything
    that is not a python model's stub) and each python model's stub, by model name."""
    parents, cpu = _processes()
    if pid not in cpu:
        raise BenchError(f"no process {pid} (--server-pid must be the tritonserver on this machine)")
    roles: dict[str, float] = {}
    for p in _tree(pid, parents):
        role = (_stub_model(p) if p != pid else None) or "server"
        roles[role] = roles.get(role, 0.0) + cpu[p]
    return roles


def _clients_cpu_seconds(pids: Sequence[int | None]) -> float:
    _, cpu = _processes()
    return sum(cpu.get(p, 0.0) for p in pids if p is not None)


def _statistics(url: str) -> dict[str, dict[str, int]]:
    """Cumulative per-model counters (ns and counts) from Triton's statistics API."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for entry in stats.get("model_stats", []):
        infer = entry.get("inference_stats", {})

        def ns(key: str, part: str = "ns", infer=infer) -> int:
            return int(infer.get(key, {}).get(part, 0))

        out[entry["name"]] = {
            "inferences": int(entry.get("inference_count", 0)),
            "executions": int(entry.get("execution_count", 0)),
            "requests": ns("success", "count"),
            "queue_ns": ns("queue"),
            "compute_ns": ns("compute_input") + ns("compute_infer") + ns("compute_output"),
        }
    return out


def _model_shares(before: dict, after: dict, result: BenchResult) -> None:
    def delta(model: str, key: str) -> int:
        return after.get(model, {}).get(key, 0) - before.get(model, {}).get(key, 0)

    cells_b, cells_p = delta(BACKBONE, "inferences"), delta(POSTPROCESS, "inferences")
    if cells_b > 0:
        result.backbone_ms_per_cell = delta(BACKBONE, "compute_ns") / cells_b / 1e6
        result.avg_batch = cells_b / max(delta(BACKBONE, "executions"), 1)
        result.queue_ms_per_request = delta(BACKBONE, "queue_ns") / max(delta(BACKBONE, "requests"), 1) / 1e6
    if cells_p > 0:
        result.postprocess_ms_per_cell = delta(POSTPROCESS, "compute_ns") / cells_p / 1e6
    total = result.backbone_ms_per_cell + result.postprocess_ms_per_cell
    if total > 0:
        result.postprocess_share = result.postprocess_ms_per_cell / total


def bench_served(
    url: str,
    *,
    model: str = ENSEMBLE,
    batch_size: int,
    concurrency: int,
    duration: float,
    warmup: float = 3.0,
    outputs: Sequence[str] = CLASSIFICATION_OUTPUTS,
    image_shape: Sequence[int] | None = None,
    server_pid: int | None = None,
) -> BenchResult:
    """One setting: ``concurrency`` client processes for ``warmup`` + ``duration`` seconds.

    ``server_pid``: the local tritonserver, whose CPU time in the window gives cells per CPU-second.
    """
    if image_shape is None:
        image_shape, max_batch = server_image_shape(url, model)
        if max_batch and batch_size > max_batch:
            raise BenchError(f"--batch-size {batch_size} exceeds the server's max_batch_size {max_batch}")
    ctx = mp.get_context("spawn")  # gRPC and fork do not mix
    results = ctx.Queue()
    start_at = time.time() + 2.0 + 0.3 * concurrency  # every client connected and ready before the start
    workers = [
        ctx.Process(
            target=_client_loop,
            args=(
                url,
                model,
                batch_size,
                tuple(image_shape),
                tuple(outputs),
                seed,
                start_at,
                warmup,
                duration,
                results,
            ),
            daemon=True,
        )
        for seed in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    _sleep_until(start_at + warmup)
    before = _statistics(url)
    roles_before = server_cpu_by_role(server_pid) if server_pid else {}
    clients_before = _clients_cpu_seconds([w.pid for w in workers])
    _sleep_until(start_at + warmup + duration)
    after = _statistics(url)
    roles_after = server_cpu_by_role(server_pid) if server_pid else {}
    clients_after = _clients_cpu_seconds([w.pid for w in workers])
    collected = _collect(results, workers)
    latencies = [lat for lats, _, _ in collected for lat in lats]
    errors = sum(e for _, e, _ in collected)
    p50, p95, p99 = latency_percentiles(latencies)
    result = BenchResult(
        mode="served", batch_size=batch_size, concurrency=concurrency, duration_s=duration,
        requests=len(latencies), cells=len(latencies) * batch_size,
        cells_per_s=len(latencies) * batch_size / duration, p50_ms=p50, p95_ms=p95, p99_ms=p99, errors=errors,
        first_error=next((msg for _, _, msg in collected if msg), ""),
    )  # fmt: skip
    # a stub that started or ended inside the window counts from 0 or to its last reading
    result.cpu_by_role = {
        role: roles_after.get(role, 0.0) - roles_before.get(role, 0.0) for role in roles_before | roles_after
    }
    result.cpu_seconds = sum(result.cpu_by_role.values()) if server_pid else math.nan
    result.cpu_by_role["client"] = clients_after - clients_before
    _model_shares(before, after, result)
    return result


def _collect(results, workers: list) -> list[tuple[list[float], int, str]]:
    """Every client's report (latencies, errors, first error); ``BenchError`` when one is missing."""
    collected: list[tuple[list[float], int, str]] = []
    deadline = time.time() + 120
    while len(collected) < len(workers) and time.time() < deadline:
        try:
            collected.append(results.get(timeout=1.0))
        except Exception:  # queue.Empty; a crashed worker is noticed below
            if not any(w.is_alive() for w in workers) and results.empty():
                break
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.terminate()
    if len(collected) < len(workers):
        raise BenchError(
            f"{len(workers) - len(collected)} of {len(workers)} client processes did not report back"
        )
    return collected


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


# --------------------------------------------------------------------------------------------
# In-process baseline


def backbone_engine(repository: str | os.PathLike[str], *, threads: int = 0):
    """The served backbone of ``repository`` as an in-process engine, at the runtime and precision
    its config names (``engines.BackboneEngine``); raises ``BenchError`` without ``model.onnx``."""
    from smr.export.pbtxt import parse_config

    from .triton_models.engines import BackboneEngine, scheduling_options

    folder = Path(repository) / BACKBONE
    path = folder / "1" / "model.onnx"
    if not path.is_file():
        raise BenchError(
            f"{path} does not exist; --baseline needs --repository DIR of an exported repository"
        )
    params = parse_config(folder / "config.pbtxt").parameters

    def param(key: str, default: str) -> str:
        return params[key].string_value if key in params and params[key].string_value else default

    engine, precision = param("engine", "onnxruntime"), param("precision", "fp32")
    options = scheduling_options(lambda key: param(key, ""))  # the served model's own settings
    if threads:
        options["threads"] = threads
    return BackboneEngine(path, engine, precision, **options)


def bench_in_process(
    run, image_shape: Sequence[int], *, batch_size: int, duration: float, warmup: float = 3.0
) -> BenchResult:
    """``run(images)`` in this process on one batch of random patches, for ``duration`` seconds."""
    images = random_images(batch_size, image_shape, seed=0)
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        run(images)
    latencies = []
    cpu_start = time.process_time()  # every runtime thread is a thread of this process
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        t0 = time.perf_counter()
        run(images)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    p50, p95, p99 = latency_percentiles(latencies)
    return BenchResult(
        mode="in-process", batch_size=batch_size, concurrency=1, duration_s=elapsed,
        requests=len(latencies), cells=len(latencies) * batch_size,
        cells_per_s=len(latencies) * batch_size / elapsed, p50_ms=p50, p95_ms=p95, p99_ms=p99,
        cpu_seconds=cpu_seconds,
    )  # fmt: skip


def bench_onnxruntime(
    onnx_path: str | os.PathLike[str],
    *,
    batch_size: int,
    duration: float,
    warmup: float = 3.0,
    threads: int = 0,
) -> BenchResult:
    """onnxruntime in this process on the same batch: the throughput without a server."""
    from .triton_models.engines import BackboneEngine

    path = Path(onnx_path)
    if not path.is_file():
        raise BenchError(
            f"{path} does not exist; --baseline needs --repository DIR of an exported repository"
        )
    precision = "int8" if _is_qdq(path) else "fp32"
    engine = BackboneEngine(path, "onnxruntime", precision, threads=threads)
    return bench_in_process(
        engine, _graph_image_shape(path), batch_size=batch_size, duration=duration, warmup=warmup
    )


def _is_qdq(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type == "QuantizeLinear" for node in graph.node)


def _graph_image_shape(path: Path) -> list[int]:
    import onnx

    (graph_input,) = onnx.load(str(path), load_external_data=False).graph.input
    return [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]


# --------------------------------------------------------------------------------------------
# Reporting


def format_table(results: Sequence[BenchResult]) -> str:
    header = (
        f"{'mode':<11}{'batch':>6}{'conc':>6}{'requests':>10}{'cells/s':>10}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'errors':>8}{'avg batch':>11}{'backbone ms/cell':>18}{'post ms/cell':>14}"
        f"{'post share':>12}{'cells/CPU-s':>13}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.mode:<11}{r.batch_size:>6}{r.concurrency:>6}{r.requests:>10}{r.cells_per_s:>10.1f}"
            f"{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}{_fmt(r.avg_batch, 11, '.1f')}"
            f"{_fmt(r.backbone_ms_per_cell, 18, '.2f')}{_fmt(r.postprocess_ms_per_cell, 14, '.3f')}"
            f"{_fmt(100 * r.postprocess_share, 11, '.2f')}{' ' if math.isnan(r.postprocess_share) else '%'}"
            f"{_fmt(r.cells_per_cpu_s, 13, '.2f')}"
        )
    return "\n".join(lines)


def cpu_breakdown(result: BenchResult) -> str:
    """Where a served cell's CPU time went, in ms: each python model's stub, tritonserver, clients."""
    parts = [
        f"{name} {result.cpu_ms_per_cell(role):.3f}"
        for role, name in (
            (BACKBONE, "backbone stub"),
            (POSTPROCESS, "postprocess stub"),
            ("server", "tritonserver"),
        )
        if role in result.cpu_by_role
    ]
    parts.append(f"clients {result.cpu_ms_per_cell('client'):.3f}")
    return f"CPU ms per cell at concurrency {result.concurrency}: " + ", ".join(parts)


def _fmt(value: float, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}{spec}}"


def write_csv(path: str | os.PathLike[str], results: Sequence[BenchResult]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow(r.row())
    os.replace(tmp, path)


def run_cli(args) -> int:
    from tqdm import tqdm

    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    image_shape, max_batch = server_image_shape(args.url, args.model)
    if max_batch and args.batch_size > max_batch:
        raise BenchError(f"--batch-size {args.batch_size} exceeds the server's max_batch_size {max_batch}")
    engine = backbone_engine(args.repository, threads=args.baseline_threads) if args.baseline else None
    per_setting = args.warmup + args.duration + 3
    total = per_setting * (len(args.concurrency) + (1 if args.baseline else 0))
    print(
        f"smr bench: {args.url} model '{args.model}', image {list(image_shape)}, batch {args.batch_size}, "
        f"concurrency {args.concurrency}, {args.duration:.0f} s each (~{total:.0f} s in all)",
        flush=True,
    )
    results = []
    for concurrency in tqdm(args.concurrency, desc="concurrency", unit="setting"):
        result = bench_served(
            args.url, model=args.model, batch_size=args.batch_size, concurrency=concurrency,
            duration=args.duration, warmup=args.warmup, outputs=outputs, image_shape=image_shape,
            server_pid=args.server_pid,
        )  # fmt: skip
        results.append(result)
        if result.first_error:
            tqdm.write(
                f"concurrency {concurrency}: {result.errors} client(s) stopped on an error: "
                f"{result.first_error}"
            )
    if engine is not None:
        results.append(
            bench_in_process(
                engine, image_shape, batch_size=args.batch_size, duration=args.duration, warmup=args.warmup
            )
        )
    print(format_table(results))
    served = [r for r in results if r.mode == "served"]
    best = max(served, key=lambda r: r.cells_per_s)
    print(
        f"best served: {best.cells_per_s:.1f} cells/s at concurrency {best.concurrency}"
        + (
            ""
            if math.isnan(best.postprocess_share)
            else f"; postprocess {100 * best.postprocess_share:.2f}% of a cell's compute time"
        )
    )
    if args.baseline:
        baseline = results[-1]
        print(
            f"in-process {engine.describe()}: {baseline.cells_per_s:.1f} cells/s; "
            f"served / in-process = {best.cells_per_s / baseline.cells_per_s:.3f}"
        )
        if not math.isnan(best.cells_per_cpu_s):
            print(f"{cpu_breakdown(best)}; in-process {baseline.cpu_ms_per_cell():.3f}")
            efficiency = max(r.cells_per_cpu_s for r in served)
            print(
                f"per CPU-second: served {efficiency:.2f} cells (server process tree), in-process "
                f"{baseline.cells_per_cpu_s:.2f}; ratio {efficiency / baseline.cells_per_cpu_s:.3f}"
            )
    if args.csv:
        write_csv(args.csv, results)
        print(f"wrote {args.csv}")
    return 1 if any(r.errors for r in served) else 0

"""``smr serve`` (a supervised local Triton on a model repository), ``smr probe`` (one real
inference: is the server serving?) and ``smr bench`` (throughput and latency)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from smr.core.contract import ENSEMBLE
from smr.export.repository import DEFAULT_REPOSITORY  # one default for smr export and smr serve

if TYPE_CHECKING:
    from smr.serving.launcher import TritonProcess
    from smr.serving.supervisor import Supervisor


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0-65535; 0 picks a free one)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 and at most 86400 seconds")
    return value


def _log_level(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 (off) and 10")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integers, e.g. 1,2,4,8"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1, e.g. 1,2,4,8")
    return values


def add_parsers(subparsers) -> None:
    """Add ``smr serve``, ``smr probe`` and ``smr bench`` to the ``smr`` command's sub-parsers."""
    _add_serve_parser(subparsers)
    _add_probe_parser(subparsers)
    _add_bench_parser(subparsers)


def _add_serve_parser(subparsers) -> None:
    """``smr serve``: where to listen, and how to run and watch the server."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a model repository with a local Triton Inference Server",
        description="Start tritonserver on an exported model repository (ensemble 'smr'), wait until it is "
        "ready, print the endpoints and supervise it until Ctrl+C / SIGTERM: a dead python stub, a failing "
        "probe inference or an exited server is restarted on the same ports. gRPC and metrics only (HTTP "
        "with --http); shared-memory, model-repository, logging and trace APIs need the admin key printed "
        "at start. The server comes from --tritonserver, $TRITONSERVER, PATH, else the nvidia-pytriton "
        "wheel (python backend only: export with --runtime python). See docs/serving.md.",
    )
    _add_endpoint_arguments(serve)
    _add_server_arguments(serve)
    serve.set_defaults(func=run_serve)


def _add_endpoint_arguments(serve: argparse.ArgumentParser) -> None:
    """``smr serve``'s repository, address, ports and probe interval."""
    serve.add_argument(
        "--repository",
        default=DEFAULT_REPOSITORY,
        metavar="DIR",
        help="model repository written by `smr export` (default: %(default)s)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind all endpoints to (default: %(default)s, loopback only)",
    )
    serve.add_argument(
        "--grpc-port", type=_port, default=8001, metavar="PORT", help="gRPC port (default: %(default)s)"
    )
    serve.add_argument(
        "--http",
        action="store_true",
        help="also serve HTTP/REST (off by default: the HTTP front end of Triton 2.51 has known crashes, "
        "see docs/serving.md)",
    )
    serve.add_argument(
        "--http-port",
        type=_port,
        default=8000,
        metavar="PORT",
        help="HTTP/REST port with --http (default: %(default)s)",
    )
    serve.add_argument(
        "--health-port",
        type=_port,
        default=8003,
        metavar="PORT",
        help="supervisor's /ready (a real inference), /live and /metrics (default: %(default)s)",
    )
    serve.add_argument(
        "--probe-interval",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds between probe inferences (default: %(default)s; dead stubs are seen within 0.5 s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        default=8002,
        metavar="PORT",
        help="Prometheus metrics port (default: %(default)s)",
    )


def _add_server_arguments(serve: argparse.ArgumentParser) -> None:
    """``smr serve``'s server binary, its logs, start-up wait and further options."""
    serve.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary to run")
    serve.add_argument(
        "--log-verbose",
        type=_log_level,
        default=0,
        metavar="N",
        help="Triton verbose log level (default: 0, off)",
    )
    serve.add_argument("--log-file", metavar="FILE", help="also keep the server's log in FILE")
    serve.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=300.0,
        metavar="S",
        help="seconds to wait for the models to load (default: %(default)s)",
    )
    serve.add_argument(
        "--no-manifest-check",
        action="store_true",
        help="serve a repository without a MANIFEST.json (hand-made repositories)",
    )
    serve.add_argument("--quiet", action="store_true", help="do not echo the server's log after start-up")
    serve.add_argument(
        "server_args",
        nargs="*",
        metavar="-- TRITON_ARG",
        help="further tritonserver options after --, e.g. -- --model-load-thread-count=2",
    )


def _add_probe_parser(subparsers) -> None:
    """``smr probe``: one real inference."""
    probe = subparsers.add_parser(
        "probe",
        help="one real inference on a server: exit status 0 when it serves",
        description="Send the model one request of zeros (its input shapes from the server's model config) "
        "and print how long it took; exit status 1 with the server's error otherwise. Triton's own ready "
        "endpoint keeps answering ready while a python stub is dead; this does not. For health checks.",
    )
    probe.add_argument(
        "--url", default="127.0.0.1:8001", metavar="HOST:PORT", help="gRPC address (default: %(default)s)"
    )
    probe.add_argument("--model", default=ENSEMBLE, help="model to probe (default: %(default)s)")
    probe.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds to wait (default: %(default)s)",
    )
    probe.set_defaults(func=run_probe)


def _add_bench_parser(subparsers) -> None:
    """``smr bench``: the load to send and what to compare it with."""
    bench = subparsers.add_parser(
        "bench",
        help="measure served throughput and latency (optionally against in-process onnxruntime)",
        description="Send batches of random uint8 patches of the server's size to the 'smr' ensemble from "
        "several client processes, for each concurrency in turn, and print cells/s and p50/p95/p99 "
        "latency. Each model's share of the time comes from Triton's statistics. --baseline also runs "
        "the repository's model.onnx with onnxruntime in this process on the same batch and prints the "
        "ratio served / in-process.",
    )
    bench.add_argument(
        "--url",
        default="127.0.0.1:8001",
        metavar="HOST:PORT",
        help="gRPC address of the server (default: %(default)s)",
    )
    bench.add_argument("--model", default=ENSEMBLE, help="model to call (default: %(default)s)")
    _add_load_arguments(bench)
    bench.add_argument(
        "--outputs",
        default="PROBABILITIES,CLASS_ID,MATURITY,CURVE_DISTANCE",
        help="outputs to request, comma-separated (default: %(default)s)",
    )
    bench.add_argument("--csv", metavar="FILE", help="also write the results as CSV")
    bench.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="pid of a tritonserver on this machine (smr serve prints it): also report cells per CPU-second "
        "of its process tree, a figure that other load on the machine does not skew",
    )
    _add_baseline_arguments(bench)
    bench.set_defaults(func=run_bench)


def _add_load_arguments(bench: argparse.ArgumentParser) -> None:
    """``smr bench``'s load: batch size, client processes, measured and warm-up seconds."""
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        metavar="B",
        help="cells per request (default: %(default)s)",
    )
    bench.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 2, 4, 8],
        metavar="1,2,4,8",
        help="client processes, one setting after the other (default: 1,2,4,8)",
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="S",
        help="seconds measured per setting (default: %(default)s)",
    )
    bench.add_argument(
        "--warmup",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of unmeasured requests before each setting (default: %(default)s)",
    )


def _add_baseline_arguments(bench: argparse.ArgumentParser) -> None:
    """``smr bench --baseline``: onnxruntime in-process on the repository's backbone."""
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="also run onnxruntime in-process on --repository's smr_backbone/1/model.onnx",
    )
    bench.add_argument(
        "--repository",
        default=DEFAULT_REPOSITORY,
        metavar="DIR",
        help="model repository for --baseline (default: %(default)s)",
    )
    bench.add_argument(
        "--baseline-threads",
        type=int,
        default=0,
        metavar="N",
        help="onnxruntime intra-op threads for --baseline (default: 0, all cores)",
    )


def _follow(path: Path, stop: threading.Event, start: int) -> None:
    """Echo what the server appends to its log to stderr until ``stop``."""
    with open(path, "rb") as fh:
        fh.seek(start)
        while not stop.is_set():
            chunk = fh.read()
            if chunk:
                sys.stderr.write(chunk.decode(errors="replace"))
                sys.stderr.flush()
            else:
                time.sleep(0.2)


def run_serve(args: argparse.Namespace) -> int:
    """``smr serve``: start the server, print its endpoints and supervise it until Ctrl+C / SIGTERM.

    Exit status 0 after a requested stop, 1 when the server could not be brought back, 2 when it
    did not start, 130 on Ctrl+C during the start.
    """
    from smr.serving.supervisor import Supervisor

    logging.basicConfig(level=logging.INFO, format="smr serve: %(message)s", stream=sys.stderr)
    server = _triton_process(args)
    supervisor = Supervisor(
        server, probe_interval=args.probe_interval, health_host=args.host, health_port=args.health_port
    )
    stop = threading.Event()
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        stop.set()

    print(f"smr serve: starting tritonserver on {server.repository} ...", file=sys.stderr, flush=True)
    failed = _start(supervisor)
    if failed is not None:
        return failed
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_echo = threading.Event()
    echo = None
    try:
        print(_banner(server, supervisor), flush=True)
        if not args.quiet:
            echo = _echo_log(server, stop_echo)
        return _supervise(server, supervisor, stop, received)
    finally:
        stop_echo.set()
        if echo is not None:
            echo.join(timeout=1)
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _triton_process(args: argparse.Namespace) -> TritonProcess:
    """The (not yet started) server that ``smr serve``'s arguments describe."""
    from smr.serving.launcher import TritonProcess

    return TritonProcess(
        args.repository,
        host=args.host,
        http=args.http,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        check_manifest=not args.no_manifest_check,
        log_verbose=args.log_verbose,
        log_file=args.log_file,
        ready_timeout=args.ready_timeout,
        server_args=[a for a in args.server_args if a != "--"],
    )


def _start(supervisor: Supervisor) -> int | None:
    """Start the supervised server: ``None`` once it serves, else the exit status (it is stopped)."""
    from smr.serving.launcher import TritonError

    try:
        supervisor.start()
    except TritonError as exc:
        supervisor.stop()
        print(f"smr serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        supervisor.stop()
        return 130
    return None


def _banner(server: TritonProcess, supervisor: Supervisor) -> str:
    """What ``smr serve`` prints once the server is ready: its endpoints, models and admin key."""
    assert server.install is not None and server.info is not None
    http = server.http_url or "off (serve it with --http)"
    return (
        f"SMR is serving '{server.model}' from {server.repository}\n"
        f"  tritonserver  {server.install.executable} ({server.install.source}), pid {server.pid}\n"
        f"  gRPC          {server.grpc_url}\n"
        f"  HTTP          {http}\n"
        f"  metrics       {server.metrics_url}\n"
        f"  health        {supervisor.health_url}/ready (a real inference), /live, /metrics\n"
        f"  admin key     {server.admin_key_file} (shared-memory, model-repository, logging and trace "
        "APIs; new at every start)\n"
        f"  models        {', '.join(f'{n} ({b})' for n, b in sorted(server.info.models.items()))}\n"
        f"  max batch     {server.info.max_batch_size}\n"
        "Ctrl+C or SIGTERM stops it."
    )


def _echo_log(server: TritonProcess, stop: threading.Event) -> threading.Thread | None:
    """A thread echoing the server's log from now on until ``stop`` (``None``: it keeps no log file)."""
    if server._log_path is None:
        return None
    echo = threading.Thread(
        target=_follow, args=(server._log_path, stop, server._log_path.stat().st_size), daemon=True
    )
    echo.start()
    return echo


def _supervise(
    server: TritonProcess, supervisor: Supervisor, stop: threading.Event, received: list[int]
) -> int:
    """Supervise until ``stop`` (a signal in ``received``), then stop the server: the exit status."""
    from smr.serving.supervisor import SupervisorError

    try:
        supervisor.run(stop)
    except SupervisorError as exc:
        print(f"smr serve: error: {exc}", file=sys.stderr)
        return 1
    name = signal.Signals(received[0]).name if received else "stop"
    print(f"smr serve: {name} received, stopping tritonserver ...", file=sys.stderr, flush=True)
    code = server.stop()
    print(f"smr serve: tritonserver stopped (exit code {code})", file=sys.stderr)
    return 0


def run_probe(args: argparse.Namespace) -> int:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from smr.serving.launcher import ProbeError, probe_model

    client = grpcclient.InferenceServerClient(args.url)
    try:
        config = client.get_model_config(args.model, as_json=True, client_timeout=args.timeout)["config"]
        inputs = [
            (t["name"], t["data_type"].removeprefix("TYPE_"), [int(d) for d in t.get("dims", [])])
            for t in config.get("input", [])
        ]
        seconds = probe_model(
            client, args.model, inputs, int(config.get("max_batch_size", 0)) > 0, args.timeout
        )
    except InferenceServerException as exc:
        print(f"smr probe: error: {args.url}: {exc.message()} (is `smr serve` running?)", file=sys.stderr)
        return 1
    except ProbeError as exc:
        print(f"smr probe: error: {args.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"{args.url}: '{args.model}' answered a probe inference in {seconds * 1000:.0f} ms")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from smr.serving.bench import BenchError, run_cli

    try:
        return run_cli(args)
    except BenchError as exc:
        print(f"smr bench: error: {exc}", file=sys.stderr)
        return 2

"""``smr serve`` (a local Triton on a model repository) and ``smr bench`` (throughput and latency)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

DEFAULT_REPOSITORY = "model_repository"


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
    serve = subparsers.add_parser(
        "serve",
        help="serve a model repository with a local Triton Inference Server",
        description="Start tritonserver on an exported model repository (ensemble 'smr'), wait until it is "
        "ready, print the endpoints and run until Ctrl+C / SIGTERM. The server comes from --tritonserver, "
        "$TRITONSERVER, PATH, else the nvidia-pytriton wheel (python backend only: export with --runtime "
        "python). See docs/serving.md.",
    )
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
        "--http-port", type=_port, default=8000, metavar="PORT", help="HTTP/REST port (default: %(default)s)"
    )
    serve.add_argument(
        "--metrics-port",
        type=_port,
        default=8002,
        metavar="PORT",
        help="Prometheus metrics port (default: %(default)s)",
    )
    serve.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary to run")
    serve.add_argument(
        "--log-verbose", type=int, default=0, metavar="N", help="Triton verbose log level (default: 0, off)"
    )
    serve.add_argument("--log-file", metavar="FILE", help="also keep the server's log in FILE")
    serve.add_argument(
        "--ready-timeout",
        type=float,
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
    serve.set_defaults(func=run_serve)

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
    bench.add_argument("--model", default="smr", help="model to call (default: %(default)s)")
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
    bench.set_defaults(func=run_bench)


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
    from smr.serving.launcher import TritonError, TritonProcess

    server_args = [a for a in args.server_args if a != "--"]
    server = TritonProcess(
        args.repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        tritonserver=args.tritonserver,
        check_manifest=not args.no_manifest_check,
        log_verbose=args.log_verbose,
        log_file=args.log_file,
        ready_timeout=args.ready_timeout,
        server_args=server_args,
    )
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)

    print(f"smr serve: starting tritonserver on {server.repository} ...", file=sys.stderr, flush=True)
    try:
        server.start()
    except TritonError as exc:
        print(f"smr serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        server.stop()
        return 130
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_echo = threading.Event()
    echo = None
    try:
        assert server.install is not None and server.info is not None
        print(
            f"SMR is serving '{server.model}' from {server.repository}\n"
            f"  tritonserver  {server.install.executable} ({server.install.source}), pid {server.pid}\n"
            f"  gRPC          {server.grpc_url}\n"
            f"  HTTP          {server.http_url}\n"
            f"  metrics       {server.metrics_url}\n"
            f"  models        {', '.join(f'{n} ({b})' for n, b in sorted(server.info.models.items()))}\n"
            f"  max batch     {server.info.max_batch_size}\n"
            "Ctrl+C or SIGTERM stops it.",
            flush=True,
        )
        if not args.quiet and server._log_path is not None:
            echo = threading.Thread(
                target=_follow,
                args=(server._log_path, stop_echo, server._log_path.stat().st_size),
                daemon=True,
            )
            echo.start()
        while server.is_alive() and not received:
            time.sleep(0.2)
        if received:
            name = signal.Signals(received[0]).name
            print(f"smr serve: {name} received, stopping tritonserver ...", file=sys.stderr, flush=True)
            code = server.stop()
            print(f"smr serve: tritonserver stopped (exit code {code})", file=sys.stderr)
            return 0
        code = server.poll()
        tail = "\n".join(server.log().splitlines()[-30:])
        print(
            f"smr serve: error: tritonserver exited unexpectedly (code {code}); last log lines:\n{tail}",
            file=sys.stderr,
        )
        return 1
    finally:
        stop_echo.set()
        if echo is not None:
            echo.join(timeout=1)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_bench(args: argparse.Namespace) -> int:
    from smr.serving.bench import BenchError, run_cli

    try:
        return run_cli(args)
    except BenchError as exc:
        print(f"smr bench: error: {exc}", file=sys.stderr)
        return 2

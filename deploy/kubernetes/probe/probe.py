#!/usr/bin/env python3
"""Kubernetes probes of a Triton pod serving SMR; standard library only.

    python3 probe.py live  [--url http://127.0.0.1:8000]   # GET /v2/health/live answers 200
    python3 probe.py ready [--url http://127.0.0.1:8000]   # one zero image through the `smr` ensemble

`ready` is a real inference, not Triton's ready flag: it reads the ensemble's one image input (name
and shape) from GET /v2/models/smr, sends one all-zero uint8 image of that size (binary tensor data
extension of Triton's HTTP/REST protocol, so the body is the raw pixels), and checks that every
output the metadata lists came back with one row of finite numbers. A model that loaded but cannot
answer (a dead python stub, a broken repository, NaNs) fails it. Exit status 0 = healthy, 1 = not;
one line on stderr says why. The NGC Triton image has python3 but not tritonclient, hence the
standard library; the tensor names come from the server, so this script spells none of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.request

# The ensemble's name (ENSEMBLE of smr/core/contract.py): the one name the server cannot tell this
# script, which runs in the Triton container without the smr package
MODEL = "smr"
LIVE_PATH = "/v2/health/live"
METADATA_PATH = f"/v2/models/{MODEL}"
INFER_PATH = f"/v2/models/{MODEL}/infer"
DEFAULT_URL = "http://127.0.0.1:8000"  # Triton's HTTP endpoint, bound to the pod's loopback


class ProbeError(Exception):
    pass


def _request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)
    except (urllib.error.URLError, OSError) as err:
        raise ProbeError(f"{url}: {getattr(err, 'reason', err)}") from None


def live(base: str, timeout: float) -> None:
    status, body, _ = _request(base + LIVE_PATH, timeout=timeout)
    if status != 200:
        raise ProbeError(f"{LIVE_PATH}: HTTP {status} {body[:200]!r}")


def metadata(base: str, timeout: float) -> dict:
    status, body, _ = _request(base + METADATA_PATH, timeout=timeout)
    if status != 200:
        raise ProbeError(f"{METADATA_PATH}: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def image_input(meta: dict) -> tuple[str, list[int]]:
    """Name and [H, W, 3] shape (batch dimension dropped) of the ensemble's one UINT8 input."""
    inputs = meta.get("inputs", [])
    if len(inputs) != 1 or inputs[0].get("datatype") != "UINT8":
        raise ProbeError(f"{METADATA_PATH}: expected one UINT8 image input, got {inputs}")
    shape = [int(d) for d in inputs[0]["shape"]][1:]
    if len(shape) != 3 or min(shape) <= 0:
        raise ProbeError(f"{METADATA_PATH}: unexpected input shape {inputs[0]['shape']}")
    return inputs[0]["name"], shape


def infer_request(name: str, shape: list[int]) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one all-zero image: a JSON header followed by the raw bytes."""
    nbytes = math.prod(shape)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [1, *shape],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": nbytes},
                }
            ]
        }  # fmt: skip
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + bytes(nbytes), headers


def check_response(body: bytes, expected: list[str]) -> None:
    """Every expected output came back with one row of finite numbers."""
    outputs = {t["name"]: t for t in json.loads(body).get("outputs", [])}
    missing = sorted(set(expected) - set(outputs))
    if missing:
        raise ProbeError(f"{INFER_PATH}: outputs {missing} missing from the answer {sorted(outputs)}")
    for name, tensor in outputs.items():
        if not tensor.get("shape") or tensor["shape"][0] != 1 or "data" not in tensor:
            raise ProbeError(
                f"{INFER_PATH}: output {name} has shape {tensor.get('shape')}, expected [1, ...]"
            )
        values = [float(v) for v in tensor["data"]]
        if not all(math.isfinite(v) for v in values):
            raise ProbeError(f"{INFER_PATH}: output {name} is not finite: {values[:8]}")


def ready(base: str, timeout: float) -> None:
    meta = metadata(base, timeout)
    body, headers = infer_request(*image_input(meta))
    status, answer, _ = _request(base + INFER_PATH, data=body, headers=headers, timeout=timeout)
    if status != 200:
        raise ProbeError(f"{INFER_PATH}: HTTP {status} {answer[:300]!r}")
    check_response(answer, [t["name"] for t in meta.get("outputs", [])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("live", "ready"))
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Triton's HTTP endpoint (default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds per HTTP request (default 8)")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        (live if args.check == "live" else ready)(base, args.timeout)
    except ProbeError as err:
        print(f"smr probe {args.check}: {err}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError) as err:  # a malformed answer
        print(f"smr probe {args.check}: unexpected answer: {err!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

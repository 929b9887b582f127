"""The parts of the training recipe around the loss: learning-rate schedule, weight EMA, precision.

- :func:`lr_lambda` / :func:`build_scheduler`: linear warm-up from 0, then cosine decay (or a
  constant rate), stepped once per optimiser step.
- :func:`ema_model`: an exponential moving average of the weights and buffers
  (``torch.optim.swa_utils.AveragedModel``) with a warm-up of the decay, so that the average
  follows the network closely in the first steps and smooths it later.
- :func:`cpu_features` / :func:`resolve_precision`: bf16 autocast is used where the hardware
  has a bf16 path (AVX-512 BF16 or AMX on x86 CPUs, compute capability 8.0+ on CUDA) and only
  when asked for ("auto" or "bf16"); the choice is detected, never assumed.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import PRECISIONS, SCHEDULES

__all__ = [
    "SCHEDULES",
    "PRECISIONS",
    "lr_lambda",
    "build_scheduler",
    "ema_model",
    "cpu_features",
    "has_bf16",
    "resolve_precision",
]

log = logging.getLogger(__name__)

# CPU flags (as /proc/cpuinfo spells them) that give bf16 matrix arithmetic a hardware path.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def lr_lambda(
    schedule: str, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then "cosine"
    falls from 1 to ``min_ratio`` over the remaining steps; "constant" stays at 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not valid; choose one of: {', '.join(SCHEDULES)}")
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` with :func:`lr_lambda` for every parameter group."""
    fn = lr_lambda(schedule, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """``multi_avg_fn`` for AveragedModel: EMA with the decay ramped up as (1 + n) / (10 + n)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): follow the network
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers); call ``update_parameters(model)`` per step.

    ``averaged.module`` is the averaged network, usable wherever ``model`` is.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)


def cpu_features() -> dict[str, object]:
    """The CPU's model name and the SIMD / matrix flags that matter for speed (Linux; else empty)."""
    info: dict[str, object] = {
        "machine": platform.machine(),
        "model": platform.processor() or "",
        "flags": [],
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name" and not info["model"]:
                info["model"] = value.strip()
        info["flags"] = [f for f in _REPORTED_FLAGS if f in flags]
    info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` has hardware bf16 matrix arithmetic."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    flags = set(cpu_features()["flags"])  # type: ignore[arg-type]
    return any(f in flags for f in _BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "fp32" or "bf16": "auto" takes bf16 where :func:`has_bf16`; "bf16" without it warns (slow)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if has_bf16(device):
        return "bf16"
    if precision == "bf16":
        log.warning("bf16 asked for, but %s has no bf16 hardware path: it will run emulated and slow", device)
        return "bf16"
    return "fp32"

"""Devices and precision: where a run trains and whether its matmuls run in bf16."""

from __future__ import annotations

import torch

from flowmatch.errors import FlowmatchError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available (the process's own GPU under torchrun)."""
    if not isinstance(name, str):
        raise FlowmatchError(f"device must be a name (cpu, cuda, cuda:N or auto), got {type(name).__name__} {name!r}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlowmatchError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlowmatchError(f"device '{name}' asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FlowmatchError(f"unsupported device '{name}'; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FlowmatchError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` trains in bf16 where the device multiplies bf16 matrices natively, else in fp32.

    Native means a CUDA GPU that supports bf16 (Ampere and later) or a CPU with AVX512-BF16 or AMX
    (read from Linux's /proc/cpuinfo; elsewhere fp32). Only the model's matmuls run in bf16 under
    ``torch.autocast``: weights, optimiser state, the loss and the path stay float32. With native
    bf16 a step is faster at the same sample quality; where bf16 is emulated it would be slower, hence
    fp32 there (``bench/results/design-figures.md``).
    ``fp32`` gives runs that are bit-for-bit the same on every machine.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_bf16_units() else "fp32"


def _cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False

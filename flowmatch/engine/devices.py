"""Devices and precision: where a run trains and whether its matmuls run in bf16.

Precision ``auto`` is decided once, when a run starts (:func:`decide_precision`): fp32 on a device without
bf16 matrix units; elsewhere a micro-benchmark of a few forward and backward passes of the run's own model,
in fp32 and under bf16 autocast (:func:`time_precisions`, a fraction of a second), and bf16 only where its
median pass is at least :data:`BF16_MIN_SPEEDUP` times faster (:func:`choose_precision`). The run records the
decision and the measured ratio (config.json's ``resolved``), resumes with it and samples with it
(``precision="auto"``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


#: Precision ``auto`` trains in bf16 only where the start-up micro-benchmark measures bf16 at least this much
#: faster than fp32 (median time of a forward and backward pass, fp32 over bf16). Below it the gain is within
#: the noise of a short measurement on a shared machine, and fp32 gives the same bits everywhere.
BF16_MIN_SPEEDUP = 1.1


#: The micro-benchmark: one untimed pass of each precision, then pairs of timed passes (fp32, bf16 in turn, so
#: that a change in the machine's load hits both alike), at least ``PROBE_MIN_PASSES`` pairs, more while the
#: timed pairs took under ``PROBE_SECONDS`` in all, at most ``PROBE_MAX_PASSES``.
PROBE_MIN_PASSES = 3


PROBE_MAX_PASSES = 9


PROBE_SECONDS = 0.3


#: Why a run trains in its precision (:class:`PrecisionChoice`).
REASONS = ("asked", "no bf16 units", "measured")


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in and why: ``precision`` (fp32 or bf16), ``bf16_speedup`` (median fp32 time over
    median bf16 time of the start-up micro-benchmark; None where nothing was measured) and ``reason``:
    ``asked`` (fp32 or bf16 set), ``no bf16 units`` (auto on a device that does not multiply bf16 matrices
    natively: fp32, not measured) or ``measured`` (auto: bf16 where ``bf16_speedup >= BF16_MIN_SPEEDUP``)."""

    precision: str
    bf16_speedup: float | None = None
    reason: str = "asked"

    def to_dict(self) -> dict[str, Any]:
        """The record a run keeps (config.json's ``resolved``): JSON."""
        speedup = None if self.bf16_speedup is None else float(self.bf16_speedup)
        return {"precision": self.precision, "bf16_speedup": speedup, "precision_reason": self.reason}

    @classmethod
    def from_dict(cls, record: Any, where: str = "the run's record") -> PrecisionChoice:
        """A record of :meth:`to_dict` (a run's config.json ``resolved``), checked."""
        if not isinstance(record, dict) or record.get("precision") not in ("fp32", "bf16"):
            raise FlowmatchError(f"{where}: the recorded precision must be fp32 or bf16, got {record!r}")
        speedup = record.get("bf16_speedup")
        if speedup is not None and (isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not math.isfinite(speedup)):
            raise FlowmatchError(f"{where}: bf16_speedup must be a finite number or null, got {speedup!r}")
        reason = record.get("precision_reason")
        if reason not in REASONS:
            raise FlowmatchError(f"{where}: precision_reason must be one of {', '.join(REASONS)}, got {reason!r}")
        return cls(record["precision"], None if speedup is None else float(speedup), reason)


def choose_precision(
    fp32_seconds: Sequence[float], bf16_seconds: Sequence[float], min_speedup: float = BF16_MIN_SPEEDUP
) -> PrecisionChoice:
    """The micro-benchmark's verdict, a pure function of its timings: bf16 where the median fp32 pass takes at
    least ``min_speedup`` times the median bf16 pass, else fp32 (medians: one slow pass, a page fault or
    another process, does not decide)."""
    if not fp32_seconds or not bf16_seconds:
        raise FlowmatchError("choose_precision needs at least one timing of each precision")
    fp32, bf16 = statistics.median(fp32_seconds), statistics.median(bf16_seconds)
    if not (fp32 > 0 and bf16 > 0 and math.isfinite(fp32) and math.isfinite(bf16)):
        raise FlowmatchError(f"choose_precision needs positive finite timings, got medians {fp32} and {bf16}")
    speedup = fp32 / bf16
    return PrecisionChoice("bf16" if speedup >= min_speedup else "fp32", speedup, "measured")


def decide_precision(
    asked: str,
    device: torch.device,
    measure: Callable[[], tuple[Sequence[float], Sequence[float]]] | None = None,
    *,
    bf16_units: bool | None = None,
) -> PrecisionChoice:
    """What ``precision = asked`` trains in on ``device``.

    ``fp32`` and ``bf16`` are taken as asked. ``auto`` is fp32 on a device without native bf16 matrix units
    (:func:`has_bf16_units`; ``bf16_units`` overrides the look-up), without measuring anything; elsewhere
    ``measure()`` gives (fp32 seconds, bf16 seconds) of a few passes (default: :func:`matmul_probe`, a
    representative MLP at the default width) and :func:`choose_precision` decides: bf16 only where it is
    measurably faster. A CPU with AVX512-BF16 but no AMX, for one, multiplies small bf16 matrices slower
    than fp32 ones (the default MLP trained at 0.69x on an Intel Xeon of that kind; issue 28).

    Only the model's matmuls run in bf16 under ``torch.autocast``: weights, optimiser state, the loss and the
    path stay float32. ``fp32`` gives runs that are bit-for-bit the same on every machine.
    """
    if asked != "auto":
        if asked not in ("fp32", "bf16"):
            raise FlowmatchError(f"precision must be one of auto, fp32, bf16, got {asked!r}")
        return PrecisionChoice(asked, None, "asked")
    units = has_bf16_units(device) if bf16_units is None else bf16_units
    if not units:
        return PrecisionChoice("fp32", None, "no bf16 units")
    fp32, bf16 = (measure or matmul_probe(device))()
    return choose_precision(fp32, bf16)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` resolved on ``device`` without a model (:func:`decide_precision` timing :func:`matmul_probe`);
    a run decides with its own model (:func:`time_precisions`) and records the decision."""
    return decide_precision(name, device).precision


def has_bf16_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively: a CUDA GPU that supports bf16 (Ampere and later),
    or a CPU with AVX512-BF16 or AMX (read from Linux's /proc/cpuinfo; elsewhere: no)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and _cpu_has_bf16_units()


def time_precisions(forward: Callable[[], torch.Tensor], model: torch.nn.Module, device: torch.device) -> tuple[list[float], list[float]]:
    """(fp32 seconds, bf16 seconds) of passes of ``forward()`` (a 0-dim loss of ``model``) and its backward to
    the model's parameters, in fp32 and under bf16 autocast, in turn (see :data:`PROBE_MIN_PASSES`).

    The model is left as it was: it runs in eval mode (no batch-norm statistics move), the gradients are
    returned by ``torch.autograd.grad`` (none accumulates in ``.grad``) and torch's random-number states are
    restored afterwards, so a run's draws are the same whether or not it measured."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    cuda = [device] if device.type == "cuda" else []

    def one(bf16: bool) -> float:
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward()
        if params and loss.requires_grad:
            torch.autograd.grad(loss, params, allow_unused=True)
        _synchronize(device)
        return time.perf_counter() - start

    fp32: list[float] = []
    bf16: list[float] = []
    with torch.random.fork_rng(devices=cuda):
        model.eval()
        try:
            one(False)  # first calls allocate and pick kernels
            one(True)
            spent = 0.0
            while len(fp32) < PROBE_MAX_PASSES and (len(fp32) < PROBE_MIN_PASSES or spent < PROBE_SECONDS):
                fp32.append(one(False))
                bf16.append(one(True))
                spent += fp32[-1] + bf16[-1]
        finally:
            model.train(was_training)
    return fp32, bf16


def matmul_probe(device: torch.device, width: int = 256, depth: int = 3, rows: int = 512) -> Callable[[], tuple[list[float], list[float]]]:
    """The measurement of a model that is not at hand: an MLP of ``depth`` hidden layers of ``width`` (the
    default points model's) on ``rows`` rows (the default batch), timed by :func:`time_precisions`."""

    def measure() -> tuple[list[float], list[float]]:
        generator = torch.Generator().manual_seed(0)
        layers: list[torch.nn.Module] = []
        for _ in range(depth):
            layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model = torch.nn.Sequential(*layers, torch.nn.Linear(width, width)).to(device)
        x = torch.randn(rows, width, generator=generator).to(device)
        return time_precisions(lambda: model(x).float().square().mean(), model, device)

    return measure


def width_probe(model: torch.nn.Module, rows: int, device: torch.device) -> Callable[[], tuple[list[float], list[float]]]:
    """The measurement for a model whose modality gives no batch to run it on: :func:`matmul_probe` at the
    model's width (its widest ``nn.Linear``; 256 where it has none) and depth 3, on ``rows`` rows."""
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return matmul_probe(device, width=max(widths) if widths else 256, rows=rows)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

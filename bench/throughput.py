"""How close flowmatch's sampler comes to this machine's matrix-multiply throughput.

1. Peak: GFLOP/s of a ``MATMUL_N`` x ``MATMUL_N`` matmul (2 N^3 FLOPs) in float32 and bfloat16, best
   of ``REPEATS`` (one thread; the bf16 figure is what the CPU's bf16 units, if any, give through
   torch's CPU kernels).
2. Sampling: flowmatch's ``Flow.sample`` (rk4) and torchdiffeq's ``odeint`` (rk4), both running the
   default network (``flowmatch.models.MLP(2, width=256, depth=3)``) in float32 on ``N_POINTS``
   points at NFE 8 and 100, and flowmatch's ``integrate`` under ``torch.autocast(bfloat16)`` (not a
   ``Flow.sample`` option today: what bf16 would give). The network's FLOPs per evaluation are
   counted by ``torch.utils.flop_counter.FlopCounterMode`` (the matmuls; activations and the solver's
   axpys are not counted), so achieved GFLOP/s = samples/s x NFE x FLOPs per point.

Run ``python -m bench.throughput``; it prints a Markdown table and writes
``bench/results/throughput.md`` and ``throughput.json``. Single-threaded (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from flowmatch.models import MLP  # noqa: E402
from flowmatch.solvers import integrate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MATMUL_N = 4096
REPEATS = 3
N_POINTS = {8: 100_000, 100: 25_000}


def matmul_gflops(dtype: torch.dtype, n: int = MATMUL_N) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a[:256, :256], b[:256, :256])  # warm-up
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def flops_per_point(model: torch.nn.Module, n: int = 1024) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(n, 2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor(0.5))
    return counter.get_total_flops() / n


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sampler_rates(model: torch.nn.Module, nfe: int, n: int) -> dict[str, float]:
    from flowmatch.data import Standardizer
    from flowmatch.paths import make_path
    from flowmatch.runs import Flow
    from torchdiffeq import odeint

    from bench.peers import TimeFirst

    flow = Flow(model, make_path("linear", 0.0, 0.0), Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)), {"source": "gaussian", "seed": 0})
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    field = TimeFirst(model)
    grid = torch.linspace(0, 1, nfe // 4 + 1)

    def bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            integrate(model, x0, solver="rk4", nfe=nfe)

    def tdq():
        with torch.no_grad():
            odeint(field, x0, grid, method="rk4")

    runs = {
        "torchdiffeq odeint rk4, fp32": tdq,
        "flowmatch Flow.sample rk4, fp32": lambda: flow.sample(n, solver="rk4", nfe=nfe, seed=0),
        "flowmatch integrate rk4, bf16 autocast": bf16,
    }
    with torch.no_grad():  # warm-up of the kernels on a small batch
        odeint(field, x0[:512], torch.linspace(0, 1, 3), method="rk4")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            integrate(model, x0[:512], solver="rk4", nfe=8)
    return {name: n / _timed(fn) for name, fn in runs.items()}


def main() -> None:
    torch.set_num_threads(1)
    load = os.getloadavg()
    started = time.perf_counter()
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    torch.manual_seed(0)
    model = MLP(2, width=256, depth=3).eval()
    fpp = flops_per_point(model)
    rates = {nfe: sampler_rates(model, nfe, n) for nfe, n in N_POINTS.items()}
    load_end = os.getloadavg()
    lines = [
        f"Sampler throughput vs matmul peak on {platform.machine()} ({platform.processor() or 'cpu'}), 1 thread, torch {torch.__version__}; "
        f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end; total {time.perf_counter() - started:.0f} s",
        "",
        f"Matmul {MATMUL_N}x{MATMUL_N} (best of {REPEATS}): float32 {peak['fp32']:.1f} GFLOP/s, bfloat16 {peak['bf16']:.1f} GFLOP/s.",
        f"Default MLP (width 256, depth 3): {fpp / 1e3:.1f} kFLOP per point per evaluation (matmuls, FlopCounterMode).",
        "",
        "| sampler | NFE | points | samples/s | GFLOP/s | of fp32 peak | of bf16 peak | vs torchdiffeq rk4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nfe, row in rates.items():
        base = row["torchdiffeq odeint rk4, fp32"]
        for name, rate in row.items():
            gflops = rate * nfe * fpp / 1e9
            lines.append(
                f"| {name} | {nfe} | {N_POINTS[nfe]:,} | {rate:,.0f} | {gflops:.1f} | {gflops / peak['fp32']:.0%} | "
                f"{gflops / peak['bf16']:.0%} | {rate / base:.2f}x |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.md").write_text(table)
    payload = {"load": [load[0], load_end[0]], "matmul_gflops": peak, "flops_per_point": fpp, "points": N_POINTS,
               "samples_per_s": {str(k): v for k, v in rates.items()}}  # fmt: skip
    (RESULTS / "throughput.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

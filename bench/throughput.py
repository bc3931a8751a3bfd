"""How close flowmatch's sampler comes to this machine's matrix-multiply throughput, and what bf16 costs in quality.

1. Peak: GFLOP/s of a ``MATMUL_N`` x ``MATMUL_N`` matmul (2 N^3 FLOPs) in float32 and bfloat16, best
   of ``REPEATS`` (one thread; the bf16 figure is what the CPU's bf16 units, if any, give through
   torch's CPU kernels).
2. Model: the default network (``MLP(2, width=256, depth=3)``) trained by ``flowmatch.engine.train``
   for ``TRAIN_STEPS`` steps on ``DATA`` (so the quality figures mean something; the speed does not
   depend on the weights). Its FLOPs per evaluation are counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (the matmuls; activations and the solver's axpys are
   not counted), so achieved GFLOP/s = samples/s x NFE x FLOPs per point.
3. Sampling speed, rk4 at NFE 8 and NFE 100 on 100,000 points (``N_POINTS``), same network:
   torchdiffeq ``odeint`` (rk4, float32, the whole batch per evaluation); flowmatch ``Flow.sample``
   in fp32 and ``precision="bf16"`` (the product path, default ``batch_size``: cache-sized network
   calls), and ``Flow.sample`` fp32 with ``batch_size=n`` (one network call per stage, as before
   row chunking). Each is run ``ROUNDS`` times, interleaved; the table gives the best round (the
   machine may be shared) and the JSON every round. Flowmatch's time includes drawing the noise.
4. Quality of bf16: from the same noise (``QUALITY_N`` points, seed ``QUALITY_SEED``), the exact W2
   (``flowmatch.evaluation.metrics.w2_exact``) between bf16 and fp32 samples, and each one's W2 against
   ``QUALITY_N`` held-out points, beside the data floor (W2 between two disjoint held-out sets of that
   size: what a perfect sampler scores) and the spread of fp32 W2 over ``QUALITY_SEEDS`` noise seeds.

Run ``python -m bench.throughput``; it prints Markdown and writes ``bench/results/throughput.md`` and
``throughput.json``. Single-threaded (OMP_NUM_THREADS=1, ``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MATMUL_N = 4096
REPEATS = 3
ROUNDS = 3
N_POINTS = {8: 100_000, 100: 100_000}
DATA = "8gaussians"
TRAIN_STEPS = 2000
QUALITY_N = 2000
QUALITY_SEED = 1
QUALITY_SEEDS = (1, 2, 3, 4, 5)

TORCHDIFFEQ = "torchdiffeq odeint rk4, fp32"
ONE_CALL = "flowmatch Flow.sample rk4, fp32, batch_size=n"
FP32 = "flowmatch Flow.sample rk4, fp32"
BF16 = "flowmatch Flow.sample rk4, bf16"


class TimeFirst(torch.nn.Module):
    """torchdiffeq's f(t, x) -> model(x, t)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)


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


def trained_flow():
    from flowmatch.api import train
    from flowmatch.config import TrainConfig

    return train(TrainConfig(data=DATA, steps=TRAIN_STEPS, device="cpu", seed=0), progress=False).flow


def sampler_rates(flow, nfe: int, n: int) -> dict[str, list[float]]:
    """samples/s of each sampler in every round (rounds interleave the samplers)."""
    from torchdiffeq import odeint

    model = flow.model.eval()
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    field = TimeFirst(model)
    grid = torch.linspace(0, 1, nfe // 4 + 1)

    def tdq():
        with torch.no_grad():
            odeint(field, x0, grid, method="rk4")

    runs = {
        TORCHDIFFEQ: tdq,
        ONE_CALL: lambda: flow.sample(n, solver="rk4", nfe=nfe, seed=0, batch_size=n),
        FP32: lambda: flow.sample(n, solver="rk4", nfe=nfe, seed=0),
        BF16: lambda: flow.sample(n, solver="rk4", nfe=nfe, seed=0, precision="bf16"),
    }
    with torch.no_grad():  # warm-up of the kernels on a small batch
        odeint(field, x0[:512], torch.linspace(0, 1, 3), method="rk4")
    flow.sample(512, nfe=8, seed=0)
    flow.sample(512, nfe=8, seed=0, precision="bf16")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - started))
    return rates


def bf16_quality(flow) -> dict[str, dict[str, float]]:
    """Per NFE: W2 between bf16 and fp32 samples from the same noise, each against held-out data, the floor."""
    from flowmatch.evaluation.metrics import w2_exact

    test = flow.dataset.test
    held, other = test[:QUALITY_N], test[QUALITY_N : 2 * QUALITY_N]
    floor = w2_exact(other, held)
    out = {}
    for nfe in N_POINTS:
        fp32 = flow.sample(QUALITY_N, solver="rk4", nfe=nfe, seed=QUALITY_SEED)
        bf16 = flow.sample(QUALITY_N, solver="rk4", nfe=nfe, seed=QUALITY_SEED, precision="bf16")
        seeds = [w2_exact(flow.sample(QUALITY_N, solver="rk4", nfe=nfe, seed=s), held) for s in QUALITY_SEEDS]
        out[str(nfe)] = {
            "w2_bf16_vs_fp32": w2_exact(bf16, fp32),
            "rms_paired_difference": float((bf16 - fp32).double().pow(2).sum(1).mean().sqrt()),
            "w2_fp32_vs_held": w2_exact(fp32, held),
            "w2_bf16_vs_held": w2_exact(bf16, held),
            "floor": floor,
            "fp32_seed_spread": statistics.stdev(seeds),
        }
    return out


def main() -> None:
    torch.set_num_threads(1)
    load = os.getloadavg()
    started = time.perf_counter()
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    torch.manual_seed(0)
    flow = trained_flow()
    fpp = flops_per_point(flow.model)
    rates = {nfe: sampler_rates(flow, nfe, n) for nfe, n in N_POINTS.items()}
    quality = bf16_quality(flow)
    load_end = os.getloadavg()
    lines = [
        f"Sampler throughput vs matmul peak on {platform.machine()} ({platform.processor() or 'cpu'}), 1 thread, torch {torch.__version__}; "
        f"load average {load[0]:.2f} at start, {load_end[0]:.2f} at end; total {time.perf_counter() - started:.0f} s",
        "",
        f"Matmul {MATMUL_N}x{MATMUL_N} (best of {REPEATS}): float32 {peak['fp32']:.1f} GFLOP/s, bfloat16 {peak['bf16']:.1f} GFLOP/s.",
        f"Default MLP (width 256, depth 3), trained {TRAIN_STEPS} steps on {DATA}: {fpp / 1e3:.1f} kFLOP per point per evaluation "
        "(matmuls, FlopCounterMode).",
        f"Best of {ROUNDS} interleaved rounds; `batch_size=n` is one network call per stage (no row chunking).",
        "",
        "| sampler | NFE | points | samples/s | GFLOP/s | of fp32 peak | of bf16 peak | vs torchdiffeq rk4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nfe, row in rates.items():
        base = max(row[TORCHDIFFEQ])
        for name, rounds in row.items():
            rate = max(rounds)
            gflops = rate * nfe * fpp / 1e9
            lines.append(
                f"| {name} | {nfe} | {N_POINTS[nfe]:,} | {rate:,.0f} | {gflops:.1f} | {gflops / peak['fp32']:.0%} | "
                f"{gflops / peak['bf16']:.0%} | {rate / base:.2f}x |"
            )
    lines += [
        "",
        f"bf16 quality: {QUALITY_N:,} samples from the same noise (seed {QUALITY_SEED}), exact W2; held-out data from the "
        f"training set's test split; floor = W2 between two disjoint held-out sets; seed spread = std of fp32 W2 vs held over "
        f"seeds {', '.join(map(str, QUALITY_SEEDS))}.",
        "",
        "| NFE | W2(bf16, fp32) | RMS paired difference | W2(fp32, held) | W2(bf16, held) | floor | fp32 seed spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for nfe, q in quality.items():
        lines.append(
            f"| {nfe} | {q['w2_bf16_vs_fp32']:.4f} | {q['rms_paired_difference']:.4f} | {q['w2_fp32_vs_held']:.4f} | "
            f"{q['w2_bf16_vs_held']:.4f} | {q['floor']:.4f} | {q['fp32_seed_spread']:.4f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.md").write_text(table)
    payload = {"load": [load[0], load_end[0]], "matmul_gflops": peak, "flops_per_point": fpp, "points": N_POINTS,
               "samples_per_s_rounds": {str(k): v for k, v in rates.items()}, "bf16_quality": quality}  # fmt: skip
    (RESULTS / "throughput.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

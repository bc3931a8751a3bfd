"""Training speed: milliseconds per optimiser step of flowmatch's one loop beside a bare loop of ten lines.

Side by side in one run, on one thread, interleaved (bare, flowmatch, bare, ...) and reported as medians:

- **bare loop**: the seed network (``SeedMLP``, width 128), the same fused Adam (lr 1e-3), batches of the built-in
  two-gaussians drawn as flowmatch draws them, uniform times, the straight path, the mean squared error; nothing
  else (:func:`bare_loop`);
- **flowmatch, seed network**: ``flowmatch.train`` with the same network and optimiser, fp32, the conditional target,
  no EMA, and the rest of the engine at its defaults (stratified times, the schedule, the checks, logging);
- **flowmatch, seed network, a time per pair**: the same with ``time_strata=0``, the bare loop's uniform times
  (the engine's default draws 32 stratified times per batch, a different recipe at a few microseconds a step);
- **flowmatch, default MLP**: the default network at the default precision (``auto``) and in fp32, for scale.

At batch 128 and 4,096. Run ``python -m bench.train_speed`` (``--repeats`` sets the number of interleaved rounds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def bare_loop(batch: int, steps: int, seed: int = 0) -> float:
    """Seconds per step of the ten-line loop (module docstring)."""
    from flowmatch.data.toy import sample_builtin
    from flowmatch.models.mlp import SeedMLP

    torch.manual_seed(seed)
    model = SeedMLP(2, width=128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(steps):
        x1 = sample_builtin("two-gaussians", batch, g)
        x0 = torch.randn(x1.shape, generator=g)
        t = torch.rand(batch, generator=g)
        x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
        loss = (model(x_t, t) - (x1 - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return (time.perf_counter() - started) / steps


SEED_NETWORK = {
    "model": "seed-mlp", "width": 128, "lr": 1e-3, "lr_schedule": "constant", "ema": 0.0, "precision": "fp32",
    "target": "conditional", "path": "gaussian",
}  # fmt: skip


def flowmatch_loop(batch: int, steps: int, **options) -> float:
    """Seconds per step of ``flowmatch.train`` (the training clock: the loop, not the set-up)."""
    import flowmatch

    values = {"data": "two-gaussians", "batch_size": batch, "batch_warmup": 0, "steps": steps, "threads": 1, "device": "cpu", **options}
    return flowmatch.train(progress=False, **values).seconds / steps


def measure(batch: int, steps: int, repeats: int) -> dict[str, float]:
    from flowmatch.engine.devices import resolve_precision

    auto = resolve_precision("auto", torch.device("cpu"))
    systems = {
        "bare loop (seed network)": lambda: bare_loop(batch, steps),
        "flowmatch (seed network)": lambda: flowmatch_loop(batch, steps, **SEED_NETWORK),
        "flowmatch (seed network, a time per pair)": lambda: flowmatch_loop(batch, steps, **SEED_NETWORK, time_strata=0),
        "flowmatch, default MLP (fp32)": lambda: flowmatch_loop(batch, steps, precision="fp32"),
    }
    if auto != "fp32":  # a machine with bf16 units: the default precision too
        systems[f"flowmatch, default MLP (auto: {auto})"] = lambda: flowmatch_loop(batch, steps)
    bare_loop(batch, 50)  # warm-up
    flowmatch_loop(batch, 50, **SEED_NETWORK)
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            times[name].append(run())
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians are reported (default: 7)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {128: measure(128, 1000, args.repeats), 4096: measure(4096, 60, args.repeats)}
    systems = list(rows[128])
    bare = "bare loop (seed network)"
    lines = [
        f"Milliseconds per training step on {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}; "
        f"medians of {args.repeats} interleaved rounds (1,000 steps at batch 128, 60 at 4,096)",
        "",
        "| system | batch 128 | vs bare | batch 4,096 | vs bare |",
        "|---|---|---|---|---|",
    ]
    for name in systems:
        a, b = rows[128][name], rows[4096][name]
        lines.append(f"| {name} | {a:.3f} | {a / rows[128][bare]:.2f}x | {b:.2f} | {b / rows[4096][bare]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.md").write_text(table + "\n")
    (RESULTS / "train_speed.json").write_text(json.dumps({str(k): v for k, v in rows.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()

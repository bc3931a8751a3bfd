"""flowmatch against its peers on identical data, network, optimiser and budget, in one run.

Systems (every one trains the SAME network, ``flowmatch.models.MLP(2, width=256, depth=3)`` called
as ``model(x, t)``, wrapped for each library's calling convention; Adam lr 2e-3, batch 256,
``STEPS`` steps, one seed each):

- ``seed (reverse)`` / ``seed (forward)``: the seed document's path (``bench.seed_recipe.
  sample_conditional_path``, sigma_min 0), constant lr; sampled with torchdiffeq ``odeint``, its
  own reverse direction (noise at t = 1, integrating -v to t = 0) and forward. One training, two rows.
- ``TorchCFM CFM`` / ``TorchCFM OT-CFM``: ``torchcfm``'s ``ConditionalFlowMatcher(sigma=0)`` and
  ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``; constant lr; torchdiffeq ``odeint``.
- ``Meta flow_matching``: ``AffineProbPath(CondOTScheduler())``, constant lr; its ``ODESolver``.
- ``flowmatch default``: ``flowmatch.training.train`` with its defaults (cosine lr decay, EMA 0.999
  used for sampling) at the same steps and batch; ``Flow.sample``.
- ``flowmatch ot``: the same with ``coupling="ot"`` (flowmatch's best few-step configuration for now).

Figures per system:

- ``train s``: wall time of the optimisation loop (the peers' clock is paused during probes;
  flowmatch's includes writing its probe checkpoints, see below).
- ``W2/floor`` at NFE 1, 2, 4, 8 (euler) and 100 (rk4; Meta: midpoint, its ODESolver has no rk4
  at a fixed step in the 'midpoint'/'euler' family it documents): exact W2
  (``flowmatch.metrics.w2_exact``) of 2,000 samples against 2,000 held-out points, over the floor
  (W2 between two disjoint held-out draws of 2,000). Same noise draw x0 for every peer (flowmatch's
  ``Flow.sample`` draws its own with seed ``EVAL_SEED``).
- ``time to quality``: every ``PROBE_EVERY`` steps the model is sampled (1,000 points, rk4 NFE 20 with
  ``flowmatch.solvers.integrate`` in the system's direction, with the weights the system samples
  with: EMA for flowmatch) and scored against 1,000 held-out points; the figure is the training
  wall time at the first probe with W2 <= 1.1 x the 1,000-point floor ("-" if never). flowmatch's
  probes come from training checkpoints written every ``PROBE_EVERY`` steps (``checkpoint_every``)
  and their recorded ``seconds``, so its time includes the checkpoint writes (a handicap).
- ``samples/s``: each system's own sampler on ``THROUGHPUT_N[nfe]`` points at NFE 8 and 100
  (torchdiffeq rk4 for seed and TorchCFM, Meta ODESolver midpoint, flowmatch ``Flow.sample``
  rk4), each in a fresh spawned process; ``peak MiB`` is that process's ``ru_maxrss`` growth
  over its value just before sampling (resident set high-water mark, includes the allocator's
  retained memory; tracemalloc cannot see torch's allocations). 0 means sampling stayed under the
  high-water mark the process had already reached (importing torch, loading the model): the figure
  is coarse and only resolves working sets of tens of MiB.

Run ``python -m bench.peers`` (``--tasks two-gaussians,8gaussians-moons --steps 3000``); it prints a
Markdown table and writes ``bench/results/peers.md``, ``peers.json`` and ``peers.png``.
Single-threaded (OMP_NUM_THREADS=1): the numbers are per core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from flowmatch.data import sample_builtin  # noqa: E402
from flowmatch.metrics import w2_exact  # noqa: E402
from flowmatch.models import MLP  # noqa: E402
from flowmatch.solvers import integrate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEPS = 3000
BATCH = 256
LR = 2e-3
PROBE_EVERY = 250
PROBE_N = 1000
PROBE_SOLVER, PROBE_NFE = "rk4", 20
EVAL_N = 2000
EVAL_SEED = 123
NFES = (1, 2, 4, 8, 100)
THROUGHPUT_N = {8: 100_000, 100: 25_000}
TASKS = {
    # name: (source, data); source None = N(0, I)
    "two-gaussians": (None, "two-gaussians"),
    "8gaussians-moons": ("8gaussians", "moons"),
    "checkerboard": (None, "checkerboard"),
}
SYSTEMS = (
    "seed (reverse)",
    "seed (forward)",
    "TorchCFM CFM",
    "TorchCFM OT-CFM",
    "Meta flow_matching",
    "flowmatch default",
    "flowmatch ot",
)


def new_model() -> MLP:
    return MLP(2, width=256, depth=3)


# -- wrappers for each library's calling convention --------------------------------------------
class TimeFirst(nn.Module):
    """torchdiffeq's f(t, x) -> model(x, t)."""

    def __init__(self, model, sign: float = 1.0):
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, t, x):
        v = self.model(x, t)
        return v if self.sign == 1.0 else -v


def meta_wrapper(model):
    from flow_matching.utils import ModelWrapper

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(x, t)

    return Wrapped(model)


# -- data ---------------------------------------------------------------------------------------
class Task:
    def __init__(self, name: str):
        self.name = name
        self.source, self.data = TASKS[name]
        self.held_a = sample_builtin(self.data, EVAL_N, generator=10_001)
        self.held_b = sample_builtin(self.data, EVAL_N, generator=10_002)
        self.floor = w2_exact(self.held_b, self.held_a)
        self.probe_floor = w2_exact(self.held_b[:PROBE_N], self.held_a[:PROBE_N])
        g = torch.Generator().manual_seed(EVAL_SEED)
        self.x0_eval = self.draw_x0(EVAL_N, g)
        self.x0_probe = self.x0_eval[:PROBE_N]

    def draw_x0(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.source is None:
            return torch.randn(n, 2, generator=g)
        return sample_builtin(self.source, n, g)

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = sample_builtin(self.data, BATCH, g)
        return self.draw_x0(BATCH, g), x1


# -- the peers' losses ----------------------------------------------------------------------------
def seed_loss():
    from bench.seed_recipe import sample_conditional_path

    def loss(model, x0, x1):
        t = torch.rand(len(x1))
        x_t, u = sample_conditional_path(x1, t)  # draws its own eps: the seed path is noise-only
        return ((model(x_t, t) - u) ** 2).mean()

    return loss


def torchcfm_loss(ot: bool):
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0) if ot else ConditionalFlowMatcher(sigma=0.0)

    def loss(model, x0, x1):
        t, x_t, u = fm.sample_location_and_conditional_flow(x0, x1)
        return ((model(x_t, t) - u) ** 2).mean()

    return loss


def meta_loss():
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(model, x0, x1):
        t = torch.rand(len(x1))
        s = path.sample(x_0=x0, x_1=x1, t=t)
        return ((model(s.x_t, s.t) - s.dx_t) ** 2).mean()

    return loss


# -- each system's sampler: (model or flow, x0, method, nfe) -> samples ----------------------------
@torch.no_grad()
def sample_torchdiffeq(model, x0, method: str, nfe: int, reverse: bool = False):
    from torchdiffeq import odeint

    steps = nfe // (4 if method == "rk4" else 1)
    grid = torch.linspace(1, 0, steps + 1) if reverse else torch.linspace(0, 1, steps + 1)
    return odeint(TimeFirst(model, -1.0 if reverse else 1.0), x0, grid, method=method)[-1]


@torch.no_grad()
def sample_meta(model, x0, method: str, nfe: int):
    from flow_matching.solver import ODESolver

    method = "midpoint" if method == "rk4" else method
    steps = nfe // (2 if method == "midpoint" else 1)
    solver = ODESolver(velocity_model=meta_wrapper(model))
    return solver.sample(x_init=x0, step_size=1.0 / steps, method=method, time_grid=torch.tensor([0.0, 1.0]))


def sample_flowmatch(flow, x0, method: str, nfe: int):
    return flow.sample(len(x0), solver=method, nfe=nfe, seed=EVAL_SEED)


def sampler_for(system: str):
    if system == "seed (reverse)":
        return lambda m, x0, method, nfe: sample_torchdiffeq(m, x0, method, nfe, reverse=True)
    if system.startswith("seed") or system.startswith("TorchCFM"):
        return sample_torchdiffeq
    if system.startswith("Meta"):
        return sample_meta
    return sample_flowmatch


def probe_w2(task: Task, model, reverse: bool = False) -> float:
    with torch.no_grad():
        f = (lambda x, t: -model(x, t)) if reverse else model
        x = integrate(f, task.x0_probe, solver=PROBE_SOLVER, nfe=PROBE_NFE, t0=1.0 if reverse else 0.0, t1=0.0 if reverse else 1.0).x
    return w2_exact(x, task.held_a[:PROBE_N])


def time_to_quality(probes: list[dict], floor: float) -> float | None:
    for p in probes:
        if p["w2"] <= 1.1 * floor:
            return p["seconds"]
    return None


# -- training -------------------------------------------------------------------------------------
def train_peer(task: Task, loss_fn, steps: int, also_reverse: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = new_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    probes, clock = [], 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        x0, x1 = task.batch(g)
        loss = loss_fn(model, x0, x1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock += time.perf_counter() - started
        if step % PROBE_EVERY == 0 or step == steps:
            probe = {"step": step, "seconds": clock, "w2": probe_w2(task, model.eval())}
            if also_reverse:
                probe["w2_reverse"] = probe_w2(task, model, reverse=True)
            probes.append(probe)
            model.train()
    return model.eval(), clock, probes


def train_flowmatch(task: Task, steps: int, seed: int = 0, **options):
    from flowmatch.checkpoints import list_states, load_state, unprefixed
    from flowmatch.training import TrainConfig, train

    config = TrainConfig(
        data=task.data, source=task.source or "gaussian", steps=steps, batch_size=BATCH, lr=LR, device="cpu",
        seed=seed, checkpoint_every=PROBE_EVERY, keep_checkpoints=steps // PROBE_EVERY + 2, **options,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, run_dir=Path(tmp) / "run", progress=False)
        probes = []
        for folder in list_states(Path(tmp) / "run"):
            tensors, meta = load_state(folder)
            step = int(folder.name.split("-")[-1])
            if step == 0:
                continue
            model = new_model()
            model.load_state_dict(unprefixed("ema", tensors) or unprefixed("model", tensors))
            probes.append({"step": step, "seconds": meta["seconds"], "w2": probe_w2(task, model.eval())})
    probes.sort(key=lambda p: p["step"])
    return result.flow, result.seconds, probes


def quality(task: Task, system: str, obj) -> dict[str, float]:
    sampler = sampler_for(system)
    out = {}
    for nfe in NFES:
        method = "euler" if nfe <= 8 else "rk4"
        x = sampler(obj, task.x0_eval, method, nfe)
        out[str(nfe)] = w2_exact(x, task.held_a) / task.floor
    return out


# -- throughput, one fresh process per measurement ------------------------------------------------
def _throughput_worker(args):
    kind, state, nfe, n, queue = args
    torch.set_num_threads(1)
    model = new_model()
    model.load_state_dict(state)
    model.eval()
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    if kind == "flowmatch":
        from flowmatch.paths import make_path
        from flowmatch.runs import Flow
        from flowmatch.data import Standardizer

        obj = Flow(model, make_path("linear", 0.0, 0.0), Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)), {"source": "gaussian", "seed": 0})
        run = lambda: obj.sample(n, solver="rk4", nfe=nfe, seed=0)  # noqa: E731
    elif kind == "meta":
        run = lambda: sample_meta(model, x0, "midpoint", nfe)  # noqa: E731
    else:
        run = lambda: sample_torchdiffeq(model, x0, "rk4", nfe)  # noqa: E731
    sample_torchdiffeq(model, x0[:256], "rk4", 4)  # warm-up of the shared kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"samples_per_s": n / seconds, "seconds": seconds, "peak_mib": (after - before) / 1024})


def throughput(kind: str, state, nfe: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_throughput_worker, args=((kind, state, nfe, THROUGHPUT_N[nfe], queue),))
    p.start()
    out = queue.get()
    p.join()
    return out


SAMPLER_KIND = {
    "seed (reverse)": "torchdiffeq",
    "seed (forward)": "torchdiffeq",
    "TorchCFM CFM": "torchdiffeq",
    "TorchCFM OT-CFM": "torchdiffeq",
    "Meta flow_matching": "meta",
    "flowmatch default": "flowmatch",
    "flowmatch ot": "flowmatch",
}
SAMPLER_NAME = {"torchdiffeq": "torchdiffeq odeint rk4", "meta": "Meta ODESolver midpoint", "flowmatch": "flowmatch Flow.sample rk4"}


# -- the run -----------------------------------------------------------------------------------------
def run_task(name: str, steps: int, log) -> dict:
    task = Task(name)
    rows: dict[str, dict] = {}
    states: dict[str, dict] = {}

    def record(system, obj, seconds, probes, state):
        rows[system] = {
            "train_s": seconds,
            "w2_over_floor": quality(task, system, obj),
            "probes": probes,
            "time_to_quality_s": time_to_quality(probes, task.probe_floor),
        }
        states[system] = state
        log(f"  {system}: {seconds:.1f} s, W2/floor {rows[system]['w2_over_floor']}, TTQ {rows[system]['time_to_quality_s']}")

    if task.source is None:
        model, seconds, probes = train_peer(task, seed_loss(), steps, also_reverse=True)
        reverse = [{"step": p["step"], "seconds": p["seconds"], "w2": p.pop("w2_reverse")} for p in probes]
        record("seed (reverse)", model, seconds, reverse, model.state_dict())
        record("seed (forward)", model, seconds, probes, model.state_dict())
    for system, loss in (("TorchCFM CFM", torchcfm_loss(False)), ("TorchCFM OT-CFM", torchcfm_loss(True)), ("Meta flow_matching", meta_loss())):
        model, seconds, probes = train_peer(task, loss, steps)
        record(system, model, seconds, probes, model.state_dict())
    for system, options in (("flowmatch default", {}), ("flowmatch ot", {"coupling": "ot"})):
        flow, seconds, probes = train_flowmatch(task, steps, **options)
        record(system, flow, seconds, probes, flow.model.state_dict())
    return {"floor": task.floor, "probe_floor": task.probe_floor, "rows": rows, "states": states}


def table(results: dict, tput: dict, header: str) -> str:
    lines = [header, ""]
    for name, res in results.items():
        lines += [
            f"### {name} (W2 floor {res['floor']:.3f} at 2,000 points; probe floor {res['probe_floor']:.3f} at 1,000)",
            "",
            "| system | train s | time to W2 <= 1.1x floor, s | W2/floor NFE 1 | 2 | 4 | 8 | 100 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for system in SYSTEMS:
            if system not in res["rows"]:
                continue
            r = res["rows"][system]
            q = r["w2_over_floor"]
            ttq = r["time_to_quality_s"]
            ttq_s = "-" if ttq is None else f"{ttq:.1f}"
            lines.append(f"| {system} | {r['train_s']:.1f} | {ttq_s} | " + " | ".join(f"{q[str(n)]:.2f}" for n in NFES) + " |")
        lines.append("")
    lines += [
        f"### Sampling throughput (one thread; NFE 8: {THROUGHPUT_N[8]:,} points, NFE 100: {THROUGHPUT_N[100]:,} points)",
        "",
        "| sampler (systems) | samples/s NFE 8 | samples/s NFE 100 | peak MiB NFE 8 | peak MiB NFE 100 |",
        "|---|---|---|---|---|",
    ]
    for kind, r in tput.items():
        users = ", ".join(s for s, k in SAMPLER_KIND.items() if k == kind)
        lines.append(
            f"| {SAMPLER_NAME[kind]} ({users}) | {r['8']['samples_per_s']:,.0f} | {r['100']['samples_per_s']:,.0f} | "
            f"{r['8']['peak_mib']:.0f} | {r['100']['peak_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for system in SYSTEMS:
            if system in res["rows"]:
                q = res["rows"][system]["w2_over_floor"]
                ax.plot(NFES, [q[str(n)] for n in NFES], marker="o", label=system)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(NFES, [str(n) for n in NFES])
        ax.set_xlabel("NFE (euler 1-8, rk4/midpoint 100)")
        ax.set_ylabel("W2 / floor")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("--tasks", default="two-gaussians,8gaussians-moons", help=f"comma separated, from {', '.join(TASKS)}")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = {}
    started = time.perf_counter()
    for name in args.tasks.split(","):
        log(f"task {name}")
        results[name] = run_task(name, args.steps, log)
    tput: dict = {}
    if not args.no_throughput:
        state = results[next(iter(results))]["states"]["flowmatch default"]
        for kind in ("torchdiffeq", "meta", "flowmatch"):
            tput[kind] = {str(nfe): throughput(kind, state, nfe) for nfe in (8, 100)}
            log(f"  throughput {kind}: {tput[kind]}")
    load_end = os.getloadavg()
    header = (
        f"flowmatch vs peers on {platform.machine()}, 1 thread, torch {torch.__version__}; {args.steps} steps, batch {BATCH}, "
        f"Adam lr {LR}, MLP width 256 depth 3, ONE seed (0) per system; load average {load[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end; total {time.perf_counter() - started:.0f} s"
    )
    text = table(results, tput, header)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.md").write_text(text)
    payload = {
        "header": header,
        "steps": args.steps,
        "probe": {"every": PROBE_EVERY, "n": PROBE_N, "solver": PROBE_SOLVER, "nfe": PROBE_NFE, "threshold": 1.1},
        "throughput_points": THROUGHPUT_N,
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "states"} for k, v in results.items()},
        "throughput": tput,
    }
    (RESULTS / "peers.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, RESULTS / "peers.png")


if __name__ == "__main__":
    main()

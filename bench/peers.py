"""flowmatch against its peers on identical data, network, optimiser and budget, in one run.

Systems (every one trains the SAME network, ``flowmatch.models.MLP(dim, width=256, depth=3)`` called
as ``model(x, t)``, wrapped for each library's calling convention; Adam, ``STEPS`` steps; seeds 0,
1, 2; the peers at lr ``LR`` = 2e-3 and batch ``BATCH`` = 256, flowmatch's default at its own lr
and batch schedule):

- ``seed (reverse)`` / ``seed (forward)``: the seed document's path (``bench.seed_recipe.
  sample_conditional_path``, sigma_min 0), constant lr; sampled with torchdiffeq ``odeint``, its
  own reverse direction (noise at t = 1, integrating -v to t = 0) and forward. One training, two
  rows; only on tasks whose source is N(0, I) (the seed path has no other source).
- ``TorchCFM CFM`` / ``TorchCFM OT-CFM``: ``torchcfm``'s ``ConditionalFlowMatcher(sigma=0)`` and
  ``ExactOptimalTransportConditionalFlowMatcher(sigma=0)``; constant lr; torchdiffeq ``odeint``.
- ``Meta flow_matching``: ``AffineProbPath(CondOTScheduler())``, constant lr; its ``ODESolver``.
- ``flowmatch default``: ``flowmatch.engine.train`` with its defaults (cosine lr decay, EMA 0.999
  with warm-up, used for sampling; fused Adam; ``precision="auto"``, which on a CPU with bf16 units
  autocasts the model's matmuls to bfloat16; lr 4e-3; batch 512 after a warm-up from 256 over the
  first 1,000 steps; 32 stratified training times per batch, each shared by a run of pairs; the
  posterior target where it applies, i.e. from N(0, I)) at the same steps; ``Flow.sample``. The row
  ``flowmatch default, bf16 sampling`` is the same model sampled with ``Flow.sample(precision="bf16")``;
  ``flowmatch default, fp32 training`` trains with ``precision="fp32"`` (everything else the default),
  to show what bf16 training changes (on a CPU without bf16 units it is the default itself).
- ``flowmatch ot``: the same with ``coupling="ot"`` at the peers' lr and batch (256, no warm-up: the
  exact coupling costs about 5x as much at 512).
- ``flowmatch distill-1``: flowmatch's best few-step configuration: ``flowmatch ot`` distilled
  (``flowmatch.modalities.points.rectify.distill``) into a one-Euler-step student on ``PAIRS`` rk4 NFE 100 pairs,
  ``DISTILL_STEPS`` steps at lr 1e-3. Its training time adds the teacher's, the pairs' and the
  student's; it is scored at NFE 1 only (what it was trained for).

The peers train at a constant learning rate, so a larger batch only lowers their noise floor
slowly: at batch 512 on checkerboard (seed 0, 6,000 steps, this module's peer loop) none of seed,
TorchCFM CFM or Meta reached W2 <= 1.1x floor (best probes 1.15, 1.19, 1.16), so 256 is the peers'
best measured batch. Nor does flowmatch's lr of 4e-3 help them: ``--peers-only --lr 0.004`` reruns
them at it (``peers-long-two-gaussians-lr0.004.*``; see the README for the figures).

Figures per system and task, median over the seeds (spread: min to max):

- ``train s``: wall time of the optimisation loop (every clock is paused during probes).
- ``W2/floor`` at NFE 1, 2, 4, 8 (euler) and 100 (rk4; Meta: midpoint, its ODESolver has no rk4):
  on the 2-D tasks the mean exact W2 (``flowmatch.evaluation.metrics.w2_exact``) over ``DRAWS`` chunks of
  ``N_SCORE`` samples, each against its own held-out set, over the floor, the mean W2 between as
  ``FLOOR_PAIRS`` pairs of disjoint held-out sets: what a perfect sampler scores on average
  (``bench.heldout``).
  One draw is too noisy to rank systems: on two-gaussians a perfect sampler's single W2 of 1,000
  points ranges about 0.5-1.6x the floor (the count of points in each mode). Every system, flowmatch
  included (``Flow.sample(x0=...)``), starts from the same noise x0.
- ``time to quality``: after each step in ``PROBE_STEPS`` the model is sampled (rk4 NFE 20 with
  ``flowmatch.solvers.integrate`` in the system's direction, with the weights the system samples
  with: EMA for flowmatch, through ``train``'s callback) and scored as above; the figure is the
  training wall time at the first probe with W2 <= 1.1 x floor ("-" if never). The first table
  compares the fastest flowmatch system with the fastest peer (see :func:`versus_peers`).
- ``samples/s``: each system's own sampler on ``THROUGHPUT_N[nfe]`` points at NFE 8 and 100
  (torchdiffeq rk4 for seed and TorchCFM, Meta ODESolver midpoint, flowmatch ``Flow.sample``
  rk4 in fp32 and bf16), each in a fresh spawned process; ``peak MiB`` is that process's ``ru_maxrss``
  growth over its value just before sampling (resident set high-water mark, includes the allocator's
  retained memory; tracemalloc cannot see torch's allocations). 0 means sampling stayed under the
  high-water mark the process had already reached (importing torch, loading the model): the figure
  is coarse and only resolves working sets of tens of MiB.

Tasks: ``two-gaussians``, ``checkerboard`` (N(0, I) source), ``8gaussians-moons`` (8gaussians as the
source) and ``wine`` (scikit-learn's bundled table, 13-D, standardised on its train rows; held-out =
its 36 test rows; every W2 is in standardised coordinates and is the mean over ``TABLE_DRAWS`` sets of
36 samples, the floor the mean over as many random sets of 36 train rows).

Run ``python -m bench.peers`` (``--tasks two-gaussians,checkerboard --seeds 0 --steps 3000 --jobs 2``); it
prints a Markdown table and writes ``bench/results/peers.md``, ``peers.json`` and ``peers.png`` (quality
against NFE and against training time). Single-threaded (OMP_NUM_THREADS=1): the numbers are per core;
``--jobs`` runs (task, seed) jobs in that many processes at once. ``--peers-only --steps 12000`` trains
only the peers, for longer, to see whether and when they reach the quality target at all (writes
``peers-long-<tasks>.*``, e.g. ``peers-long-checkerboard.*``); ``--batch`` and ``--lr`` set the peers'
batch and learning rate (and ``flowmatch ot``'s; result files then carry ``-b<batch>``, ``-lr<lr>``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.heldout import HeldOut  # noqa: E402
from flowmatch.data.dataset import load_dataset  # noqa: E402
from flowmatch.data.toy import TABLE_NAMES, sample_builtin
from flowmatch.evaluation.metrics import w2_exact  # noqa: E402
from flowmatch.models.mlp import MLP  # noqa: E402
from flowmatch.solvers.integration import integrate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEPS = 3000
DEFAULT_BATCH = 256
BATCH = DEFAULT_BATCH  # the peers' batch; run_task sets it from --batch in each worker
DEFAULT_LR = 2e-3
LR = DEFAULT_LR  # the peers' (and flowmatch ot's) learning rate; run_task sets it from --lr in each worker
SEEDS = (0, 1, 2)
PROBE_STEPS = (
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    400,
    500,
    600,
    800,
    1000,
    1250,
    1500,
    2000,
    2500,
    3000,
    4000,
    5000,
    6000,
    8000,
    10_000,
    12_000,
)
PROBE_SOLVER, PROBE_NFE = "rk4", 20
THRESHOLD = 1.1  # time to quality of the tables: W2 <= this x its floor
SHAPE_THRESHOLD = 1.2  # ... of the 2-D sets: the shape score <= this (flowmatch's defaults end at 1.02-1.06 on 8gaussians)
N_SCORE, DRAWS = 1000, 10  # a 2-D score: the mean W2 over DRAWS chunks of N_SCORE samples (bench.heldout)
FLOOR_PAIRS = 50  # pairs of held-out sets behind the floor: one pair of 1,000 points ranges 0.6-1.4x their mean
EVAL_SEED = 123
TABLE_DRAWS = 20
PAIRS = 10_000
DISTILL_STEPS = 2000
NFES = (1, 2, 4, 8, 100)
THROUGHPUT_N = {8: 100_000, 100: 100_000}
TASKS = {
    # name: (source, data); source None = N(0, I)
    "two-gaussians": (None, "two-gaussians"),
    "checkerboard": (None, "checkerboard"),
    "8gaussians-moons": ("8gaussians", "moons"),
    "wine": (None, "wine"),
}
SYSTEMS = (
    "seed (reverse)",
    "seed (forward)",
    "TorchCFM CFM",
    "TorchCFM OT-CFM",
    "Meta flow_matching",
    "flowmatch default",
    "flowmatch default, bf16 sampling",
    "flowmatch default, fp32 training",
    "flowmatch ot",
    "flowmatch distill-1",
)
PEERS = ("seed (reverse)", "seed (forward)", "TorchCFM CFM", "TorchCFM OT-CFM", "Meta flow_matching")


def new_model(dim: int) -> MLP:
    return MLP(dim, width=256, depth=3)


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
    """The data, held-out sets and floors of one task; every W2 is in the model's coordinates.

    2-D sets: a score is the mean of W2 over ``DRAWS`` chunks of ``N_SCORE`` samples, each against its
    own held-out set, over the floor (the mean W2 between as many pairs of disjoint held-out sets; see
    :mod:`bench.heldout`). Probes and the table use the same score and the same noise x0 for every
    system.

    ``wine``: the reference is the test split (36 rows) and a score is the mean W2 over
    ``TABLE_DRAWS`` sets of 36 samples; the floor the mean W2 of as many random sets of 36 train rows.
    """

    def __init__(self, name: str, seed: int):
        self.name = name
        self.source, self.data = TASKS[name]
        if self.data in TABLE_NAMES:
            dataset = load_dataset(self.data, seed=seed)  # flowmatch's own split and standardiser for this seed
            self.train = dataset.train
            self.dim = dataset.dim
            self.reference = dataset.to_model(dataset.test).float()
            g = torch.Generator().manual_seed(10_001)
            m = len(self.reference)
            self.floor = statistics.mean(
                w2_exact(self.train[torch.randperm(len(self.train), generator=g)[:m]], self.reference) for _ in range(TABLE_DRAWS)
            )
            self.held = None
            n = m * TABLE_DRAWS
        else:
            self.train = None
            self.dim = 2
            self.held = HeldOut(self.data, N_SCORE, DRAWS, floor_pairs=FLOOR_PAIRS)
            self.floor = self.held.floor
            n = N_SCORE * DRAWS
        self.x0 = self.draw_x0(n, torch.Generator().manual_seed(EVAL_SEED))

    def shape(self, samples: torch.Tensor) -> float | None:
        """The shape score's ratio (``HeldOut.shape``: within-mode W2 over its floor, median of the chunks);
        None for the tables, scored by W2 alone."""
        return None if self.held is None else self.held.shape(samples)["ratio"]

    def score(self, samples: torch.Tensor) -> float:
        """W2 / floor of samples in model coordinates (the mean over the chunks)."""
        if self.held is not None:
            return self.held.score(samples)
        w2 = statistics.mean(w2_exact(c, self.reference) for c in samples.float().split(len(self.reference)))
        return w2 / self.floor

    def draw_x0(self, n: int, g: torch.Generator) -> torch.Tensor:
        if self.source is None:
            return torch.randn(n, self.dim, generator=g)
        return sample_builtin(self.source, n, g).float()

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train is not None:
            x1 = self.train[torch.randint(len(self.train), (BATCH,), generator=g)]
        else:
            x1 = sample_builtin(self.data, BATCH, g).float()
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


def sample_flowmatch(flow, x0, method: str, nfe: int, precision: str = "fp32"):
    """flowmatch's own sampler from the same x0, returned in model coordinates as the others are."""
    x = flow.sample(len(x0), solver=method, nfe=nfe, x0=x0, precision=precision)
    return flow.standardizer.forward(x).float()


def sampler_for(system: str):
    if system == "seed (reverse)":
        return lambda m, x0, method, nfe: sample_torchdiffeq(m, x0, method, nfe, reverse=True)
    if system.startswith("seed") or system.startswith("TorchCFM"):
        return sample_torchdiffeq
    if system.startswith("Meta"):
        return sample_meta
    if system.endswith("bf16 sampling"):
        return lambda flow, x0, method, nfe: sample_flowmatch(flow, x0, method, nfe, precision="bf16")
    return sample_flowmatch


def probe_score(task: Task, model, reverse: bool = False) -> dict:
    """rk4 NFE 20 samples of ``model`` (a velocity callable in model coordinates): ``score`` W2 / probe floor,
    ``shape`` the shape score's ratio (None for the tables)."""
    with torch.no_grad():
        f = (lambda x, t: -model(x, t)) if reverse else model
        x = integrate(f, task.x0, solver=PROBE_SOLVER, nfe=PROBE_NFE, t0=1.0 if reverse else 0.0, t1=0.0 if reverse else 1.0).x
    return {"score": task.score(x), "shape": task.shape(x)}


def time_to_quality(probes: list[dict]) -> float | None:
    """The training seconds of the first probe at the quality target: shape <= :data:`SHAPE_THRESHOLD` where
    the task has a shape score (the 2-D sets), else W2 <= :data:`THRESHOLD` x its floor (the tables)."""
    for p in probes:
        if p.get("shape") is not None and p["shape"] <= SHAPE_THRESHOLD:
            return p["seconds"]
        if p.get("shape") is None and p["score"] <= THRESHOLD:
            return p["seconds"]
    return None


# -- training -------------------------------------------------------------------------------------
def train_peer(task: Task, loss_fn, steps: int, seed: int, also_reverse: bool = False):
    torch.manual_seed(seed)
    model = new_model(task.dim)
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
        if step in PROBE_STEPS or step == steps:
            model.eval()
            probe = {"step": step, "seconds": clock, **probe_score(task, model)}
            if also_reverse:
                back = probe_score(task, model, reverse=True)
                probe["score_reverse"], probe["shape_reverse"] = back["score"], back["shape"]
            probes.append(probe)
            model.train()
    return model.eval(), clock, probes


def train_flowmatch(task: Task, steps: int, seed: int, folder: Path | None = None, **options):
    """flowmatch.engine.train; probes through its callback (the training clock stops during them)."""
    from flowmatch.api import train
    from flowmatch.config import TrainConfig

    probes = []

    def probe(step, flow, seconds):
        probes.append({"step": step, "seconds": seconds, **probe_score(task, flow.model)})

    config = TrainConfig(data=task.data, source=task.source or "gaussian", steps=steps, device="cpu", seed=seed, **options)
    result = train(config, run_dir=folder, progress=False, callback=probe, callback_steps=set(PROBE_STEPS) | {steps})
    return result, probes


def quality(task: Task, system: str, obj, nfes=NFES) -> dict[str, float]:
    sampler = sampler_for(system)
    out = {}
    for nfe in nfes:
        method = "euler" if nfe <= 8 else "rk4"
        out[str(nfe)] = task.score(sampler(obj, task.x0, method, nfe))
    return out


def shape_quality(task: Task, system: str, obj, nfe: int = max(NFES)) -> float | None:
    """The shape score's ratio of the samples at ``nfe`` (rk4 above 8; see :meth:`Task.shape`)."""
    return task.shape(sampler_for(system)(obj, task.x0, "euler" if nfe <= 8 else "rk4", nfe))


# -- throughput, one fresh process per measurement ------------------------------------------------
def _throughput_worker(args):
    kind, state, nfe, n, queue = args
    torch.set_num_threads(1)
    model = new_model(2)
    model.load_state_dict(state)
    model.eval()
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    if kind.startswith("flowmatch"):
        from flowmatch.data.standardize import Standardizer
        from flowmatch.flows.continuous import Flow
        from flowmatch.paths.affine import make_path

        identity = Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
        obj = Flow(model, make_path("linear", 0.0, 0.0), identity, {"source": "gaussian", "seed": 0})
        precision = "bf16" if kind.endswith("bf16") else "fp32"
        run = lambda: obj.sample(n, solver="rk4", nfe=nfe, seed=0, precision=precision)  # noqa: E731
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
    "flowmatch default, fp32 training": "flowmatch",
    "flowmatch ot": "flowmatch",
    "flowmatch default, bf16 sampling": "flowmatch-bf16",
}
SAMPLER_NAME = {
    "torchdiffeq": "torchdiffeq odeint rk4, fp32",
    "meta": "Meta ODESolver midpoint, fp32",
    "flowmatch": "flowmatch Flow.sample rk4, fp32",
    "flowmatch-bf16": "flowmatch Flow.sample rk4, bf16",
}


# -- one task and seed -------------------------------------------------------------------------------
def run_task(name: str, seed: int, steps: int, peers_only: bool = False, batch: int = DEFAULT_BATCH, lr: float = DEFAULT_LR) -> dict:
    """Every system on one task and seed: {system: {train_s, w2_over_floor, probes, time_to_quality_s}}.

    ``peers_only``: only the peers' systems (to see whether and when they reach the quality target
    over a longer budget than flowmatch needs).
    """
    global BATCH, LR
    BATCH, LR = batch, lr  # set here, in the worker process (spawned workers do not see the parent's globals)
    torch.set_num_threads(1)
    task = Task(name, seed)
    rows: dict[str, dict] = {}
    log = lambda msg: print(f"  [{name} seed {seed}] {msg}", flush=True)  # noqa: E731

    def record(system, obj, seconds, probes, nfes=NFES):
        rows[system] = {
            "train_s": seconds,
            "w2_over_floor": quality(task, system, obj, nfes),
            "shape": shape_quality(task, system, obj, max(nfes)),
            "probes": probes,
            "time_to_quality_s": time_to_quality(probes) if probes is not None else None,
        }
        log(f"{system}: {seconds:.1f} s, W2/floor {rows[system]['w2_over_floor']}, TTQ {rows[system]['time_to_quality_s']}")

    if task.source is None:
        model, seconds, probes = train_peer(task, seed_loss(), steps, seed, also_reverse=True)
        reverse = [
            {"step": p["step"], "seconds": p["seconds"], "score": p.pop("score_reverse"), "shape": p.pop("shape_reverse")} for p in probes
        ]
        record("seed (reverse)", model, seconds, reverse)
        record("seed (forward)", model, seconds, probes)
    for system, loss in (
        ("TorchCFM CFM", torchcfm_loss(False)),
        ("TorchCFM OT-CFM", torchcfm_loss(True)),
        ("Meta flow_matching", meta_loss()),
    ):
        model, seconds, probes = train_peer(task, loss, steps, seed)
        record(system, model, seconds, probes)
    if peers_only:
        return {"task": name, "seed": seed, "floor": task.floor, "rows": rows, "state": None}
    state = None
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        result, probes = train_flowmatch(task, steps, seed)
        record("flowmatch default", result.flow, result.seconds, probes)
        record("flowmatch default, bf16 sampling", result.flow, result.seconds, None)
        state = result.flow.model.state_dict()
        result, probes = train_flowmatch(task, steps, seed, precision="fp32")
        record("flowmatch default, fp32 training", result.flow, result.seconds, probes)
        teacher = Path(tmp) / "ot"
        result, probes = train_flowmatch(task, steps, seed, folder=teacher, coupling="ot", batch_size=BATCH, batch_warmup=0, lr=LR)
        result.flow.save_checkpoint(teacher)
        record("flowmatch ot", result.flow, result.seconds, probes)
        teacher_seconds = result.seconds
        from flowmatch.rectify import distill

        student, metrics = distill(
            teacher, Path(tmp) / "distill-1", nfe=1, n_pairs=PAIRS, steps=DISTILL_STEPS, lr=1e-3, progress=False, evaluate=False
        )
        seconds = teacher_seconds + metrics["pair_seconds"] + student.seconds
        record("flowmatch distill-1", student.flow, seconds, None, nfes=(1,))
    return {"task": name, "seed": seed, "floor": task.floor, "rows": rows, "state": state if name == "two-gaussians" else None}


# -- summary over seeds ---------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    """Median and spread (min, max) over seeds of each figure, per task and system."""
    out: dict = {}
    for name in TASKS:
        of_task = [r for r in runs if r["task"] == name]
        if not of_task:
            continue
        task = {"floor": statistics.median(r["floor"] for r in of_task), "seeds": [r["seed"] for r in of_task], "rows": {}}
        for system in SYSTEMS:
            entries = [r["rows"][system] for r in of_task if system in r["rows"]]
            if not entries:
                continue
            row = {"train_s": _stat([e["train_s"] for e in entries]), "w2_over_floor": {}}
            if all(e.get("shape") is not None for e in entries):
                row["shape"] = _stat([e["shape"] for e in entries])
            for nfe in entries[0]["w2_over_floor"]:
                row["w2_over_floor"][nfe] = _stat([e["w2_over_floor"][nfe] for e in entries])
            if entries[0]["probes"] is not None:
                reached = [e["time_to_quality_s"] for e in entries]
                # the median of the seeds, counting a seed that never got there as infinitely slow
                times = sorted(float("inf") if t is None else t for t in reached)
                median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
                row["time_to_quality_s"] = {"median": None if median == float("inf") else median, "each": reached}
            task["rows"][system] = row
        out[name] = task
    return out


def _stat(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def versus_peers(summary: dict) -> dict:
    """Per task: the fastest flowmatch system to quality against the fastest peer (medians over seeds).

    A peer that never got there in most seeds is slower than its whole training time, so the ratio is
    then an upper bound ("<").
    """
    out = {}
    for name, res in summary.items():
        rows = res["rows"]
        timed = {s: r for s, r in rows.items() if "time_to_quality_s" in r}
        ours = {
            s: r["time_to_quality_s"]["median"]
            for s, r in timed.items()
            if s.startswith("flowmatch") and r["time_to_quality_s"]["median"] is not None
        }
        theirs = {s: r["time_to_quality_s"]["median"] for s, r in timed.items() if s in PEERS}
        if not ours or not theirs:
            continue
        best = min(ours, key=ours.get)
        reached = {s: t for s, t in theirs.items() if t is not None}
        if reached:
            peer = min(reached, key=reached.get)
            out[name] = {"flowmatch": best, "seconds": ours[best], "peer": peer, "peer_seconds": reached[peer], "bound": False}
        else:  # no peer got there: each is slower than its own training time
            peer = min(theirs, key=lambda s: timed[s]["train_s"]["median"])
            out[name] = {
                "flowmatch": best,
                "seconds": ours[best],
                "peer": peer,
                "peer_seconds": timed[peer]["train_s"]["median"],
                "bound": True,
            }
        out[name]["ratio"] = out[name]["seconds"] / out[name]["peer_seconds"]
    return out


def table(summary: dict, tput: dict, header: str) -> str:
    lines = [header, ""]
    versus = versus_peers(summary)
    if versus:
        lines += [
            f"### Time to quality (2-D: shape <= {SHAPE_THRESHOLD}x floor; tables: W2 <= {THRESHOLD}x floor): fastest flowmatch "
            "system against the fastest peer (medians of seeds)",
            "",
            "| task | flowmatch | s | peer | s | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in versus.items():
            peer_s = (">" if v["bound"] else "") + f"{v['peer_seconds']:.1f}"
            ratio = ("<" if v["bound"] else "") + f"{v['ratio']:.2f}x"
            lines.append(f"| {name} | {v['flowmatch']} | {v['seconds']:.1f} | {v['peer']} | {peer_s} | {ratio} |")
        lines.append("")
    for name, res in summary.items():
        lines += [
            f"### {name} (W2 floor {res['floor']:.3f}; seeds {', '.join(map(str, res['seeds']))}; median [min, max])",
            "",
            f"| system | train s | time to quality (shape <= {SHAPE_THRESHOLD}; tables W2 <= {THRESHOLD}), s | W2/floor NFE 1 | 2 | 4 | 8 "
            "| 100 | shape at the last NFE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for system in SYSTEMS:
            if system not in res["rows"]:
                continue
            r = res["rows"][system]
            ttq = r.get("time_to_quality_s")
            if ttq is None:
                ttq_s = "n/a"
            else:
                each = ", ".join("-" if t is None else f"{t:.1f}" for t in ttq["each"])
                ttq_s = ("-" if ttq["median"] is None else f"{ttq['median']:.1f}") + f" ({each})"
            cells = []
            for nfe in NFES:
                q = r["w2_over_floor"].get(str(nfe))
                cells.append("—" if q is None else f"{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}]")
            t = r["train_s"]
            shape = r.get("shape")
            cells.append("—" if shape is None else f"{shape['median']:.2f} [{shape['min']:.2f}, {shape['max']:.2f}]")
            lines.append(f"| {system} | {t['median']:.1f} | {ttq_s} | " + " | ".join(cells) + " |")
        lines.append("")
    if tput:
        lines += [
            f"### Sampling throughput (one thread; NFE 8: {THROUGHPUT_N[8]:,} points, NFE 100: {THROUGHPUT_N[100]:,} points)",
            "",
            "| sampler (systems) | samples/s NFE 8 | samples/s NFE 100 | vs torchdiffeq rk4 fp32 (8 / 100) | peak MiB NFE 8 | peak MiB NFE 100 |",
            "|---|---|---|---|---|---|",
        ]
        base = tput.get("torchdiffeq")
        for kind, r in tput.items():
            users = ", ".join(s for s, k in SAMPLER_KIND.items() if k == kind)
            ratio = (
                f"{r['8']['samples_per_s'] / base['8']['samples_per_s']:.2f}x / {r['100']['samples_per_s'] / base['100']['samples_per_s']:.2f}x"
                if base
                else "—"
            )
            lines.append(
                f"| {SAMPLER_NAME[kind]} ({users}) | {r['8']['samples_per_s']:,.0f} | {r['100']['samples_per_s']:,.0f} | {ratio} | "
                f"{r['8']['peak_mib']:.0f} | {r['100']['peak_mib']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs: list[dict], path: Path) -> None:
    """Per task: W2/floor against NFE (median of seeds), and the probes' W2/floor against training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(2, len(summary), figsize=(5.5 * len(summary), 9), squeeze=False)
    colors = {system: f"C{i}" for i, system in enumerate(SYSTEMS)}
    for column, (name, res) in enumerate(summary.items()):
        top, bottom = axes[0][column], axes[1][column]
        for system, r in res["rows"].items():
            nfes = [int(n) for n in r["w2_over_floor"]]
            q = [r["w2_over_floor"][str(n)]["median"] for n in nfes]
            top.plot(nfes, q, marker="o", ms=4, color=colors[system], label=system)
        by_shape = False
        for run in (r for r in runs if r["task"] == name):
            for system, row in run["rows"].items():
                if row["probes"]:
                    seconds = [p["seconds"] for p in row["probes"]]
                    by_shape = row["probes"][0].get("shape") is not None  # the time to quality's own score
                    scores = [p["shape"] if by_shape else p["score"] for p in row["probes"]]
                    label = system if run["seed"] == res["seeds"][0] else None
                    bottom.plot(seconds, scores, color=colors[system], lw=1, alpha=0.8, label=label)
        for ax in (top, bottom):
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="y", which="minor", labelsize=7)
        top.axhline(THRESHOLD, color="grey", lw=0.8, ls=":")
        bottom.axhline(SHAPE_THRESHOLD if by_shape else THRESHOLD, color="grey", lw=0.8, ls=":")
        top.set_xscale("log")
        top.set_xticks(NFES, [str(n) for n in NFES])
        top.set_xlabel("NFE (euler 1-8, rk4/midpoint 100)")
        top.set_ylabel("W2 / floor (median of seeds)")
        top.set_title(name)
        bottom.set_xscale("log")
        bottom.set_xlabel("training wall time, s (probes: rk4 NFE 20)")
        bottom.set_ylabel(f"{'shape' if by_shape else 'W2'} / floor while training (every seed)")
        bottom.set_title(f"{name}: time to quality (dotted: {SHAPE_THRESHOLD if by_shape else THRESHOLD}x)")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma separated, from {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jobs", type=int, default=2, help="processes running (task, seed) jobs at once (default 2)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"the peers' (and flowmatch ot's) batch (default {DEFAULT_BATCH})")
    parser.add_argument(
        "--lr", type=float, default=DEFAULT_LR, help=f"the peers' (and flowmatch ot's) learning rate (default {DEFAULT_LR:g})"
    )
    parser.add_argument(
        "--peers-only", action="store_true", help="train only the peers (e.g. with a longer --steps); writes peers-long-<tasks>.* instead"
    )
    args = parser.parse_args(argv)
    names = args.tasks.split(",")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    torch.set_num_threads(1)
    load = os.getloadavg()
    started = time.perf_counter()
    jobs = [(name, seed) for seed in args.seeds for name in names]
    if args.jobs > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs) as pool:
            runs = pool.starmap(run_task, [(name, seed, args.steps, args.peers_only, args.batch, args.lr) for name, seed in jobs])
    else:
        runs = [run_task(name, seed, args.steps, args.peers_only, args.batch, args.lr) for name, seed in jobs]
    summary = summarise(runs)
    tput: dict = {}
    state = next((r["state"] for r in runs if r["state"] is not None), None)
    if not args.no_throughput and state is not None:
        for kind in ("torchdiffeq", "meta", "flowmatch", "flowmatch-bf16"):
            tput[kind] = {str(nfe): throughput(kind, state, nfe) for nfe in (8, 100)}
            print(f"  throughput {kind}: {tput[kind]}", flush=True)
    load_end = os.getloadavg()
    from flowmatch.config import TrainConfig
    from flowmatch.engine.devices import resolve_precision

    default = TrainConfig()
    header = (
        f"flowmatch vs peers on {platform.machine()} ({_cpu_name()}), 1 thread per process, {args.jobs} processes, torch "
        f"{torch.__version__}; {args.steps} steps, MLP width 256 depth 3; the peers and flowmatch ot at Adam lr {args.lr:g}, "
        f"batch {args.batch}, peers in fp32; flowmatch default at its lr {default.lr:g}, batch {default.batch_size} after a "
        f"warm-up from {default.batch_size // 2} over {default.batch_warmup} steps, precision "
        f"{resolve_precision('auto', torch.device('cpu'))} here; load average "
        f"{load[0]:.2f} at start, {load_end[0]:.2f} at end; total {time.perf_counter() - started:.0f} s; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    text = table(summary, tput, header)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = "peers"
    if args.peers_only:  # named by their tasks, so that runs of different tasks keep their own files
        stem = "peers-long" + ("" if names == list(TASKS) else "-" + "-".join(names))
    stem += ("" if args.batch == DEFAULT_BATCH else f"-b{args.batch}") + ("" if args.lr == DEFAULT_LR else f"-lr{args.lr:g}")
    (RESULTS / f"{stem}.md").write_text(text)
    payload = {
        "header": header,
        "steps": args.steps,
        "peer_lr": args.lr,
        "flowmatch_lr": TrainConfig().lr,
        "score": {"n": N_SCORE, "draws": DRAWS, "floor_pairs": FLOOR_PAIRS, "table_draws": TABLE_DRAWS},
        "probe": {
            "steps": PROBE_STEPS,
            "solver": PROBE_SOLVER,
            "nfe": PROBE_NFE,
            "threshold": THRESHOLD,
            "shape_threshold": SHAPE_THRESHOLD,
        },
        "throughput_points": THROUGHPUT_N,
        "summary": summary,
        "versus_peers": versus_peers(summary),
        "runs": [{k: v for k, v in r.items() if k != "state"} for r in runs],
        "throughput": tput,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(summary, runs, RESULTS / f"{stem}.png")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()

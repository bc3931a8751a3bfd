"""The peers' own example workflows, ported as a user would, each run beside the peer's own run in one run.

Every example trains the peer exactly as its own example does (its data generator, its network, its
optimiser, its sampler) and flowmatch at its defaults on the same data generator and the same network
(the peer's, wrapped only for the calling convention ``model(x, t, **condition)``); the two systems of
an example and seed run one after the other in one process, so they see the same machine and load.

Examples (the peer's setting, and what was scaled down for 2 CPU cores):

- ``meta-checkerboard``: Meta's ``flow_matching`` notebook ``examples/2d_flow_matching.ipynb``: its
  checkerboard generator ``inf_train_gen`` (8 unit squares in [-2, 2)^2, divided by 0.45), its MLP (4
  hidden layers of 512, Swish), Adam lr 1e-3, ``AffineProbPath(CondOTScheduler())``, sampled with its
  ``ODESolver`` (midpoint, step 0.05). The notebook trains 20,001 steps at batch 4,096; here 2,500 steps at
  batch 1,024. flowmatch: ``flowmatch.train(model=<the same MLP>, data=<a Python generator of the same
  batches>)``.
- ``torchcfm-8gaussians-moons``: TorchCFM's 2-D tutorial (OT-CFM from 8 Gaussians to moons):
  ``torchcfm.utils.sample_8gaussians`` / ``sample_moons`` (rows in moon and angle order, as torchdyn
  draws them), ``torchcfm.models.models.MLP(dim=2, time_varying=True)`` (3 x 64, SELU), Adam lr 1e-3,
  batch 256, ``ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)``, sampled with dopri5 at atol =
  rtol = 1e-4 (torchdiffeq's ``odeint``: the tutorial's torchdyn ``NeuralODE`` imports pytorch_lightning,
  which imports torchvision, which fails beside torch 2.13 CPU). 20,000 steps in the tutorial, 3,000
  here. flowmatch: the moons as a Python generator of batches of 256, ``source=`` the 8 Gaussians as a
  callable.
- ``torchcfm-digits``: TorchCFM's ``examples/images/conditional_mnist.ipynb`` (class-conditional CFM, sigma
  0) on scikit-learn's 8x8 digits in [-1, 1]: its ``UNetModel(num_channels=32, num_res_blocks=1,
  class_cond=True)`` with ``channel_mult=(1, 2, 2)`` (the value it uses at 28x28; it has none for 8x8),
  Adam lr 1e-3, a shuffling ``DataLoader`` of batch 128, 350 steps (the notebook: 10 MNIST epochs),
  sampled with dopri5 at atol = rtol = 1e-4. flowmatch gets the same ``DataLoader`` and the same U-Net with
  one more class embedding, its null label for classifier-free guidance (flowmatch drops 10% of the
  labels by default); scored at guidance 1.
- ``forestflow-tables``: ForestFlow (``forestdiffusion``) under its paper's protocol
  (``script_generation.py``): iris, wine and breast cancer from scikit-learn; for each seed n a stratified
  80/20 split with ``random_state=n``; ``ForestDiffusionModel(X_train, label_y=y_train, n_t=50,
  diffusion_type="flow")`` (a forest per class, ``ycond``); 5 generated sets of the training split's size;
  W1 with the L1 cost to the test split after min-max scaling on the training split, the class one-hot
  and halved for the multi-class sets (W_test). Live ForestFlow duplicates the rows ``FOREST_K`` = 10 times
  instead of the paper's 100 and runs on iris and wine only (at 100 it costs about 400 core-seconds on iris,
  and breast cancer even at 10 costs about 800, per seed); the paper's own figures at 100 (its results
  file, on its machine) are shown beside. flowmatch: ``flowmatch.train(data=<the training split as a
  DataFrame, the class a string column>)`` at its table defaults (which hold out 20% for its own test and
  10% of the rest for validation). Also the copy share
  (:func:`flowmatch.evaluation.memorisation.memorisation`) and the training split itself scored as if
  generated (the protocol's oracle).
- ``rectified-flow-digits``: lucidrains' ``rectified-flow-pytorch`` ``train_oxford.py`` recipe
  (``RectifiedFlow(model, predict="clean")`` and its ``Trainer``: Adam lr 3e-4, batch 16, gradient norm
  clipped at 0.5, ``ema_pytorch`` EMA with its defaults used for sampling, midpoint ODE on 16 time points)
  on the digits in [0, 1], unconditional. The package (0.14.0) imports torchvision at module level, which
  fails beside torch 2.13 CPU, so the recipe is ported here from its source (:class:`RectifiedFlowRecipe`,
  :class:`TrainerEMA`), and its ``Unet`` (x-unet attention residuals) is replaced by flowmatch's 8x8 U-Net
  (``flowmatch.models.unet.UNet``, 16 channels, multipliers 1, 2) on both sides. 70,000 steps in the
  script, 1,500 here. flowmatch gets the Trainer's ``DataLoader`` (batch 16) and the same U-Net.

Rows per example and seed:

- ``peer``: the peer's own recipe;
- ``flowmatch, equal steps``: flowmatch's defaults for as many optimiser steps as the peer;
- ``flowmatch, equal time``: flowmatch given the peer's training wall time: a run of
  steps * (peer's seconds / flowmatch's seconds) steps, its own schedule fitted to them, where that differs
  from the equal-steps run by more than 20% (else the equal-steps run itself, marked ``=``);
- ``time to peer's final quality``: the training seconds at flowmatch's first probe that scores at least
  as well as the peer's last probe (both probed alike: rk4 at NFE 20 on the system's sampling weights,
  flowmatch's EMA included; the training clocks stop while a probe runs), beside the peer's own seconds.

Scores (:func:`score`, the one function behind every point and image figure; a calibrated floor
everywhere): k sample sets S_j, each against its own held-out set A_j, with the floor from a second
held-out set B_j against A_j:

- ``W2/floor``: mean_j W2(S_j, A_j) / mean_j W2(B_j, A_j), exact W2 (``w2_exact``);
- ``shape``: :func:`flowmatch.evaluation.metrics.shape_score` where the components are known (the 8
  squares, the two moons; for unconditional digits the class a classifier of real digits gives): the
  within-mode W2 over its floor (``shape``) and the mode-share TV over its multinomial floor (``shares``),
  the median over the k sets.

2-D sets: k = 5 sets of 1,000 points, chunks of one shuffled draw of the peer's own generator (the moons
are evenly spaced along their arcs, so two separate draws would be closer than i.i.d. points). Digits: the
test split (360 images, stratified, fixed) halved at random k = 3 times into A_j and B_j (180 each);
conditional samples carry A_j's labels; class accuracy by an SVM trained on the real training split
(its own accuracy on the test split is reported).

Run ``python -m bench.peer_examples`` (about 40 minutes on 2 idle cores; ``--jobs 2`` processes over
(example, seed) jobs, one thread each), ``--examples a,b``, ``--seeds 0 1 2``, ``--out NAME`` (writes
``bench/results/NAME.md`` and ``.json``), ``--quick`` (tiny settings, seconds: a smoke test, not a
measurement). Figures are medians over the seeds with [min, max].
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

if __package__ in (None, ""):  # python bench/peer_examples.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowmatch.evaluation.metrics import median_shape, shape_score, w2_exact  # noqa: E402
from flowmatch.solvers.integration import integrate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)
PROBE_SOLVER, PROBE_NFE = "rk4", 20
FRACTIONS_2D = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)  # probes of the 2-D examples, as shares of the steps (and the last step)
EQUAL_TIME_TOLERANCE = 0.2  # a separate equal-time run only where its steps differ from the peer's by more
EQUAL_TIME_MAX = 4.0  # at most this many times the peer's steps
FOREST_K = 10  # ForestFlow's duplicate_K here (the paper: 100)
#: ForestFlow's own figures (the paper's ``Results/Results_tabular - generation.csv``, row
#: forest_diffusion_flow_nt51_ycond: duplicate_K 100, mean of 3 splits x 5 generated sets; seconds on its machine).
FOREST_PUBLISHED = {"iris": (0.3281705347, 12.38), "wine": (1.420639609, 67.99), "breast-cancer": (1.748776201, 254.77)}

#: The examples: the package each peer needs, and its settings (full, quick).
EXAMPLES: dict[str, dict] = {
    "meta-checkerboard": {
        "package": "flow_matching",
        "full": {"steps": 2500, "batch": 1024, "hidden": 512, "n": 1000, "sets": 5},
        "quick": {"steps": 20, "batch": 64, "hidden": 32, "n": 100, "sets": 2},
    },
    "torchcfm-8gaussians-moons": {
        "package": "torchcfm",
        "full": {"steps": 3000, "batch": 256, "n": 1000, "sets": 5},
        "quick": {"steps": 20, "batch": 64, "n": 100, "sets": 2},
    },
    "torchcfm-digits": {
        "package": "torchcfm",
        "full": {"steps": 350, "batch": 128, "channels": 32, "sets": 3, "half": 180},
        "quick": {"steps": 3, "batch": 16, "channels": 32, "sets": 2, "half": 20},
    },
    "forestflow-tables": {
        "package": "ForestDiffusion",
        "peer_optional": True,  # without it: flowmatch and the protocol's oracle only
        "full": {"sets": ("iris", "wine", "breast-cancer"), "forest_sets": ("iris", "wine"), "k": FOREST_K, "ngen": 5, "steps": None},
        "quick": {"sets": ("iris",), "forest_sets": ("iris",), "k": 1, "ngen": 2, "steps": 30, "n_t": 3},
    },
    "rectified-flow-digits": {
        "package": None,  # ported from its source: no package needed
        "full": {"steps": 1500, "batch": 16, "sets": 3, "half": 180},
        "quick": {"steps": 6, "batch": 16, "sets": 2, "half": 20},
    },
}
#: The order jobs start in: the longest first, so that two processes finish together.
ORDER = ("meta-checkerboard", "forestflow-tables", "torchcfm-digits", "rectified-flow-digits", "torchcfm-8gaussians-moons")
PEER_NAMES = {
    "meta-checkerboard": "Meta flow_matching (notebook recipe)",
    "torchcfm-8gaussians-moons": "TorchCFM OT-CFM (tutorial recipe)",
    "torchcfm-digits": "TorchCFM CFM (conditional MNIST recipe)",
    "forestflow-tables": "ForestFlow",
    "rectified-flow-digits": "lucidrains RectifiedFlow (train_oxford recipe, ported)",
}


def missing_package(example: str) -> str | None:
    """The peer package ``example`` needs and lacks, or None."""
    package = EXAMPLES[example]["package"]
    if package is None or importlib.util.find_spec(package) is not None:
        return None
    return package


# -- the score -----------------------------------------------------------------------------------------
class Reference:
    """k held-out pairs (A_j, B_j), and how to label a point's component (None: no components)."""

    def __init__(self, sets: list[tuple[torch.Tensor, torch.Tensor]], labeller=None, weights=None, index=None):
        self.sets = [(a.float().reshape(len(a), -1), b.float().reshape(len(b), -1)) for a, b in sets]
        self.n, self.k = len(self.sets[0][0]), len(self.sets)
        self.labeller, self.weights, self.index = labeller, weights, index
        self.floor: float | None = None

    def w2_floor(self) -> float:
        """mean_j W2(B_j, A_j): what a perfect sampler scores on average (computed once)."""
        if self.floor is None:
            self.floor = statistics.mean(w2_exact(b, a) for a, b in self.sets)
        return self.floor

    @classmethod
    def chunks(cls, pool: torch.Tensor, n: int, k: int, labeller=None, weights=None, seed: int = 7_000) -> Reference:
        """A_j, B_j: consecutive chunks of n rows of one shuffled draw ``pool`` (2 k n rows) of a generator."""
        if len(pool) < 2 * n * k:
            raise ValueError(f"a reference of {k} x 2 x {n} points needs as many rows, got {len(pool)}")
        pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
        return cls([(pool[2 * j * n : (2 * j + 1) * n], pool[(2 * j + 1) * n : (2 * j + 2) * n]) for j in range(k)], labeller, weights)

    @classmethod
    def halvings(cls, rows: torch.Tensor, k: int, half: int, labeller=None, weights=None, seed: int = 7_000) -> Reference:
        """k random halvings of finite held-out rows: A_j and B_j disjoint, ``half`` rows each; ``index``: A_j's rows."""
        g = torch.Generator().manual_seed(seed)
        orders = [torch.randperm(len(rows), generator=g)[: 2 * half] for _ in range(k)]
        return cls([(rows[o[:half]], rows[o[half:]]) for o in orders], labeller, weights, [o[:half] for o in orders])


def score(samples: torch.Tensor, ref: Reference) -> dict:
    """The score of ``samples`` (k * n rows: chunk j against A_j) beside the floor: ``w2`` = mean_j W2(S_j, A_j) /
    mean_j W2(B_j, A_j); where ``ref`` labels components, ``shape`` (within-mode W2 over its floor),
    ``shares`` (mode-share TV over its multinomial floor) and ``shares_tv`` from
    :func:`flowmatch.evaluation.metrics.shape_score`, the median over the k sets. This is the one place to
    change the figure every example reports for points and images."""
    samples = samples.detach().float().reshape(len(samples), -1)
    if len(samples) != ref.n * ref.k:
        raise ValueError(f"a score takes {ref.k} x {ref.n} samples, got {len(samples)}")
    if not torch.isfinite(samples).all():
        return {"w2": math.inf, "finite": False}
    chunks = samples.split(ref.n)
    value = statistics.mean(w2_exact(s, a) for s, (a, _) in zip(chunks, ref.sets))
    out: dict = {"w2": value / ref.w2_floor()}
    if ref.labeller is not None:
        shapes = []
        for j, (s, (a, b)) in enumerate(zip(chunks, ref.sets)):
            labels = tuple(ref.labeller(v) for v in (s, a, b))
            shapes.append(shape_score(s, a, b, labels=labels, weights=ref.weights, seed=j))
        med = median_shape(shapes)
        out.update(shape=med["ratio"], shares=med["shares"]["ratio"], shares_tv=med["shares"]["value"], missing=med["missing"])
    return out


def at_least_as_good(ours: dict, target: dict) -> bool:
    """Whether a probe's score ``ours`` is at least the peer's ``target`` on every figure both have (a share
    error within its own floor counts as reached)."""
    for key, value in target.items():
        if key not in ours or isinstance(value, bool) or not isinstance(value, (int, float)) or key == "shares_tv":
            continue
        if key == "accuracy":
            if ours[key] < value:
                return False
        elif key == "shares":
            if ours[key] > max(value, 1.0):
                return False
        elif ours[key] > value:
            return False
    return True


# -- shared pieces -------------------------------------------------------------------------------------
def stream(draw: Callable[[int], torch.Tensor], batch: int) -> Iterator[torch.Tensor]:
    """An endless Python generator of batches from a peer's sampler: how a user hands it to flowmatch."""
    while True:
        yield draw(batch)


def cycle(loader) -> Iterator:
    while True:
        yield from loader


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class Clock:
    """Training seconds, paused while a probe runs."""

    def __init__(self):
        self.seconds, self.started = 0.0, 0.0

    def start(self):
        self.started = time.perf_counter()

    def stop(self):
        self.seconds += time.perf_counter() - self.started


def probe_steps(steps: int, fractions) -> set[int]:
    return {max(1, round(steps * f)) for f in fractions} | {steps}


def time_to_quality(probes: list[dict], target: dict) -> float | None:
    for p in probes:
        if at_least_as_good(p["score"], target):
            return p["seconds"]
    return None


def flowmatch_run(model_factory, data_factory, steps: int, seed: int, probe=None, probe_at=(), **objects):
    """flowmatch.train at its defaults on a fresh model and data stream; the probes through its callback."""
    import flowmatch

    seed_all(seed)
    model = model_factory()
    probes: list[dict] = []

    def callback(step, flow, seconds):
        probes.append({"step": step, "seconds": seconds, "score": probe(flow)})

    started = time.perf_counter()
    result = flowmatch.train(
        model=model, data=data_factory(), steps=steps, seed=seed, progress=False,
        callback=callback if probe is not None else None, callback_steps=set(probe_at) if probe is not None else (), **objects,
    )  # fmt: skip
    return result, probes, time.perf_counter() - started


def equal_time_steps(steps: int, peer_seconds: float, fm_seconds: float) -> int | None:
    """The steps that fit flowmatch's run into the peer's training time, or None where the equal-steps run
    already does (within EQUAL_TIME_TOLERANCE)."""
    fitted = max(1, round(steps * peer_seconds / max(fm_seconds, 1e-9)))
    fitted = min(fitted, round(EQUAL_TIME_MAX * steps))
    return None if abs(fitted / steps - 1) <= EQUAL_TIME_TOLERANCE else fitted


def row(steps, seconds, final: dict, probes=None, **extra) -> dict:
    return {"steps": steps, "train_s": seconds, "score": final, "probes": probes, **extra}


def add_flowmatch_rows(rows: dict, peer: dict, run_flowmatch, final_score, steps: int) -> None:
    """The equal-steps row (with its probes and the time to the peer's final quality) and the equal-time row."""
    result, probes, call = run_flowmatch(steps, with_probes=True)
    target = peer["probes"][-1]["score"]
    rows["flowmatch, equal steps"] = row(
        steps, result.seconds, final_score(result.flow), probes, call_s=call, time_to_peer_quality_s=time_to_quality(probes, target)
    )
    fitted = equal_time_steps(steps, peer["train_s"], result.seconds)
    if fitted is None:
        same = {k: v for k, v in rows["flowmatch, equal steps"].items() if k not in ("probes", "time_to_peer_quality_s")}
        rows["flowmatch, equal time"] = {**same, "same_run": True}
    else:
        result, _, call = run_flowmatch(fitted, with_probes=False)
        rows["flowmatch, equal time"] = row(fitted, result.seconds, final_score(result.flow), None, call_s=call, same_run=False)


# -- Meta's 2-D checkerboard ------------------------------------------------------------------------------
def meta_checkerboard_draw(n: int) -> torch.Tensor:
    """Meta's notebook checkerboard, written out: x1 uniform on [-2, 2), x2 uniform on one of the two unit
    intervals whose parity matches floor(x1)'s, both divided by 0.45."""
    x1 = torch.rand(n) * 4 - 2
    x2 = torch.rand(n) - torch.randint(high=2, size=(n,)) * 2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) / 0.45


META_SQUARES = torch.tensor([[c1 + 0.5, c2 + 0.5] for c1 in range(-2, 2) for c2 in range(-2, 2) if (c1 + c2) % 2 == 0]) / 0.45


def meta_checkerboard_labels(x: torch.Tensor) -> torch.Tensor:
    """The square each point belongs to (the nearest square's centre, so that off-support points count too)."""
    return torch.cdist(x.float(), META_SQUARES).argmin(dim=1)


class MetaMLP(nn.Module):
    """The notebook's velocity MLP: [x, t] -> 4 hidden layers with Swish (x sigmoid(x), i.e. SiLU) -> 2."""

    def __init__(self, hidden: int, dim: int = 2):
        super().__init__()
        sizes = [dim + 1] + [hidden] * 4
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.main = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        return self.main(torch.cat([x, t], dim=1))


def run_meta_checkerboard(seed: int, s: dict) -> dict:
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    from bench.peers import sample_meta

    with torch.random.fork_rng():
        torch.manual_seed(10_000)
        pool = meta_checkerboard_draw(2 * s["n"] * s["sets"])
    ref = Reference.chunks(pool, s["n"], s["sets"], meta_checkerboard_labels, np.full(8, 1 / 8))
    n_score, at = s["n"] * s["sets"], probe_steps(s["steps"], FRACTIONS_2D)
    noise = torch.randn(n_score, 2, generator=torch.Generator().manual_seed(1000 + seed))

    def probe_model(model):
        return score(integrate(model, noise, solver=PROBE_SOLVER, nfe=PROBE_NFE).x, ref)

    # the peer, as the notebook trains it
    seed_all(seed)
    vf = MetaMLP(s["hidden"])
    optim = torch.optim.Adam(vf.parameters(), lr=1e-3)
    path = AffineProbPath(scheduler=CondOTScheduler())
    clock, probes = Clock(), []
    for step in range(1, s["steps"] + 1):
        clock.start()
        optim.zero_grad()
        x_1 = meta_checkerboard_draw(s["batch"])
        x_0 = torch.randn_like(x_1)
        t = torch.rand(x_1.shape[0])
        sample = path.sample(t=t, x_0=x_0, x_1=x_1)
        loss = torch.pow(vf(sample.x_t, sample.t) - sample.dx_t, 2).mean()
        loss.backward()
        optim.step()
        clock.stop()
        if step in at:
            with torch.no_grad():
                probes.append({"step": step, "seconds": clock.seconds, "score": probe_model(vf)})
    with torch.no_grad():
        final = score(sample_meta(vf, noise, "midpoint", 40), ref)  # its ODESolver, midpoint, step 0.05
    rows = {"peer": row(s["steps"], clock.seconds, final, probes)}

    def run_flowmatch(steps, with_probes):
        return flowmatch_run(
            lambda: MetaMLP(s["hidden"]), lambda: stream(meta_checkerboard_draw, s["batch"]), steps, seed,
            probe=(lambda flow: score(flow.sample(n_score, solver=PROBE_SOLVER, nfe=PROBE_NFE, seed=1000 + seed), ref)) if with_probes else None,
            probe_at=probe_steps(steps, FRACTIONS_2D),
        )  # fmt: skip

    add_flowmatch_rows(rows, rows["peer"], run_flowmatch, lambda flow: score(flow.sample(n_score, seed=1000 + seed), ref), s["steps"])
    return rows


# -- TorchCFM's 8 Gaussians -> moons ---------------------------------------------------------------------
class TimeLast(nn.Module):
    """TorchCFM's tutorial MLP takes [x, t] in one tensor; flowmatch and the solvers call model(x, t)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        return self.net(torch.cat([x, t], dim=-1))


@functools.lru_cache(maxsize=1)
def moons_labelled() -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled draw of TorchCFM's moons (torchdyn's generator, x 3 - 1) for the nearest-point component rule."""
    from torchdyn.datasets import generate_moons

    state = np.random.get_state()
    np.random.seed(5_000_011)
    x, y = generate_moons(20_000, noise=0.2)
    np.random.set_state(state)
    return x.float() * 3 - 1, y


def moons_labels(x: torch.Tensor) -> torch.Tensor:
    reference, labels = moons_labelled()
    return labels[torch.cat([torch.cdist(block.float(), reference).argmin(dim=1) for block in x.split(4096)])]


def run_torchcfm_moons(seed: int, s: dict) -> dict:
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
    from torchcfm.models.models import MLP
    from torchcfm.utils import sample_8gaussians, sample_moons
    from torchdiffeq import odeint

    with torch.random.fork_rng():
        state = np.random.get_state()
        seed_all(10_000)
        pool = sample_moons(2 * s["n"] * s["sets"]).float()
        np.random.set_state(state)
    ref = Reference.chunks(pool, s["n"], s["sets"], moons_labels, np.full(2, 0.5))
    n_score, fractions = s["n"] * s["sets"], FRACTIONS_2D
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        x0 = sample_8gaussians(n_score)

    def probe_model(model):
        return score(integrate(model, x0, solver=PROBE_SOLVER, nfe=PROBE_NFE).x, ref)

    seed_all(seed)
    model = MLP(dim=2, time_varying=True)
    optimizer = torch.optim.Adam(model.parameters())
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.1)
    velocity = TimeLast(model)
    clock, probes, at = Clock(), [], probe_steps(s["steps"], fractions)
    for step in range(1, s["steps"] + 1):
        clock.start()
        optimizer.zero_grad()
        x_0, x_1 = sample_8gaussians(s["batch"]), sample_moons(s["batch"])
        t, xt, ut = fm.sample_location_and_conditional_flow(x_0, x_1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
        clock.stop()
        if step in at:
            with torch.no_grad():
                probes.append({"step": step, "seconds": clock.seconds, "score": probe_model(velocity)})
    with torch.no_grad():
        out = odeint(lambda t, x: velocity(x, t), x0, torch.linspace(0, 1, 2), atol=1e-4, rtol=1e-4, method="dopri5")[-1]
    rows = {"peer": row(s["steps"], clock.seconds, score(out, ref), probes)}

    def source(n, generator):  # TorchCFM's sampler draws from torch's global generator
        return sample_8gaussians(n)

    def run_flowmatch(steps, with_probes):
        return flowmatch_run(
            lambda: TimeLast(MLP(dim=2, time_varying=True)), lambda: stream(sample_moons, s["batch"]), steps, seed,
            probe=(lambda flow: score(flow.sample(n_score, solver=PROBE_SOLVER, nfe=PROBE_NFE, seed=1000 + seed), ref)) if with_probes else None,
            probe_at=probe_steps(steps, fractions), source=source,
        )  # fmt: skip

    add_flowmatch_rows(rows, rows["peer"], run_flowmatch, lambda flow: score(flow.sample(n_score, seed=1000 + seed), ref), s["steps"])
    return rows


# -- digits ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def digits() -> dict:
    """scikit-learn's digits in [0, 1], (N, 1, 8, 8), a fixed stratified 80/20 split, and an SVM of the real
    training images (its test accuracy beside)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=bunch.target, random_state=0)
    classifier = SVC().fit(x[train].reshape(len(train), -1).numpy(), y[train].numpy())
    accuracy = float((classifier.predict(x[test].reshape(len(test), -1).numpy()) == y[test].numpy()).mean())
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test], "classifier": classifier, "accuracy": accuracy}


def classify(images01: torch.Tensor) -> torch.Tensor:
    """The SVM's classes of images in [0, 1] (any shape with 64 values a row)."""
    rows = images01.detach().float().reshape(len(images01), -1).clamp(0, 1).numpy()
    return torch.as_tensor(digits()["classifier"].predict(rows), dtype=torch.long)


def digit_loader(x, y, batch: int, seed: int):
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(x, y) if y is not None else TensorDataset(x)
    return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))


class LabelledUNet(nn.Module):
    """TorchCFM's class-conditional U-Net called as flowmatch calls a model, ``model(x, t, y=labels)``, with one
    more class embedding: flowmatch's null label (``num_classes``) for classifier-free guidance."""

    def __init__(self, channels: int):
        super().__init__()
        from torchcfm.models.unet import UNetModel

        self.num_classes = 10
        self.net = UNetModel(
            dim=(1, 8, 8), num_channels=channels, num_res_blocks=1, num_classes=11, class_cond=True, channel_mult=(1, 2, 2)
        )

    def forward(self, x, t, y=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(len(x))
        return self.net(t, x, y)


def run_torchcfm_digits(seed: int, s: dict) -> dict:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchcfm.models.unet import UNetModel
    from torchdiffeq import odeint

    d = digits()
    x_train, x_test = d["x_train"] * 2 - 1, d["x_test"] * 2 - 1  # transforms.Normalize((0.5,), (0.5,))
    ref = Reference.halvings(x_test, s["sets"], s["half"])
    labels = torch.cat([d["y_test"][index] for index in ref.index])  # each S_j carries A_j's classes
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(1000 + seed))

    def digit_score(samples: torch.Tensor) -> dict:
        out = score(samples, ref)
        out["accuracy"] = float((classify((samples + 1) / 2) == labels).double().mean())
        return out

    seed_all(seed)
    model = UNetModel(dim=(1, 8, 8), num_channels=s["channels"], num_res_blocks=1, num_classes=10, class_cond=True, channel_mult=(1, 2, 2))
    optimizer = torch.optim.Adam(model.parameters())
    fm = ConditionalFlowMatcher(sigma=0.0)
    clock, batches = Clock(), cycle(digit_loader(x_train, d["y_train"], s["batch"], seed))
    for _ in range(s["steps"]):
        clock.start()
        x1, y = next(batches)
        optimizer.zero_grad()
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(t, xt, y)
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
        clock.stop()
    model.eval()
    with torch.no_grad():
        probe = digit_score(integrate(lambda x, t: model(t, x, labels), noise, solver=PROBE_SOLVER, nfe=PROBE_NFE).x)
        out = odeint(lambda t, x: model.forward(t, x, labels), noise, torch.linspace(0, 1, 2), atol=1e-4, rtol=1e-4, method="dopri5")[-1]
    rows = {"peer": row(s["steps"], clock.seconds, digit_score(out), [{"step": s["steps"], "seconds": clock.seconds, "score": probe}])}

    def run_flowmatch(steps, with_probes):
        return flowmatch_run(
            lambda: LabelledUNet(s["channels"]), lambda: digit_loader(x_train, d["y_train"], s["batch"], seed), steps, seed,
            probe=(lambda flow: digit_score(flow.sample(len(labels), label=labels, solver=PROBE_SOLVER, nfe=PROBE_NFE, x0=noise.reshape(len(noise), -1)))) if with_probes else None,
            probe_at=probe_steps(steps, (0.5,)),
        )  # fmt: skip

    def final(flow):
        return digit_score(
            flow.sample(len(labels), label=labels, guidance=1.0, x0=noise.reshape(len(noise), -1)).reshape(len(noise), 1, 8, 8)
        )

    add_flowmatch_rows(rows, rows["peer"], run_flowmatch, final, s["steps"])
    return rows


# -- lucidrains' rectified flow (ported) ------------------------------------------------------------------
class RectifiedFlowRecipe:
    """``rectified_flow_pytorch.RectifiedFlow(model, predict="clean")`` with its defaults, ported: data in [0, 1]
    mapped to [-1, 1]; x_t = lerp(noise, data, t) with t uniform on [0, 1 - 1/100]; the network predicts the
    clean data, its flow is (clean - x_t) / max(1 - t, 5e-3), regressed (MSE) on data - noise; sampling
    integrates that flow with torchdiffeq's midpoint over 16 evenly spaced times and maps back to [0, 1]."""

    max_timesteps, eps, sample_times = 100, 5e-3, 16

    def __init__(self, model: nn.Module):
        self.model = model

    def flow(self, model, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(len(x))
        clean = model(x, t)
        return (clean - x) / (1 - t).reshape(-1, *[1] * (x.ndim - 1)).clamp_min(self.eps)

    def loss(self, data01: torch.Tensor) -> torch.Tensor:
        data = data01 * 2 - 1
        noise = torch.randn_like(data)
        t = torch.rand(len(data)) * (1 - 1 / self.max_timesteps)
        noised = noise.lerp(data, t.reshape(-1, *[1] * (data.ndim - 1)))
        return nn.functional.mse_loss(self.flow(self.model, noised, t), data - noise)

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint

        times = torch.linspace(0, 1, self.sample_times)
        x = odeint(lambda t, x: self.flow(model, x, t), noise, times, method="midpoint", atol=1e-5, rtol=1e-5)[-1]
        return ((x + 1) / 2).clamp(0, 1)  # the Trainer clamps its samples to [0, 1]


class TrainerEMA:
    """``ema_pytorch.EMA`` at the defaults the rectified-flow Trainer uses: beta 0.9999, update_after_step 100,
    update_every 10, inv_gamma 1, power 2/3 (decay 1 - (1 + e)^(-2/3) after e further updates), ported."""

    beta, after, every, power = 0.9999, 100, 10, 2 / 3

    def __init__(self, model: nn.Module):
        self.ema = copy.deepcopy(model).eval()
        self.step, self.initted = 0, False

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        step = self.step
        self.step += 1
        if not self.initted or (step % self.every == 0 and step <= self.after):
            self.ema.load_state_dict(model.state_dict())
            self.initted = True
            return
        if step % self.every:
            return
        epoch = max(self.step - self.after - 1, 0)
        decay = 0.0 if epoch <= 0 else min(1 - (1 + epoch) ** -self.power, self.beta)
        for e, p in zip(self.ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema.buffers(), model.buffers()):
            e.copy_(b)


def digits_unet() -> nn.Module:
    from flowmatch.models.unet import UNet

    return UNet(64, image_shape=(1, 8, 8), channels=16, channel_mult=(1, 2))


def run_rectified_flow(seed: int, s: dict) -> dict:
    d = digits()
    x_train = d["x_train"].reshape(len(d["x_train"]), -1)  # flowmatch's U-Net takes flat rows
    ref = Reference.halvings(d["x_test"].reshape(len(d["x_test"]), -1), s["sets"], s["half"], classify, np.full(10, 0.1))
    n_score = s["sets"] * s["half"]
    noise = torch.randn(n_score, 64, generator=torch.Generator().manual_seed(1000 + seed))
    fractions = (0.25, 0.5, 0.75)

    seed_all(seed)
    model = digits_unet()
    recipe, ema = RectifiedFlowRecipe(model), TrainerEMA(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    batches = cycle(digit_loader(x_train, None, s["batch"], seed))
    clock, probes, at = Clock(), [], probe_steps(s["steps"], fractions)
    for step in range(1, s["steps"] + 1):
        clock.start()
        (data,) = next(batches)
        loss = recipe.loss(data)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        clock.stop()
        if step in at:
            with torch.no_grad():
                x = integrate(lambda x, t: recipe.flow(ema.ema, x, t), noise * 1, solver=PROBE_SOLVER, nfe=PROBE_NFE).x
                probes.append({"step": step, "seconds": clock.seconds, "score": score(((x + 1) / 2).clamp(0, 1), ref)})
    rows = {"peer": row(s["steps"], clock.seconds, score(recipe.sample(ema.ema, noise), ref), probes)}

    def run_flowmatch(steps, with_probes):
        return flowmatch_run(
            digits_unet, lambda: digit_loader(x_train, None, s["batch"], seed), steps, seed,
            probe=(lambda flow: score(flow.sample(n_score, solver=PROBE_SOLVER, nfe=PROBE_NFE, x0=noise).clamp(0, 1), ref)) if with_probes else None,
            probe_at=probe_steps(steps, fractions),
        )  # fmt: skip

    add_flowmatch_rows(rows, rows["peer"], run_flowmatch, lambda flow: score(flow.sample(n_score, x0=noise).clamp(0, 1), ref), s["steps"])
    return rows


# -- ForestFlow's protocol ---------------------------------------------------------------------------------
def protocol_table(name: str):
    """(X, y, multi-class) of a set of the ForestFlow protocol, from scikit-learn."""
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    bunch = {"iris": load_iris, "wine": load_wine, "breast-cancer": load_breast_cancer}[name]()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), len(np.unique(bunch.target)) > 2


def protocol_scale(rows: np.ndarray, train: np.ndarray, multiclass: bool, classes: int) -> torch.Tensor:
    """Rows (features and the class last) as the protocol scores them: features min-max scaled on the training
    split; the class one-hot and halved for a multi-class set (so two classes are L1 distance 1 apart),
    min-max scaled (0/1) for a binary one."""
    low, span = train.min(0), train.max(0) - train.min(0)
    span = np.where(span > 0, span, 1.0)
    scaled = (rows - low) / span
    if multiclass:
        onehot = np.eye(classes)[np.clip(np.rint(rows[:, -1]), 0, classes - 1).astype(int)] / 2
        scaled = np.concatenate([scaled[:, :-1], onehot], axis=1)
    return torch.as_tensor(scaled, dtype=torch.float64)


def protocol_scores(generated: list[np.ndarray], train: np.ndarray, test: np.ndarray, multiclass: bool, classes: int) -> dict:
    """W_test (the protocol's W1 with the L1 cost to the test split) and the copy share, each the mean over
    the generated sets."""
    from flowmatch.evaluation.memorisation import memorisation, w1_l1

    test_scaled = protocol_scale(test, train, multiclass, classes)
    w1 = [w1_l1(protocol_scale(g, train, multiclass, classes), test_scaled) for g in generated]
    copies = [memorisation(g, train, test)["copy_share"]["value"] for g in generated]
    return {"w_test": statistics.mean(w1), "copy_share": statistics.mean(copies)}


def run_forestflow_tables(seed: int, s: dict) -> dict:
    import pandas as pd
    from sklearn.model_selection import train_test_split

    import flowmatch

    rows: dict = {}
    for name in s["sets"]:
        x, y, multiclass = protocol_table(name)
        classes = int(y.max()) + 1
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
        train, test = np.column_stack([x_train, y_train]), np.column_stack([x_test, y_test])
        rows[f"{name}: training split itself (oracle)"] = {
            "train_s": None,
            "score": protocol_scores([train], train, test, multiclass, classes),
        }
        if name in s["forest_sets"] and missing_package("forestflow-tables") is None:
            from ForestDiffusion import ForestDiffusionModel

            started = time.perf_counter()
            forest = ForestDiffusionModel(
                x_train, label_y=y_train, n_t=s.get("n_t", 50), duplicate_K=s["k"], diffusion_type="flow", n_jobs=1, seed=seed
            )
            made = forest.generate(batch_size=s["ngen"] * len(train))
            seconds = time.perf_counter() - started
            sets = list(made.reshape(s["ngen"], len(train), train.shape[1]))
            rows[f"{name}: ForestFlow (K={s['k']})"] = {
                "train_s": seconds,
                "score": protocol_scores(sets, train, test, multiclass, classes),
            }
        columns = [f"x{j}" for j in range(x.shape[1])]
        frame = pd.DataFrame(x_train, columns=columns)
        frame["class"] = [f"c{k}" for k in y_train]
        seed_all(seed)
        started = time.perf_counter()
        options = {} if s["steps"] is None else {"steps": s["steps"]}
        result = flowmatch.train(data=frame, seed=seed, progress=False, **options)
        sets = []
        for g in range(s["ngen"]):
            made = result.flow.sample(len(train), seed=100 * seed + g)
            label = made["class"].astype(str).str.removeprefix("c").astype(int).to_numpy()
            sets.append(np.column_stack([made[columns].to_numpy(dtype=np.float64), label]))
        seconds = time.perf_counter() - started
        rows[f"{name}: flowmatch defaults"] = {  # train_s as ForestFlow's: training and the generated sets
            "train_s": seconds, "fit_s": result.seconds, "steps": result.step, "score": protocol_scores(sets, train, test, multiclass, classes)
        }  # fmt: skip
    return rows


RUNNERS: dict[str, Callable[[int, dict], dict]] = {
    "meta-checkerboard": run_meta_checkerboard,
    "torchcfm-8gaussians-moons": run_torchcfm_moons,
    "torchcfm-digits": run_torchcfm_digits,
    "forestflow-tables": run_forestflow_tables,
    "rectified-flow-digits": run_rectified_flow,
}


def run_job(example: str, seed: int, quick: bool, folder: str | None = None) -> dict:
    """One example and seed; a failure is kept as its traceback (``error``), so that the other jobs' results stand.
    With ``folder`` the job writes its result there itself (``--resume`` reads it back, even if the parent died)."""
    import traceback

    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        run = {"example": example, "seed": seed, "rows": RUNNERS[example](seed, EXAMPLES[example]["quick" if quick else "full"])}
    except Exception:  # noqa: BLE001 - reported in the results, never swallowed silently
        run = {"example": example, "seed": seed, "rows": {}, "error": traceback.format_exc()}
    run["wall_s"] = time.perf_counter() - started
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{example}-seed{seed}.json").write_text(json.dumps(run, default=str) + "\n")
    return run


def run_job_star(args) -> dict:
    return run_job(*args)


# -- summary -------------------------------------------------------------------------------------------------
def stat(values: list) -> dict | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    """Per example and row: the median [min, max] over seeds of every figure."""
    out: dict = {}
    for example in EXAMPLES:
        of = [r for r in runs if r["example"] == example]
        if not of:
            continue
        names = list(dict.fromkeys(name for r in of for name in r["rows"]))
        summary = {}
        for name in names:
            entries = [r["rows"][name] for r in of if name in r["rows"]]
            keys = list(
                dict.fromkeys(k for e in entries for k, v in e["score"].items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            )
            item = {key: stat([e["score"].get(key) for e in entries]) for key in keys}
            for field in ("train_s", "steps", "time_to_peer_quality_s"):
                if any(field in e for e in entries):
                    item[field] = stat([e.get(field) for e in entries])
            if any("time_to_peer_quality_s" in e for e in entries):
                item["reached"] = [e.get("time_to_peer_quality_s") for e in entries]
            item["same_run"] = [e.get("same_run") for e in entries]
            summary[name] = item
        out[example] = {"seeds": [r["seed"] for r in of], "rows": summary}
    return out


def cell(s: dict | None, spec: str = ".3f", scale: float = 1.0) -> str:
    if s is None:
        return "-"
    m, lo, hi = (format(s[k] * scale, spec) for k in ("median", "min", "max"))
    return m if s["n"] == 1 or lo == hi else f"{m} [{lo}, {hi}]"


FIGURES = {  # per example: (score key, column title, format); lower is better except accuracy
    "meta-checkerboard": (("shape", "shape/floor"), ("shares", "shares/floor"), ("w2", "W2/floor")),
    "torchcfm-8gaussians-moons": (("shape", "shape/floor"), ("shares", "shares/floor"), ("w2", "W2/floor")),
    "torchcfm-digits": (("accuracy", "class accuracy"), ("w2", "pixel W2/floor")),
    "rectified-flow-digits": (("w2", "pixel W2/floor"), ("shares", "class shares/floor"), ("shape", "within-class W2/floor")),
}


def example_table(example: str, res: dict) -> list[str]:
    rows = res["rows"]
    lines = [f"### {example}: {PEER_NAMES[example]} (seeds {', '.join(map(str, res['seeds']))}; median [min, max])", ""]
    if example == "forestflow-tables":
        lines += [
            "| set | system | W_test (W1 to the test split, lower is better) | copy share | train s |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            set_name, system = name.split(": ", 1)
            lines.append(
                f"| {set_name} | {system} | {cell(r.get('w_test'))} | {cell(r.get('copy_share'))} | {cell(r.get('train_s'), '.1f')} |"
            )
            if system.startswith("training split"):
                w, s = FOREST_PUBLISHED[set_name]
                lines.append(f"| {set_name} | ForestFlow, published (K=100, its machine) | {w:.3f} | - | {s:.1f} |")
        return lines + [""]
    figures = FIGURES[example]
    lines += [
        "| system | steps | train s | " + " | ".join(title for _, title in figures) + " | time to peer's final quality, s |",
        "|---|---|---|" + "---|" * len(figures) + "---|",
    ]
    for name, r in rows.items():
        label = PEER_NAMES[example] if name == "peer" else name
        if name == "flowmatch, equal time" and all(r.get("same_run") or []):
            label += " (= the equal-steps run)"
        ttq = "-"
        if "reached" in r:
            each = ", ".join("never" if t is None else f"{t:.1f}" for t in r["reached"])
            ttq = f"{cell(r['time_to_peer_quality_s'], '.1f')} ({each})"
        cells = " | ".join(cell(r.get(key)) for key, _ in figures)
        lines.append(f"| {label} | {cell(r.get('steps'), '.0f')} | {cell(r.get('train_s'), '.1f')} | {cells} | {ttq} |")
    return lines + [""]


def versus(summary: dict) -> list[str]:
    """One line per example: flowmatch at equal steps and equal time against the peer, and the time ratio."""
    lines = [
        "| example | figure | peer | flowmatch, equal steps | flowmatch, equal time | flowmatch time to peer's quality / peer's time |",
        "|---|---|---|---|---|---|",
    ]
    for example, res in summary.items():
        rows = res["rows"]
        if example == "forestflow-tables":
            for name, r in rows.items():
                set_name, system = name.split(": ", 1)
                if system == "flowmatch defaults":
                    live = next((v for k, v in rows.items() if k.startswith(f"{set_name}: ForestFlow")), None)
                    peer = cell(live.get("w_test")) if live else "-"
                    published = FOREST_PUBLISHED[set_name][0]
                    lines.append(
                        f"| forestflow-tables {set_name} | W_test | {peer} live, {published:.3f} published | {cell(r.get('w_test'))} "
                        f"(copy share {cell(r.get('copy_share'))}) | n/a (trees have no steps; flowmatch stops early) | "
                        f"{cell(r.get('train_s'), '.1f')} s against ForestFlow's {cell(live.get('train_s'), '.1f') if live else '-'} s |"
                    )
            continue
        key, title = FIGURES[example][0]
        peer, steps, equal = rows.get("peer", {}), rows.get("flowmatch, equal steps", {}), rows.get("flowmatch, equal time", {})
        ttq, peer_s = steps.get("time_to_peer_quality_s"), peer.get("train_s")
        reached = steps.get("reached") or []
        ratio = "never" if ttq is None or not peer_s else f"{ttq['median'] / peer_s['median']:.2f}"
        if ttq is not None and any(t is None for t in reached):
            ratio += f" ({sum(t is not None for t in reached)}/{len(reached)} seeds reached)"
        lines.append(f"| {example} | {title} | {cell(peer.get(key))} | {cell(steps.get(key))} | {cell(equal.get(key))} | {ratio} |")
    return lines


def compare(ours: dict | None, theirs: dict | None, key: str) -> str:
    """'ahead' / 'behind' / 'level' of two medians (higher is better for accuracy, lower for the rest)."""
    if not ours or not theirs:
        return "not measured"
    a, b = ours["median"], theirs["median"]
    if a == b:
        return "level"
    return "ahead" if (a > b) == (key == "accuracy") else "behind"


def verdicts(summary: dict) -> list[str]:
    """Where flowmatch wins and loses, example by example, read off the medians."""
    lines = []
    for example, res in summary.items():
        rows = res["rows"]
        if example == "forestflow-tables":
            for name, r in rows.items():
                set_name, system = name.split(": ", 1)
                if system != "flowmatch defaults":
                    continue
                live = next((v for k, v in rows.items() if k.startswith(f"{set_name}: ForestFlow")), None)
                ours, published = r.get("w_test"), FOREST_PUBLISHED[set_name][0]
                parts = [f"W_test {cell(ours)}"]
                if live:
                    verdict = compare(ours, live.get("w_test"), "w_test")
                    parts.append(f"{verdict}{' of' if verdict == 'ahead' else ''} live ForestFlow ({cell(live.get('w_test'))})")
                if ours:
                    parts.append(f"{'ahead of' if ours['median'] < published else 'behind'} its published {published:.3f}")
                share = r.get("copy_share")
                if share:
                    parts.append(f"copy share {cell(share)} ({'within' if share['max'] <= 0.10 else 'above'} the 0.10 target)")
                lines.append(f"- forestflow-tables, {set_name}: " + "; ".join(parts) + ".")
            continue
        peer, steps, equal = rows.get("peer"), rows.get("flowmatch, equal steps"), rows.get("flowmatch, equal time")
        if not peer or not steps:
            continue
        parts = []
        for key, title in FIGURES[example]:
            if peer.get(key) is None:
                continue
            parts.append(
                f"{title}: {compare(steps.get(key), peer.get(key), key)} at equal steps ({cell(steps.get(key))} vs {cell(peer.get(key))}), "
                f"{compare((equal or {}).get(key), peer.get(key), key)} at equal time ({cell((equal or {}).get(key))})"
            )
        ttq, peer_s = steps.get("time_to_peer_quality_s"), peer.get("train_s")
        reached = steps.get("reached") or []
        if ttq and peer_s:
            parts.append(
                f"reached the peer's final quality in {ttq['median'] / peer_s['median']:.2f}x the peer's time "
                f"({sum(t is not None for t in reached)}/{len(reached)} seeds; target 0.5x)"
            )
        else:
            parts.append(f"did not reach the peer's final quality in most seeds ({sum(t is not None for t in reached)}/{len(reached)})")
        lines.append(f"- {example}: " + "; ".join(parts) + ".")
    return lines


def versions() -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for package in ("flowmatch", "flow_matching", "torchcfm", "torchdiffeq", "ForestDiffusion", "xgboost", "scikit-learn", "POT"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_state() -> str:
    """The commit this ran on, and whether the working tree had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes" if dirty.strip() else "")


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_examples", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES), help=f"comma separated, from {', '.join(EXAMPLES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=2, help="processes running (example, seed) jobs at once (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds): a smoke test, not a measurement")
    parser.add_argument("--out", default="peer_examples", help="result files bench/results/OUT.md and .json")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument("--resume", action="store_true", help="keep the finished jobs of a stopped run with the same --out")
    parser.add_argument("--render", metavar="JSON", help="print the report of an earlier run's JSON again (and write it with --out)")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        text = report(saved["summary"], saved["meta"])
        print(text)
        if not args.no_write:
            (RESULTS / f"{args.out}.md").write_text(text)
        return saved
    names = [n for n in args.examples.split(",") if n]
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        parser.error(f"unknown example(s) {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}")
    skipped = {n: missing_package(n) for n in names if missing_package(n) and not EXAMPLES[n].get("peer_optional")}
    for n, package in skipped.items():
        print(f"skipping {n}: its peer needs the package {package} (pip install -e '.[bench]')", flush=True)
    for n in names:
        if n not in skipped and missing_package(n):
            print(f"{n}: without its peer (the package {missing_package(n)} is not installed): flowmatch only", flush=True)
    names = [n for n in ORDER if n in names and n not in skipped]
    from tqdm import tqdm

    torch.set_num_threads(1)
    load, started = os.getloadavg(), time.perf_counter()
    partial = RESULTS / f"{args.out}.partial"  # each finished job's JSON, so that a stopped run can --resume
    runs: list[dict] = []
    if args.resume and partial.is_dir():
        found = [json.loads(f.read_text()) for f in sorted(partial.glob("*.json"))]
        runs = [r for r in found if "error" not in r and r["example"] in names and r["seed"] in args.seeds]
        print(f"resuming: {len(runs)} finished jobs from {partial}", flush=True)
    done = {(r["example"], r["seed"]) for r in runs}
    folder = None if args.no_write else str(partial)
    jobs = [(name, seed, args.quick, folder) for name in names for seed in args.seeds if (name, seed) not in done]

    def finished(run: dict) -> None:
        runs.append(run)
        if "error" in run:
            tqdm.write(f"{run['example']} seed {run['seed']} failed:\n{run['error']}")
        bar.set_postfix_str(f"{run['example']} seed {run['seed']}: {run['wall_s']:.0f} s")
        bar.update()

    with tqdm(total=len(jobs), desc="peer examples", unit="job") as bar:
        if args.jobs > 1 and len(jobs) > 1:
            with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
                for run in pool.imap_unordered(run_job_star, jobs):
                    finished(run)
        else:
            for job in jobs:
                finished(run_job(*job))
    total, load_end = time.perf_counter() - started, os.getloadavg()
    failed = [r for r in runs if "error" in r]
    runs = [r for r in runs if "error" not in r]
    runs.sort(key=lambda r: (ORDER.index(r["example"]), r["seed"]))
    summary = summarise(runs)
    meta = {
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        "versions": versions(),
        "git": git_state(),
        "jobs": args.jobs,
        "threads_per_process": 1,
        "load_average": [load[0], load_end[0]],
        "total_s": total,
        "jobs_s": sum(r["wall_s"] for r in runs),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "skipped": skipped,
        "failed": [{"example": r["example"], "seed": r["seed"], "error": r["error"].strip().splitlines()[-1]} for r in failed],
        "digits_classifier_test_accuracy": digits()["accuracy"] if any("digits" in n for n in names) else None,
        "settings": {n: EXAMPLES[n]["quick" if args.quick else "full"] for n in names},
    }
    text = report(summary, meta)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.md").write_text(text)
        payload = {"meta": meta, "summary": summary, "runs": runs}
        (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        if not failed and partial.is_dir():
            for f in partial.glob("*.json"):
                f.unlink()
            partial.rmdir()
    return {"meta": meta, "summary": summary, "runs": runs}


def report(summary: dict, meta: dict) -> str:
    v = meta["versions"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("flow_matching", "torchcfm", "ForestDiffusion", "xgboost") if v.get(k))
    lines = [
        "# The peers' own examples beside flowmatch (`python -m bench.peer_examples`)",
        "",
        f"{meta['machine']}; torch {v['torch']}, flowmatch {v['flowmatch']} at {meta.get('git', 'unknown')}; peers: {peers}; rectified-flow-pytorch ported "
        f"from its 0.14.0 source (it imports torchvision, which fails beside torch {v['torch']}); {meta['jobs']} processes of "
        f"one thread; load average {meta['load_average'][0]:.2f} at start, {meta['load_average'][1]:.2f} at end; total "
        f"{meta['total_s']:.0f} s; {meta['date']}." + (" **Quick settings: a smoke test, not a measurement.**" if meta["quick"] else ""),
        "",
        *(
            [
                f"**Failed jobs** (see the JSON): {', '.join(f['example'] + ' seed ' + str(f['seed']) + ': ' + f['error'] for f in meta['failed'])}",
                "",
            ]
            if meta.get("failed")
            else []
        ),
        "The CPU was shared with other jobs while this ran: each example's peer and flowmatch ran one after the other "
        "in one process, so their ratio is fair, but absolute seconds are noisy.",
        "",
        "## Summary: flowmatch at its defaults against each peer's own example",
        "",
        *versus(summary),
        "",
        "Where flowmatch is ahead and behind (medians over the seeds):",
        "",
        *verdicts(summary),
        "",
        "## Per example",
        "",
    ]
    if meta.get("digits_classifier_test_accuracy") is not None:
        lines += [
            f"Digits: the SVM that names generated digits scores {meta['digits_classifier_test_accuracy']:.3f} on the real test split.",
            "",
        ]
    for example, res in summary.items():
        lines += example_table(example, res)
    lines += ["## Settings", "", "| example | settings |", "|---|---|"]
    for example, settings in meta.get("settings", {}).items():
        lines.append(f"| {example} | " + ", ".join(f"{k} {v}" for k, v in settings.items()) + " |")
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


#: How the figures were made, under every report (the module docstring has the whole protocol).
NOTES = [
    "How to read it (the module docstring of `bench/peer_examples.py` has the whole protocol):",
    "",
    "- Every example runs the peer's own recipe (its generator, network, optimiser and sampler) and flowmatch at its "
    "defaults on the same generator and the same network, one after the other in one process per (example, seed).",
    "- Scores have calibrated floors: k sample sets S_j, each against its own held-out set A_j, over the same figure of "
    "a second held-out set B_j against A_j (1 = as close as fresh data). `shape` and `shares` are "
    "`flowmatch.evaluation.metrics.shape_score` (within-mode W2 and mode-share TV, each over its floor, median over "
    "the sets); `W2/floor` is the mean exact W2 over the sets. Lower is better; class accuracy higher.",
    "- Equal steps: flowmatch trains as many optimiser steps as the peer. Equal time: a flowmatch run whose step "
    "count fits the peer's training seconds (its schedule fitted to it), or the equal-steps run where the two differ "
    "by under 20%. Time to the peer's final quality: training seconds at flowmatch's first probe scoring at least as "
    "well as the peer's last probe on every figure (both probed with rk4 at NFE 20; clocks paused while probing).",
    "- Scaled for 2 CPU cores: Meta's notebook trains 20,001 steps at batch 4,096 (here 2,500 at 1,024); TorchCFM's "
    "tutorial 20,000 steps (here 3,000); its MNIST notebook 10 epochs of MNIST (here 350 steps on the 1,437 training "
    "digits); lucidrains' script 70,000 steps on Oxford flowers at 64x64 (here 1,500 on 8x8 digits); ForestFlow's "
    "protocol duplicates the rows 100 times (here 10, and live on iris and wine only; the published rows are its "
    "paper's, at 100, on its machine).",
    "- Substitutions: TorchCFM's tutorial samples with torchdyn's NeuralODE (dopri5, atol = rtol = 1e-4), which "
    "imports torchvision through pytorch_lightning; here torchdiffeq's dopri5 at the same tolerances. "
    "rectified-flow-pytorch imports torchvision at module level (it fails beside this torch), so its RectifiedFlow "
    "(predict clean) and Trainer (Adam 3e-4, batch 16, clip 0.5, ema_pytorch EMA) are ported from the 0.14.0 "
    "source, and its x-unet U-Net is replaced on both sides by flowmatch's 8x8 U-Net (16 channels, 1, 2).",
]


if __name__ == "__main__":
    main()

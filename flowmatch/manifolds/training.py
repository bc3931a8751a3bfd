"""Runs of kind manifold: Riemannian flow matching trained, measured and written as a run folder.

**A step.** A batch of data points x1 (fresh draws of a built-in set, or rows of a file's training
split), source points x0 (uniform on the manifold; N(0, I) for the Euclidean comparison), times t
(:func:`flowmatch.training.schedules.sample_times`: uniform and stratified by default), and the loss on
the geodesic path (:func:`flowmatch.manifolds.flow.riemannian_loss`),

    L = E |v_theta(x_t, t) - u_t|^2,   x_t = exp_{x0}(kappa_t log_{x0}(x1)),   u_t = d/dt x_t,

with, by default (``target`` auto, as for continuous runs: fresh data or at least 2,048 training points),
u_t replaced by its posterior mean over the batch's data points
(:meth:`flowmatch.manifolds.paths.GeodesicPath.posterior_velocity`): the same minimiser, far less
variance. From the uniform source a law close to uniform has a weak marginal field under strong
conditional velocities (on S2-checkerboard: |v| about 0.03 at t = 0.5 against |u_t| about 1.7), and a
network trained on u_t alone learns almost nothing of it in thousands of steps.

Adam(W) with the project's learning-rate schedule (linear warm-up, then constant or cosine decay),
gradient clipping and an EMA of the weights, which are the ones sampled. On a file, every
``val_every`` steps the loss of the EMA weights on the validation split (fixed x0, x1 and t, so values
differ only by the weights) is logged, and the weights of the lowest one are kept (``select``), with an
optional early stop. SIGINT or SIGTERM ends training after the current step; the run is still written.

**Data** (:class:`ManifoldRunData`). A built-in set (:data:`flowmatch.manifolds.MANIFOLD_SETS`) is
infinite: every batch, every held-out set is a fresh draw. A file (:func:`load_manifold_data`: lat/lon,
angles with units, quaternions) is shuffled with the run's seed and split as the package splits data
files: 20% test (at most 4,000 points, kept for evaluation), then ``val_fraction`` of the rest for
validation (at least 2 and at most 2,000 points), the rest for training.

**The Euclidean comparison** (``manifold = "euclidean"``, built-in sets): the ordinary flow matching of
flowmatch on the set's ambient coordinates (3 for S^2, the 2 angles for T^2, the quaternion's 4 for
SO(3)), with the same network (a tangent-mlp on R^D, which reads the coordinates themselves), the
straight path x_t = (1 - t) x0 + t x1 (the geodesic of R^D) from x0 ~ N(0, I). Its samples lie near the
manifold but not on it; evaluation projects them onto it (:meth:`RiemannianFlow.on_data_manifold`) and
reports how far off they were.

**The run folder** (written whole at the end, atomically: :func:`flowmatch.storage.atomic_folder`):
config.json; checkpoint.safetensors with checkpoint.json (kind "manifold", the flow's manifold, the data's
manifold, the model's config, the path's scheduler, the source); metrics.csv (step, loss, validation
loss, seconds); metrics.json (training figures and the quick report's headline numbers); report.json
(:func:`flowmatch.evaluation.manifolds.evaluate_manifold`, quick); samples.npy (generated points,
canonical ambient coordinates) and samples.png (beside held-out data).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowmatch.discrete.schedulers import Scheduler, make_scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.data import MANIFOLD_SETS, ManifoldData, PointSet, load_manifold_data, manifold_set
from flowmatch.manifolds.flow import RiemannianFlow, TangentMLP, riemannian_loss, wrapped_gaussian_scale
from flowmatch.manifolds.manifolds import Euclidean, Manifold, manifold_from_config
from flowmatch.manifolds.paths import GeodesicPath
from flowmatch.training.checkpoints import load_weights
from flowmatch.training.config import TrainConfig, resolve_kind, resolve_target
from flowmatch.training.ema import EMA
from flowmatch.training.loop import _descend, _optimizer, _progress_bar, _StopSignal
from flowmatch.training.schedules import batch_size_at, learning_rate, sample_times
from flowmatch.training.threads import thread_scope, use_threads

#: Share of a file's points held out as its test split (at most TEST_MAX), as for every data file.
TEST_FRACTION = 0.2


TEST_MAX = 4000


#: The validation split of a file holds at most this many points (and at least 2).
VAL_MAX = 2000


#: Validation points the loss is computed on (the first of the split).
VAL_POINTS = 1024


#: Points in samples.npy and samples.png (a file's run: at most its test split's size).
SAMPLES = 2000


#: Fresh held-out draws of built-in sets use seed + this (+ k for the k-th set), as continuous runs do.
HELD_SEED = 7_000_003


#: Options of other kinds that a manifold run would silently ignore: a value other than the default is refused.
NOT_FOR_MANIFOLDS = (
    "conditional", "label_column", "condition_columns", "coupling", "pairs", "objective", "init_from", "path",
    "sigma_min", "bridge_sigma", "loss_weight", "discrete_source", "discrete_loss", "standardize", "compile",
)  # fmt: skip


# -- data ------------------------------------------------------------------------------------------
@dataclass
class ManifoldRunData:
    """The data of a run: ``law`` (a built-in set or a file's :class:`PointSet`) on ``manifold``, and for a
    file its ``train``, ``val`` (or None) and ``test`` points (float32, canonical); a built-in set has none
    (``finite`` False: every draw is fresh)."""

    name: str
    law: ManifoldData
    manifold: Manifold
    train: torch.Tensor | None = None
    val: torch.Tensor | None = None
    test: torch.Tensor | None = None

    @property
    def finite(self) -> bool:
        return self.train is not None

    def batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n training points: a fresh draw of a built-in set, or rows of the training split drawn with replacement."""
        if self.train is None:
            return self.law.sample(n, generator)
        return self.train[torch.randint(len(self.train), (n,), generator=generator)]

    def held_out(self, n: int, seed: int, k: int = 0) -> torch.Tensor:
        """The k-th held-out set of n points: a fresh draw with seed + HELD_SEED + k (built-in sets), or
        the k-th block of n test points (files)."""
        if self.test is None:
            return self.law.sample(n, generator=seed + HELD_SEED + k)
        if (k + 1) * n > len(self.test):
            raise FlowmatchError(f"{self.name}: the test split holds {len(self.test)} points, not {k + 1} sets of {n}")
        return self.test[k * n : (k + 1) * n]


def load_run_data(config: TrainConfig) -> ManifoldRunData:
    """The data a manifold run's config names: a built-in set (its own manifold, or ``euclidean`` for the
    comparison), or a file read onto ``config.manifold`` with ``columns`` and ``units`` and split with
    ``seed`` and ``val_fraction`` (module docstring)."""
    if config.data == "python":
        raise FlowmatchError("this run was trained on points given in Python, which its folder does not hold")
    if config.data in MANIFOLD_SETS:
        law = manifold_set(config.data)
        if config.manifold not in ("auto", "euclidean", law.manifold.name):
            raise FlowmatchError(
                f"{config.data} lives on {law.manifold.label}, not on manifold={config.manifold}: leave it auto, "
                "or pass manifold='euclidean' for the Euclidean comparison"
            )
        if config.columns or config.units != "auto":
            given = f"units={config.units}" if config.units != "auto" else f"columns={config.columns}"
            raise FlowmatchError(f"{given} describes a data file's columns; {config.data} is a built-in set")
        return ManifoldRunData(config.data, law, law.manifold)
    if config.manifold == "euclidean":
        raise FlowmatchError(
            f"manifold='euclidean' is the Euclidean comparison on a built-in manifold set ({', '.join(MANIFOLD_SETS)}); "
            f"points in R^D from '{config.data}' are an ordinary continuous run (kind='continuous')"
        )
    law = load_manifold_data(
        config.data,
        None if config.manifold == "auto" else config.manifold,
        columns=config.columns or None,
        units=None if config.units == "auto" else config.units,
    )
    assert isinstance(law, PointSet)
    return split_points(law, seed=config.seed, val_fraction=config.val_fraction)


def split_points(law: PointSet, *, seed: int, val_fraction: float) -> ManifoldRunData:
    """A file's points shuffled with ``seed`` and split into test, validation and training points."""
    points = law.points.to(torch.float32)
    points = law.manifold.canonical(points)
    n = len(points)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(TEST_MAX, max(2, round(TEST_FRACTION * n)))
    n_val = min(VAL_MAX, max(2, round(val_fraction * (n - n_test)))) if val_fraction > 0 else 0
    if n - n_test - n_val < 2:
        raise FlowmatchError(f"{law.path}: {n} points are too few to split into training, validation and test points")
    test, val, train = (points[order[a:b]] for a, b in ((0, n_test), (n_test, n_test + n_val), (n_test + n_val, n)))
    return ManifoldRunData(law.name, law, law.manifold, train=train, val=val if n_val else None, test=test)


# -- the flow --------------------------------------------------------------------------------------
def check_options(config: TrainConfig) -> None:
    """Refuse options that kind manifold does not use (a value other than their default), and a source or
    model it cannot train."""
    defaults = TrainConfig()
    for key in NOT_FOR_MANIFOLDS:
        if getattr(config, key) != getattr(defaults, key):
            raise FlowmatchError(f"{key}={getattr(config, key)!r} does not apply to kind manifold (Riemannian flow matching)")
    if config.precision == "bf16":
        raise FlowmatchError("kind manifold trains in float32: precision='bf16' does not apply")
    if config.source not in ("uniform", "gaussian", *MANIFOLD_SETS) and wrapped_gaussian_scale(config.source) is None:
        raise FlowmatchError(
            f"kind manifold starts from source='uniform', 'wrapped-gaussian' (or 'wrapped-gaussian:SCALE'), a built-in set on "
            f"the same manifold ({', '.join(MANIFOLD_SETS)}) or 'gaussian' with manifold='euclidean', not '{config.source}'"
        )
    if config.model not in ("mlp", "tangent-mlp", "python"):  # mlp: the continuous default, so the kind's own
        raise FlowmatchError(f"kind manifold trains the tangent-mlp, not model {config.model}; pass your own model in Python")


def make_path(config: TrainConfig, manifold: Manifold) -> GeodesicPath:
    """The geodesic path with the config's kappa scheduler (linear, polynomial with its exponent, cosine)."""
    options = {"exponent": config.scheduler_exponent} if config.scheduler == "polynomial" else {}
    return GeodesicPath(manifold, make_scheduler(config.scheduler, **options))


def make_flow(config: TrainConfig, data: ManifoldRunData, model: torch.nn.Module | None = None) -> RiemannianFlow:
    """The untrained flow of a run: on the data's manifold, or on R^D for the Euclidean comparison, with the
    config's tangent-mlp (or ``model``), path and source."""
    euclidean = config.manifold == "euclidean"
    manifold = Euclidean(data.manifold.ambient_dim) if euclidean else data.manifold
    if config.source == "gaussian" and not euclidean:
        raise FlowmatchError(
            f"source='gaussian' is N(0, I), the Euclidean comparison's (manifold='euclidean'); on {manifold.label} the source is 'uniform'"
        )
    if config.source == "uniform" and euclidean:
        raise FlowmatchError(f"{manifold.label} has no uniform distribution: the Euclidean comparison starts from source='gaussian'")
    if model is None:
        model = TangentMLP(manifold.ambient_dim, manifold, width=config.width, depth=config.depth, activation=config.activation)
    return RiemannianFlow(
        model, manifold, make_path(config, manifold), source=config.source, data_manifold=data.manifold, config=config.to_dict()
    )


# -- training --------------------------------------------------------------------------------------
@dataclass
class ManifoldResult:
    """What :func:`train_manifold` returns: the flow (EMA weights, or the best validation ones), its data,
    the losses per step, the training seconds, the steps run, and the validation summary (files)."""

    flow: RiemannianFlow
    config: TrainConfig
    data: ManifoldRunData
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step: int = 0
    interrupted: bool = False
    validation: dict[str, Any] | None = None
    log: list[tuple[int, float, float, float]] = field(default_factory=list)
    target: str = "conditional"
    threads: dict[str, Any] | None = None  # torch's intra-op thread count and what chose it (training.threads)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else float("nan")


@thread_scope
def train_manifold(
    config: TrainConfig, *, data: ManifoldRunData | None = None, model: torch.nn.Module | None = None, progress: bool = True
) -> ManifoldResult:
    """Train a Riemannian flow on ``config.data`` (or ``data``, a :class:`ManifoldRunData`) as the module
    docstring says; ``model`` replaces the tangent-mlp (called as ``model(x, t)``, tangent output)."""
    from flowmatch.training.devices import resolve_device

    if resolve_kind(config) != "manifold":
        raise FlowmatchError(f"train_manifold trains kind manifold, not {resolve_kind(config)}")
    check_options(config)
    torch.manual_seed(config.seed)
    data = data if data is not None else load_run_data(config)
    device = resolve_device(config.device)
    flow = make_flow(config, data, model).to(device)
    net = flow.model
    assert isinstance(net, torch.nn.Module)
    threads = use_threads(config.threads, net, config.batch_size)
    ema = EMA(net, config.ema, config.ema_warmup)
    optimizer = _optimizer(config, net)
    generator = torch.Generator().manual_seed(config.seed)
    target = resolve_target(config, len(data.train) if data.train is not None else None)
    posterior = target == "posterior"
    val = _validation_batch(flow, data, config.seed + 1)
    best: dict[str, Any] = {"loss": float("inf"), "step": 0, "weights": None}
    log: list[tuple[int, float, float, float]] = []
    losses: list[float] = []
    stop = _StopSignal()
    bar = _progress_bar(config.steps, 0, progress)
    started, done = time.perf_counter(), 0
    net.train()
    with stop:
        for step in range(config.steps):
            n = batch_size_at(config, step)
            x1 = data.batch(n, generator).to(device)
            x0 = flow.draw_source(n, generator)
            t = sample_times(config, n, generator).to(device=device, dtype=x1.dtype)
            loss = _loss(net, flow, x0, x1, t, posterior)
            if not torch.isfinite(loss):
                raise FlowmatchError(f"training stopped: the loss is {loss.item()} at step {step}; try a smaller lr")
            _descend(optimizer, net, loss, learning_rate(config, step), config.grad_clip)
            ema.update(net)
            losses.append(loss.item())
            done = step + 1
            logged = done % config.log_every == 0 or done == config.steps
            value = float("nan")
            if val is not None and (done % config.val_every == 0 or done == config.steps):
                averaged = ema.averaged_copy(net).eval()
                value = _validate(flow, averaged, val)
                if value < best["loss"]:
                    best = {"loss": value, "step": done, "weights": averaged.state_dict()}
                logged = True
            if logged:
                log.append(
                    (done, sum(losses[-config.log_every :]) / len(losses[-config.log_every :]), value, time.perf_counter() - started)
                )
                if bar is not None:
                    bar.set_postfix(loss=f"{log[-1][1]:.4f}", **({"val": f"{value:.4f}"} if value == value else {}), refresh=False)
            if bar is not None and (done % 10 == 0 or done == config.steps):
                bar.update(done - bar.n)
            if stop.requested or (config.early_stop and val is not None and done - best["step"] >= config.early_stop):
                break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    use_best = best["weights"] is not None and config.select in ("auto", "val-loss")
    flow.model = ema.sampling_copy(net, best["weights"] if use_best else None)
    validation = None
    if val is not None:
        validation = {
            "best_step": best["step"], "best_loss": best["loss"], "selected": "val-loss" if use_best else "last",
            "stopped_early": done < config.steps and not stop.requested,
        }  # fmt: skip
    return ManifoldResult(flow, config, data, losses, seconds, done, stop.requested, validation, log, target, threads.to_dict())


def _loss(model, flow: RiemannianFlow, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, posterior: bool) -> torch.Tensor:
    """mean |v(x_t, t) - target|^2: the target is u_t (conditional) or its posterior mean over the batch's
    data points (:meth:`GeodesicPath.posterior_velocity`)."""
    if not posterior:
        return riemannian_loss(model, flow.path, x0, x1, t)
    sample = flow.path.sample(x0, x1, t)
    with torch.no_grad():
        goal = flow.path.posterior_velocity(sample, x1, flow.source).to(x1.dtype)
    pred = model(sample.x_t, sample.t)
    if pred.shape != goal.shape:
        raise FlowmatchError(f"the model returned shape {tuple(pred.shape)} for points of shape {tuple(sample.x_t.shape)}")
    return (pred - goal).pow(2).sum(dim=1).mean()


def _validation_batch(flow: RiemannianFlow, data: ManifoldRunData, seed: int):
    """Fixed (x0, x1, t) on the first VAL_POINTS validation points (None without a validation split)."""
    if data.val is None:
        return None
    generator = torch.Generator().manual_seed(seed)
    x1 = data.val[:VAL_POINTS]
    device = flow._placement()[0]
    x0 = flow.draw_source(len(x1), generator)
    t = torch.rand(len(x1), generator=generator)
    return x0, x1.to(device), t.to(device)


def _validate(flow: RiemannianFlow, model: torch.nn.Module, val) -> float:
    x0, x1, t = val
    with torch.no_grad():
        return float(riemannian_loss(model, flow.path, x0, x1, t))


# -- the run folder ----------------------------------------------------------------------------------
def scheduler_to_config(scheduler: Scheduler) -> dict[str, Any]:
    out: dict[str, Any] = {"name": scheduler.name}
    if hasattr(scheduler, "exponent"):
        out["exponent"] = scheduler.exponent
    return out


def checkpoint_meta(flow: RiemannianFlow) -> dict[str, Any]:
    """checkpoint.json of a manifold run: what rebuilds the flow around its weights, as JSON."""
    from flowmatch.models.registry import to_config

    if not isinstance(flow.model, torch.nn.Module):
        raise FlowmatchError(f"a run folder saves a torch.nn.Module's weights; the flow's model is a {type(flow.model).__name__}")
    return {
        "format": "flowmatch-checkpoint",
        "version": 1,
        "kind": "manifold",
        "manifold": flow.manifold.to_config(),
        "data_manifold": flow.data_manifold.to_config(),
        "model": to_config(flow.model),
        "scheduler": scheduler_to_config(flow.path.scheduler),
        "source": flow.source,
    }


def save_manifold(flow: RiemannianFlow, folder: Path) -> None:
    """Weights (safetensors) and checkpoint.json into ``folder`` (a model flowmatch cannot rebuild is refused first)."""
    from flowmatch.runs import CHECKPOINT, CHECKPOINT_META
    from flowmatch.storage import save_tensors, write_json

    meta = checkpoint_meta(flow)
    assert isinstance(flow.model, torch.nn.Module)
    save_tensors(folder / CHECKPOINT, flow.model.state_dict())
    write_json(folder / CHECKPOINT_META, meta)


def build_manifold_flow(meta: dict[str, Any], state: dict[str, torch.Tensor], config: dict[str, Any], where) -> RiemannianFlow:
    """The RiemannianFlow of :func:`checkpoint_meta` and its weights (checked: shapes and finite values)."""
    from flowmatch.models.registry import from_config

    try:
        manifold = manifold_from_config(meta["manifold"])
        data_manifold = manifold_from_config(meta["data_manifold"])
        model = from_config(dict(meta["model"]), manifold.ambient_dim)
        options = {k: v for k, v in meta["scheduler"].items() if k != "name"}
        path = GeodesicPath(manifold, make_scheduler(meta["scheduler"]["name"], **options))
        flow = RiemannianFlow(model, manifold, path, source=meta["source"], data_manifold=data_manifold, config=config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FlowmatchError):
            raise FlowmatchError(f"{where}: {exc}") from None
        raise FlowmatchError(f"{where}: malformed checkpoint metadata ({exc!r})") from None
    load_weights(model, state, where)
    return flow


@thread_scope
def fit_manifold(
    config: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    data: ManifoldRunData | None = None,
    model: torch.nn.Module | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate: bool = True,
) -> tuple[ManifoldResult, dict[str, Any]]:
    """Train (:func:`train_manifold`), measure (the quick report of :func:`flowmatch.evaluation.manifolds.evaluate_manifold`)
    and, with ``out``, write the run folder whole (module docstring). Returns the result and metrics.json's content."""
    from flowmatch.evaluation.manifolds import evaluate_manifold, headline
    from flowmatch.runs import check_writable_run
    from flowmatch.storage import atomic_folder, write_json

    config = TrainConfig.from_dict({**config.to_dict(), "kind": "manifold"})
    check_options(config)
    if out is not None:
        check_writable_run(Path(out), force)
    data = data if data is not None else load_run_data(config)  # a bad file is refused before training
    result = train_manifold(config, data=data, model=model, progress=progress)
    if out is not None:
        checkpoint_meta(result.flow)  # a model the folder cannot describe is refused before the evaluation
    metrics: dict[str, Any] = {
        "kind": "manifold", "data": config.data, "manifold": result.flow.manifold.to_config(),
        "data_manifold": result.flow.data_manifold.to_config(), "final_loss": result.final_loss,
        "train_seconds": result.seconds, "steps": config.steps, "steps_run": result.step, "interrupted": result.interrupted,
        "target": result.target, "threads": result.threads,
    }  # fmt: skip
    if result.validation is not None:
        metrics["validation"] = result.validation
    report = evaluate_manifold(result.flow, data=data, quick=True, seed=config.seed) if evaluate else None
    if report is not None:
        metrics.update(headline(report))
    if out is None:
        return result, metrics
    with atomic_folder(Path(out)) as staging:
        write_json(staging / "config.json", config.to_dict())
        save_manifold(result.flow, staging)
        rows = ["step,loss,val_loss,seconds"] + [f"{s},{loss:.6g},{v:.6g},{sec:.3f}" for s, loss, v, sec in result.log]
        (staging / "metrics.csv").write_text("\n".join(rows) + "\n")
        write_json(staging / "metrics.json", metrics)
        if report is not None:
            write_json(staging / "report.json", report)
        write_samples(result.flow, data, staging, seed=config.seed)
    return result, metrics


def write_samples(flow: RiemannianFlow, data: ManifoldRunData, folder: Path, *, seed: int = 0) -> Path:
    """samples.npy (SAMPLES generated points, at most a file's test split's size; rk4 at NFE 100; canonical
    ambient coordinates, the Euclidean comparison's as generated in R^D) and samples.png (on the data's
    manifold beside as many held-out points)."""
    import numpy as np

    from flowmatch.evaluation.manifolds import manifold_picture

    n = SAMPLES if data.test is None else min(SAMPLES, len(data.test))
    x = flow.generate(n, solver="rk4", nfe=100, seed=seed + 1)
    np.save(folder / "samples.npy", x.cpu().numpy())
    manifold_picture(flow, folder / "samples.png", data=data, seed=seed, samples=x)
    return folder / "samples.npy"

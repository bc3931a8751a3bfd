"""Points on a manifold (Riemannian flow matching) through the engine's seam (:mod:`flowmatch.engine.seam`).

**A step.** A batch of data points x1 (fresh draws of a built-in set, or rows of a file's training split),
source points x0 (uniform on the manifold; a wrapped Gaussian, a built-in set on the same manifold, or N(0, I)
for the Euclidean comparison), times t (:func:`flowmatch.engine.schedules.sample_times`: uniform and
stratified by default), and the loss on the geodesic path (:func:`flowmatch.flows.riemannian.riemannian_loss`),

    L = E |v_theta(x_t, t) - u_t|^2,   x_t = exp_{x0}(kappa_t log_{x0}(x1)),   u_t = d/dt x_t,

with, by default (``target`` auto, as for points: fresh data or at least 2,048 training points), u_t replaced
by its posterior mean over the batch's data points
(:meth:`flowmatch.manifolds.paths.GeodesicPath.posterior_velocity`): the same minimiser, far less variance.
From the uniform source a law close to uniform has a weak marginal field under strong conditional velocities
(on S2-checkerboard: |v| about 0.03 at t = 0.5 against |u_t| about 1.7), and a network trained on u_t alone
learns almost nothing of it in thousands of steps.

**Data** (:class:`flowmatch.data.manifolds.ManifoldRunData`). A built-in set is infinite: every batch, every
held-out set is a fresh draw. A file (lat/lon, angles with units, quaternions) is shuffled with the run's
seed and split: 20% test (at most 4,000 points, kept for evaluation), then ``val_fraction`` of the rest for
validation (at least 2 and at most 2,000 points), the rest for training. Points given in Python (``fit(data=
<points>, kind="manifold", manifold="sphere")``) are split the same way.

**The Euclidean comparison** (``manifold = "euclidean"``, built-in sets): the ordinary flow matching of
flowmatch on the set's ambient coordinates (3 for S^2, the 2 angles for T^2, the quaternion's 4 for SO(3)),
with the same network, the straight path from x0 ~ N(0, I). Its samples lie near the manifold but not on
it; evaluation projects them onto it and reports how far off they were.

**The run folder** is the engine's, with samples.npy (generated points, canonical ambient coordinates) and
samples.png (beside held-out data), and report.json (:func:`flowmatch.evaluation.manifolds.evaluate_manifold`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmatch.conditions import drop
from flowmatch.data.files import class_count
from flowmatch.data.manifolds import MANIFOLD_SETS, SAMPLES, VAL_POINTS, ManifoldRunData, PointSet, load_run_data, split_points
from flowmatch.discrete.schedulers import make_scheduler
from flowmatch.engine.options import resolve_target
from flowmatch.engine.schedules import batch_size_at, sample_times
from flowmatch.engine.seam import Context, Modality, Objects, Task
from flowmatch.errors import FlowmatchError
from flowmatch.flows.riemannian import RiemannianFlow, build_manifold_flow, wrapped_gaussian_scale
from flowmatch.manifolds.losses import riemannian_loss
from flowmatch.manifolds.manifolds import Euclidean, Manifold, make_manifold
from flowmatch.manifolds.paths import GeodesicPath
from flowmatch.manifolds.solvers import MANIFOLD_SOLVERS
from flowmatch.modalities.manifolds.options import KIND
from flowmatch.storage import atomic_file


def make_path(config: Any, manifold: Manifold) -> GeodesicPath:
    """The geodesic path with the config's kappa scheduler (linear, polynomial with its exponent, cosine)."""
    options = {"exponent": config.scheduler_exponent} if config.scheduler == "polynomial" else {}
    return GeodesicPath(manifold, make_scheduler(config.scheduler, **options))


def run_data(config: Any, objects: Objects) -> ManifoldRunData:
    """The data of a run: what its config names (:func:`flowmatch.data.manifolds.load_run_data`), or points given
    in Python on the config's ``manifold`` (unit vectors on a sphere, angles in radians on a torus, unit
    quaternions on SO(3)), split as a file's points are; a mapping ``{"x": points, "labels": ..., "conditions": ...}``
    gives them class labels and float covariates."""
    if objects.data is None:
        return load_run_data(config)
    if config.manifold in ("auto", "euclidean"):
        raise FlowmatchError(
            "points given in Python need the manifold they lie on: manifold='sphere', 'torus' or 'so3' (unit vectors, "
            "angles in radians, unit quaternions w,x,y,z)"
        )
    parts = dict(objects.data) if isinstance(objects.data, dict) else {"x": objects.data}
    if "x" not in parts or set(parts) - {"x", "labels", "conditions"}:
        raise FlowmatchError(f"points given as a mapping take keys x, labels and conditions; got {', '.join(map(str, parts))}")
    points = _array(parts["x"], "data")
    if points.ndim != 2 or not points.is_floating_point():
        raise FlowmatchError(f"data for kind manifold must be float points of shape (n, D), got {points.dtype} {tuple(points.shape)}")
    dims = {"sphere": points.shape[1] - 1, "torus": points.shape[1], "so3": None}
    manifold = make_manifold(config.manifold, dims[config.manifold])
    points = manifold.check(points.to(torch.float64), "data")
    rows: dict[str, np.ndarray] = {}
    given: dict[str, Any] = {}
    if parts.get("labels") is not None:
        labels = _array(parts["labels"], "labels").reshape(-1)
        if labels.is_floating_point() or len(labels) != len(points) or (labels < 0).any():
            raise FlowmatchError(f"labels must be {len(points)} class numbers >= 0, got {labels.dtype} of shape {tuple(labels.shape)}")
        rows["y"] = labels.long().numpy()
        given["classes"] = list(range(class_count(rows["y"], len(points), "labels")))
    if parts.get("conditions") is not None:
        c = _array(parts["conditions"], "conditions").to(torch.float32)
        c = c.reshape(len(c), -1)
        if len(c) != len(points) or not torch.isfinite(c).all():
            raise FlowmatchError(f"conditions must be {len(points)} rows of finite numbers, got shape {tuple(c.shape)}")
        rows["c"], given["condition_columns"] = c.numpy(), [f"c{j}" for j in range(c.shape[1])]
    if config.conditional != ("y" in rows):
        raise FlowmatchError("a manifold run conditions on class labels with conditional=True and data={'x': ..., 'labels': ...} together")
    law = PointSet("data from Python", manifold, points, "python")
    return split_points(law, seed=config.seed, val_fraction=config.val_fraction, conditions=rows or None, given=given)


def _array(value: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise FlowmatchError(f"{what} for kind manifold must be an array, got {type(value).__name__}") from None


class ManifoldTask(Task):
    def __init__(self, config: Any, objects: Objects, context: Context):
        self.config, self.objects, self.device = config, objects, context.device
        self.data = data = run_data(config, objects)
        euclidean = config.manifold == "euclidean"
        self.manifold = Euclidean(data.manifold.ambient_dim) if euclidean else data.manifold
        if config.source == "gaussian" and not euclidean:
            raise FlowmatchError(
                f"source='gaussian' is N(0, I), the Euclidean comparison's (manifold='euclidean'); on {self.manifold.label} the source is 'uniform'"
            )
        if config.source == "uniform" and euclidean:
            raise FlowmatchError(
                f"{self.manifold.label} has no uniform distribution: the Euclidean comparison starts from source='gaussian'"
            )
        self.path = make_path(config, self.manifold)
        self.n_train = len(data.train) if data.train is not None else None
        self.finite = data.finite
        self.conditions = data.model_conditions
        self.target = resolve_target(config, self.n_train)
        if self.conditions and self.target == "posterior":  # the posterior averages over the batch's points, whatever their conditions
            if config.target == "posterior":
                raise FlowmatchError(f"target posterior does not take conditions; these points carry {', '.join(self.conditions)}")
            self.target = "conditional"
        if context.min_test_rows and data.test is not None and len(data.test) < context.min_test_rows:
            raise FlowmatchError(
                f"{data.name}: the test split holds {len(data.test)} points; the measurements need {context.min_test_rows}"
            )
        self.source_flow = self.flow(torch.nn.Linear(1, 1))  # draws the source (the model is never called)
        if data.val is not None:
            generator = torch.Generator().manual_seed(config.seed + 1)
            x1 = data.val[:VAL_POINTS]
            x0 = self.source_flow.draw_source(len(x1), generator)
            t = torch.rand(len(x1), generator=generator)
            fixed = (x0.to(self.device), x1.to(self.device), t.to(self.device))
            given = {k: v[:VAL_POINTS].to(self.device) for k, v in data.conditions.get("val", {}).items()}
            self.validation = lambda model: float(riemannian_loss(lambda x, s: model(x, s, **given), self.path, *fixed))

    def initial_model(self) -> torch.nn.Module:

        config = self.config
        if self.objects.model is not None:
            return self.objects.model
        from flowmatch.models.registry import build_model

        m = self.manifold
        return build_model(
            "tangent-mlp", m.ambient_dim, manifold=m, width=config.width, depth=config.depth, activation=config.activation,
            num_classes=self.conditions.get("y", {}).get("classes", 0), condition_dim=self.conditions.get("c", {}).get("dim", 0),
        )  # fmt: skip

    def warm_start(self, flow: RiemannianFlow, folder: str) -> torch.nn.Module:
        if flow.manifold.to_config() != self.manifold.to_config():
            raise FlowmatchError(f"init_from '{folder}' is a run on {flow.manifold.label}, not on {self.manifold.label}")
        assert isinstance(flow.model, torch.nn.Module)  # a run folder's model is a module
        return flow.model.train()

    def flow(self, model: torch.nn.Module) -> RiemannianFlow:
        return RiemannianFlow(
            model,
            self.manifold,
            self.path,
            source=self.config.source,
            data_manifold=self.data.manifold,
            config=self.config.to_dict(),
            conditions=self.conditions,
        )

    def objective(self, net, model, *, device, world, rank, autocast):
        config, data, path, posterior = self.config, self.data, self.path, self.target == "posterior"
        draw = self.source_flow

        def loss(step: int, generator: torch.Generator) -> torch.Tensor:
            size = batch_size_at(config, step)
            n = size * world
            x1, condition = data.batch(n, generator)
            x0 = draw.draw_source(n, generator)
            t = sample_times(config, n, generator)
            condition = drop(condition, self.conditions, config.cond_dropout, generator)
            reference = x1.to(device) if posterior else None  # the posterior averages over the global batch, the same on every process
            shard = slice(rank * size, (rank + 1) * size)
            x0, x1, t = x0[shard].to(device), x1[shard].to(device), t[shard].to(device=device, dtype=x1.dtype)
            given = {k: v[shard].to(device) for k, v in condition.items()}

            def network(x, s):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
                    return net(x, s, **given).float()

            if reference is not None:
                sample = path.sample(x0, x1, t)
                with torch.no_grad():
                    goal = path.posterior_velocity(sample, reference, draw.source).to(x1.dtype)
                pred = network(sample.x_t, sample.t)
                if pred.shape != goal.shape:
                    raise FlowmatchError(f"the model returned shape {tuple(pred.shape)} for points of shape {tuple(sample.x_t.shape)}")
                value = (pred - goal).pow(2).sum(dim=1).mean()
            else:
                value = riemannian_loss(network, path, x0, x1, t)
            return value

        return loss

    def progress_picture(self, flow: RiemannianFlow, folder: Path, step: int) -> None:
        from flowmatch.evaluation.manifolds import manifold_picture

        manifold_picture(flow, folder / f"step-{step:08d}.png", data=self.data, n=1000, seed=0)


class Manifolds(Modality):
    kind = KIND
    label = "a manifold run"
    options = frozenset({"manifold", "units", "columns"})
    unsupported: dict[str, str] = {}
    models = ("tangent-mlp", "python")
    rectify = "reflow and distillation train on (source, sample) pairs of continuous rows; a manifold run's pairs would need geodesic straightness"
    sample_options = frozenset({"solver", "nfe", "label", "condition", "guidance", "precision"})
    eval_options = frozenset(
        {"quick", "sets", "n", "solver", "nfe", "n_likelihood", "likelihood_solver", "likelihood_nfe", "divergence", "probes", "seed",
         "pictures", "progress", "reference", "train"}
    )  # fmt: skip
    pictures = ("samples",)
    picture_options = frozenset({"n", "seed", "progress"})
    suffixes = (".npy", ".csv")

    def check(self, config: Any) -> None:
        if config.source not in ("uniform", "gaussian", *MANIFOLD_SETS) and wrapped_gaussian_scale(config.source) is None:
            raise FlowmatchError(
                f"kind manifold starts from source='uniform', 'wrapped-gaussian' (or 'wrapped-gaussian:SCALE'), a built-in set on "
                f"the same manifold ({', '.join(MANIFOLD_SETS)}) or 'gaussian' with manifold='euclidean', not '{config.source}'"
            )

    def prepare(self, config: Any, objects: Objects, context: Context) -> ManifoldTask:
        return ManifoldTask(config, objects, context)

    def load_flow(self, meta, weights, config, where, *, model=None, source=None, folder=None) -> RiemannianFlow:
        if source is not None:
            raise FlowmatchError(f"'{folder}' holds a manifold run, whose source is named in its config: load it without source=")
        return build_manifold_flow(meta, weights, config, where, model=model)

    def finish(self, result, folder: Path | None, *, evaluate: bool, reference: Any, n_eval: int) -> dict[str, Any]:
        """The quick report's headline figures (geodesic W2 and MMD^2 beside their floors, the NLL), the
        memorisation figures of a file's run with their warning, samples.npy and samples.png."""
        from flowmatch.evaluation.manifolds import evaluate_manifold, headline

        flow, config, data = result.flow, result.config, result.task.data
        if reference is not None:
            raise FlowmatchError("reference= scores points and images; a manifold run is scored against its own held-out points")
        metrics: dict[str, Any] = {
            "data": config.data,
            "manifold": flow.manifold.to_config(),
            "data_manifold": flow.data_manifold.to_config(),
        }
        report = evaluate_manifold(flow, data=data, quick=True, seed=config.seed) if evaluate else None
        if report is not None:
            metrics.update(headline(report))
            memo = report.get("memorisation")
            if memo is not None and data.finite:
                metrics["memorisation"] = {**memo, "warning": memorisation_warning(memo)}
            metrics["report"] = report
        if folder is not None:
            if report is not None:
                from flowmatch.storage import write_json

                write_json(folder / "report.json", report)
            write_samples_files(flow, data, folder, seed=config.seed)
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        parts = []
        if "w2" in metrics:
            parts.append(f"geodesic W2 {metrics['w2']:.4f} (floor {metrics['w2_floor']:.4f})")
        if "nll" in metrics:
            nll = f"NLL {metrics['nll']:.3f} nats"
            if "entropy_reference" in metrics:
                nll += f" (entropy {metrics['entropy_reference']:.3f})"
            parts.append(nll)
        on = metrics.get("on_manifold")
        if on and on["projected"]:
            parts.append(f"mean distance off the manifold {on['mean_distance']:.3g} (projected)")
        return ", ".join(parts)

    # -- a loaded flow ------------------------------------------------------------------------------
    def write_samples(self, flow: RiemannianFlow, out: Path, *, n: int, seed: int, options: dict[str, Any]) -> str:
        """.npy (canonical ambient coordinates) or .csv (the data file's terms, with a header)."""
        from flowmatch.data.manifolds import points_to_columns

        solver = options.get("solver") or RiemannianFlow.DEFAULT_SAMPLER[0]
        if solver not in MANIFOLD_SOLVERS:
            raise FlowmatchError(
                f"solver={solver}: a manifold run integrates with {', '.join(MANIFOLD_SOLVERS)} (fixed steps through the exponential map)"
            )
        nfe: int = options["nfe"] if options.get("nfe") is not None else RiemannianFlow.DEFAULT_SAMPLER[1]
        labels, rows = options.get("label") or [None], list(options.get("condition") or [None])
        guided = {k: options[k] for k in ("guidance", "precision") if k in options}
        x = torch.cat(
            [
                flow.generate(n, solver=solver, nfe=nfe, seed=seed, label=label, condition=row, **guided).cpu()
                for label in labels
                for row in rows
            ]
        )
        n = len(x)
        where = f"on {flow.manifold.label}"
        if out.suffix == ".npy":
            with atomic_file(out) as tmp:
                np.save(tmp, x.numpy())
        else:
            units = flow.config.get("units", "auto")
            if flow.manifold.name == "torus" and units == "auto":
                units = "radians"
            names, values = points_to_columns(
                x, flow.manifold, units=None if units == "auto" else units, columns=flow.config.get("columns") or None
            )
            with atomic_file(out) as tmp:
                np.savetxt(tmp, values, delimiter=",", fmt="%.10g", header=",".join(names), comments="")
            unit = f" in {units if units != 'auto' else 'degrees'}" if flow.manifold.name in ("sphere", "torus") else ""
            where += f" ({', '.join(names)}{unit})"
        if flow.manifold != flow.data_manifold:
            off = flow.on_data_manifold(x)[1]
            where += (
                f"; the Euclidean comparison's points as generated, mean distance {float(off.mean()):.3g} off {flow.data_manifold.label}"
            )
        return f"{n} points {where}, solver {solver}, NFE {nfe} (exactly {nfe} velocity evaluations)"

    def evaluate(self, flow: RiemannianFlow, run_dir: Any, options: dict[str, Any]) -> dict[str, Any]:
        from flowmatch.evaluation.manifolds import evaluate_manifold, reference_data

        options = dict(options)
        options.pop("progress", None)
        reference, train = options.pop("reference", None), options.pop("train", None)
        data = reference_data(flow, reference, train, options.get("seed", 0)) if reference is not None else None
        divergence = options.pop("divergence", "auto")
        probes = options.pop("probes", 1)
        if divergence not in ("auto", "exact", "hutchinson"):
            raise FlowmatchError(f"divergence must be auto, exact or hutchinson, got {divergence!r}")
        if divergence == "hutchinson" and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
            raise FlowmatchError(f"probes must be a positive integer, got {probes!r}")
        return evaluate_manifold(flow, run_dir, data=data, probes=probes if divergence == "hutchinson" else 0, **options)

    def format_report(self, report: dict[str, Any]) -> str:
        from flowmatch.evaluation.manifolds import format_run_report

        return format_run_report(report)

    def picture(self, flow: RiemannianFlow, what: str, out: Path, options: dict[str, Any]) -> Path:
        from flowmatch.evaluation.manifolds import manifold_picture

        n = options.get("n", 2000)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise FlowmatchError(f"n must be at least 2, got {n}")
        return manifold_picture(flow, out, n=n, seed=options.get("seed", 0))


MODALITY = Manifolds()


def memorisation_warning(memo: dict[str, Any]) -> str:
    """One line when the generated points copy training points (``flagged``), '' otherwise."""
    if not memo.get("flagged"):
        return ""
    share, own = memo["copy_share"]["median"], memo["copy_share"]["heldout"]
    return (
        f"warning: {share:.0%} of generated points are nearer to a training point than 95% of unseen points are "
        f"(held-out points' own share: {own:.0%}): the model copies its training data; try select=val-loss or fewer steps"
    )


def write_samples_files(flow: RiemannianFlow, data: ManifoldRunData, folder: Path, *, seed: int = 0) -> Path:
    """samples.npy (SAMPLES generated points, at most a file's test split's size; rk4 at NFE 100; canonical
    ambient coordinates, the Euclidean comparison's as generated in R^D) and samples.png (on the data's
    manifold beside as many held-out points)."""
    from flowmatch.evaluation.manifolds import manifold_picture

    n = SAMPLES if data.test is None else min(SAMPLES, len(data.test))
    x = flow.generate(n, seed=seed + 1)  # the flow's own sampler
    with atomic_file(folder / "samples.npy") as tmp:
        np.save(tmp, x.cpu().numpy())
    manifold_picture(flow, folder / "samples.png", data=data, seed=seed, samples=x)
    return folder / "samples.npy"

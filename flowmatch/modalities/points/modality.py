"""Points and arrays (images too) through the engine's seam (:mod:`flowmatch.engine.seam`).

A step (:class:`~flowmatch.modalities.points.objective.Objective`): a batch of pairs (x0, x1) (independent
draws of the source and the data, re-paired by a coupling, or a teacher's fixed pairs) and times t, and the
conditional flow matching loss

    L(theta) = E_{t, (x0, x1)} w(t) || v_theta(x_t, t) - u_t(x0, x1) ||^2,
    x_t = alpha_t x1 + sigma_t x0,   u_t = alpha'_t x1 + sigma'_t x0   (see ``flowmatch.paths``),

whose minimiser (for w = 1) is the marginal velocity field that carries the source at t = 0 to the data at
t = 1; for independent pairs from a Gaussian or Gaussian-mixture source the target is by default its
posterior mean over the batch's data points (the same minimiser, far less variance); or distillation onto a
teacher's pairs, or MeanFlow. The data are a built-in set (fresh draws), a file or rows given in Python
(split, standardised, a validation split held out), or a stream of batches (a torch Dataset, a DataLoader or
any iterable). The run's flow is a :class:`flowmatch.flows.continuous.Flow`.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmatch.data.sources import declared_mixture
from flowmatch.engine.options import resolve_target
from flowmatch.engine.seam import Context, Modality, Objects, Task
from flowmatch.errors import FlowmatchError
from flowmatch.flows.continuous import CPU_BATCH_SIZE, PRECISIONS, Flow, build_flow, on_flat_rows
from flowmatch.modalities.points.inputs import TrainingData, resolve_path, resolve_source, training_data
from flowmatch.modalities.points.objective import Objective, non_finite_message
from flowmatch.modalities.points.options import KIND
from flowmatch.modalities.points.pairs import PairSampler
from flowmatch.modalities.points.validation import ValidationSet
from flowmatch.storage import atomic_file

#: precision auto's probe batch is drawn with a generator seeded seed + this (not the run's own generator).
PROBE_SEED = 7_919


class PointsTask(Task):
    def __init__(self, config: Any, objects: Objects, context: Context):
        self.config, self.objects = config, objects
        inputs = training_data(
            config, objects, world=context.world, rank=context.rank, start_step=context.start_step,
            stream_state=context.stream_state, min_test_rows=context.min_test_rows, resumed_flow=context.resumed_flow,
            device=context.device,
        )  # fmt: skip
        self.inputs = inputs
        self.data = inputs.dataset  # None for a stream
        self.source = resolve_source(config, objects, inputs.dim)
        self.pairs = PairSampler(
            config, inputs.source_of_batches, self.source, inputs.conditions, inputs.standardizer if inputs.stream is not None else None
        )
        self.path = resolve_path(config, objects)
        self.shaped = partial(on_flat_rows, shape=inputs.shape)  # the model on flat rows, in the data's own row shape
        dataset = inputs.dataset
        if dataset is not None and dataset.val is not None and config.objective == "flow-matching":
            self.validation = ValidationSet(config, dataset, self.path, self.source, context.device, wrap=self.shaped).loss
        self.stream = inputs.stream
        self.n_train = inputs.n_train
        self.finite = dataset is not None and dataset.n_train is not None
        self.positions = _positions(inputs.shape)
        # the posterior's source density: a named mixture's, or the one a source given in Python declares
        self.source_mixture = None if self.source is None else declared_mixture(self.source, inputs.dim)
        self.target = _target(config, inputs, undeclared=config.source == "python" and self.source_mixture is None)
        if self.target == "posterior" and self.source is not None and self.source_mixture is None:
            raise FlowmatchError(f"target posterior: source '{config.source}' has no isotropic Gaussian-mixture density here")

    def initial_model(self) -> torch.nn.Module:
        if self.objects.model is not None:
            return self.objects.model
        return initial_model(self.config, self.inputs)

    def warm_start(self, flow: Flow, folder: str) -> torch.nn.Module:
        if flow.dim != self.inputs.dim:
            raise FlowmatchError(f"init_from '{folder}' has dimension {flow.dim}, data has {self.inputs.dim}")
        return flow.model.train()

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse, before training, a model that cannot take the data: a MeanFlow model without ``r``, and one
        call on two rows of a training-like batch (in eval mode, without gradients, the model left as it was) whose
        answer must be a floating tensor of the rows' own shape; any failure names the model and what it did."""
        if self.config.objective == "meanflow":
            _require_two_times(model)
        x_t, t, given = self._probe_batch(torch.Generator().manual_seed(self.config.seed + PROBE_SEED), rows=2)
        shape = (2, *(self.inputs.shape or (self.inputs.dim,)))
        x_in = x_t.reshape(shape)
        parameter = next(model.parameters(), None)
        if parameter is not None:
            x_in, t = x_in.to(parameter.device), t.to(parameter.device)
            given = {k: v.to(parameter.device) for k, v in given.items()}
        name = type(model).__name__
        called = "model(x of shape {}, t of shape (2,){})".format(tuple(shape), "".join(f", {k}=" for k in given))
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                out = model(x_in, t, **given)
        except FlowmatchError:
            raise
        except Exception as exc:  # the user's model: any failure is reported as theirs
            raise FlowmatchError(f"the model ({name}) fails on a batch of the data, {called}: {type(exc).__name__}: {exc}") from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise FlowmatchError(f"the model ({name}) must return a tensor of velocities; {called} returned a {type(out).__name__}")
        if not out.is_floating_point():
            raise FlowmatchError(f"the model ({name}) must return floating-point velocities; {called} returned {out.dtype}")
        if tuple(out.shape) != shape:
            raise FlowmatchError(
                f"the model ({name}) must return velocities of the rows' shape {shape}; {called} returned {tuple(out.shape)}"
            )

    def flow(self, model: torch.nn.Module) -> Flow:
        inputs = self.inputs
        return Flow(
            model=model, path=self.path, standardizer=inputs.standardizer, dataset=inputs.dataset, source=self.source,
            config=self.config.to_dict(), shape=inputs.shape, conditions=inputs.conditions,
        )  # fmt: skip

    def speed_probe(self, model: torch.nn.Module, device: torch.device):
        """The model on a batch like a training batch: the stream's first (not consumed) or ``batch_size`` rows
        drawn from the data set with a generator of its own, at stratified times, with the batch's conditions
        (and r = t for a MeanFlow model); the loss is the mean square of the output."""

        x_t, t, given = self._probe_batch(torch.Generator().manual_seed(self.config.seed + PROBE_SEED))
        x_t, t, given = x_t.to(device), t.to(device), {k: v.to(device) for k, v in given.items()}
        net = self.shaped(model)
        return lambda: net(x_t, t, **given).float().square().mean()

    def _probe_batch(self, generator: torch.Generator, rows: int | None = None):
        """(x_t flat, t, conditions) of a batch like a training batch (``rows`` of it; None: all), on the CPU."""
        from flowmatch.losses import sample_times

        config = self.config
        if self.stream is not None:
            x, condition = self.stream.peek()
            x1 = self.inputs.standardizer.forward(x.reshape(len(x), -1).to(torch.float32))
        else:
            x1, y, c = self.inputs.dataset.draw(config.batch_size, generator)  # type: ignore[union-attr]
            condition = {"y": y} if y is not None and config.conditional else {}
            if c is not None:
                condition["c"] = c
        x1 = x1.to(torch.float32)
        if rows is not None:
            x1, condition = x1[:rows], {k: v[:rows] for k, v in condition.items()}
        t = sample_times(len(x1), generator, strata=config.time_strata)
        x_t = (1 - t)[:, None] * torch.randn(x1.shape, generator=generator) + t[:, None] * x1
        given = dict(condition)
        if config.objective == "meanflow":
            given["r"] = t
        return x_t, t, given

    def objective(self, net, model, *, device, world, rank, autocast):
        config, inputs = self.config, self.inputs
        self.step_loss = Objective(
            config, self.pairs, self.path, self.shaped(net), device=device, world=world, rank=rank, streamed=self.stream is not None,
            posterior=self.target == "posterior", source_mixture=self.source_mixture,
            null_class=inputs.conditions.get("y", {}).get("classes", 0), autocast=autocast,
            target_net=self.shaped(model) if config.objective == "meanflow" else None,  # MeanFlow's jvp: not through DDP
        )  # fmt: skip
        return self.step_loss

    def non_finite_message(self, value: float, step: int) -> str:
        return non_finite_message(value, step, self.step_loss.last_condition)

    def keep(self, folder: Path) -> None:
        if self.config.source == "python":  # rows of a source given in Python are kept with the run
            from flowmatch.data.sources import save_source_rows

            save_source_rows(self.source, folder)

    def progress_picture(self, flow: Flow, folder: Path, step: int) -> None:
        if self.inputs.dataset is None or not len(self.inputs.dataset.test):
            return
        from flowmatch.plots.figures import plot_samples

        test = self.inputs.dataset.test[:1000]
        samples = flow.sample(len(test), solver="rk4", nfe=40, seed=0)
        plot_samples(samples, test, folder / f"step-{step:08d}.png", title=f"step {step}")


def _positions(shape) -> int:
    from flowmatch.engine.threads import positions_of

    return positions_of(shape)


def _target(config: Any, inputs: TrainingData, undeclared: bool = False) -> str:
    """:func:`resolve_target`, and the conditional target where conditions other than class labels
    (which the posterior cannot average over) or a stream's labels come with the data, or where the source
    given in Python declares no Gaussian mixture (``undeclared``; :mod:`flowmatch.data.sources`)."""
    target = resolve_target(config, inputs.n_train)
    if target == "posterior" and undeclared:
        if config.target == "posterior":
            raise FlowmatchError(
                "target posterior needs the source's density, and the source given in Python declares none: give the "
                "callable (or the object) a gaussian_mixture attribute, a flowmatch.densities.GaussianMixture of the law "
                "it draws from, or train with target conditional"
            )
        return "conditional"
    if target == "posterior" and (set(inputs.conditions) - {"y"} or (inputs.stream is not None and inputs.conditions)):
        if config.target == "posterior":
            raise FlowmatchError(
                f"target posterior averages over class labels only; these data carry conditions {', '.join(inputs.conditions)}"
            )
        return "conditional"
    return target


def initial_model(config: Any, inputs: TrainingData) -> torch.nn.Module:
    """The config's model for these data."""
    from flowmatch.models.registry import build_model

    dim, dataset = inputs.dim, inputs.dataset
    classes = inputs.conditions.get("y", {}).get("classes", 0)
    covariates = inputs.conditions.get("c", {}).get("dim", 0)
    times = {"times": 2} if config.objective == "meanflow" else {}  # MeanFlow's u(x, r, t)
    if config.model == "unet":
        if dataset is None or dataset.image_shape is None:
            raise FlowmatchError(f"model=unet needs image data; '{config.data}' is not a set of images")
        return build_model(
            "unet",
            dim,
            image_shape=list(dataset.image_shape),
            channels=config.channels,
            channel_mult=[int(m) for m in config.channel_mult.split(",")],
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=[min(dataset.image_shape[1:]) // 2 ** (len(config.channel_mult.split(",")) - 1)]
            if config.attention
            else [],
            dropout=config.dropout,
            num_classes=classes,
            **times,
        )
    if config.model == "seed-mlp":
        if classes or covariates:
            raise FlowmatchError("the seed-mlp model takes no conditions; use model=mlp for conditional training")
        if times:
            raise FlowmatchError("the seed-mlp model takes one time; objective meanflow needs model=mlp or unet")
        return build_model("seed-mlp", dim, width=config.width)
    options = {"condition_dim": covariates, **times} if covariates else times
    return build_model(
        "mlp", dim, width=config.width, depth=config.depth, activation=config.activation, num_classes=classes, dropout=config.dropout,
        **options,
    )  # fmt: skip


def _require_two_times(model) -> None:
    """MeanFlow calls the model as ``model(x, t, r=r)``: refuse one that cannot take r before training."""
    import inspect

    config = getattr(model, "config", None)  # flowmatch's models record times=2 (a one-time model omits it)
    if type(model).__module__.startswith("flowmatch.") and isinstance(config, dict) and config.get("times", 1) != 2:
        raise FlowmatchError(f"objective meanflow needs a two-time model u(x, r, t): build the {type(model).__name__} with times=2")
    try:
        parameters = inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters
    except (TypeError, ValueError):  # no signature to read: the first call says
        return
    if "r" not in parameters and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise FlowmatchError(f"objective meanflow calls the model as model(x, t, r=r); {type(model).__name__}.forward takes no argument r")


class Points(Modality):
    kind = KIND
    label = "a continuous run"
    options = frozenset(
        {
            "path", "sigma_min", "bridge_sigma", "coupling", "ot_reg", "pairs", "distill_nfe", "meanflow_equal_share",
            "meanflow_power", "meanflow_guidance", "meanflow_guidance_mix", "loss_weight", "channels", "channel_mult",
            "num_res_blocks", "attention", "standardize", "workers", "shuffle_rows", "mmap", "test_fraction",
        }
    )  # fmt: skip
    unsupported = {
        "scheduler": "the scheduler is the kappa_t of discrete and geodesic paths; points choose their affine path with path",
        "scheduler_exponent": "the scheduler is the kappa_t of discrete and geodesic paths; points choose their affine path with path",
    }
    objectives = ("flow-matching", "distill", "meanflow")
    models = ("mlp", "seed-mlp", "unet", "python")
    rectify = None
    sample_options = frozenset(
        {"solver", "nfe", "grid", "atol", "rtol", "schedule", "label", "condition", "guidance", "noise", "precision", "trajectory"}
    )
    eval_options = frozenset(
        {
            "quick", "n", "n_likelihood", "solver", "nfe", "likelihood_solver", "likelihood_nfe", "atol", "rtol", "divergence",
            "probes", "seed", "pictures", "progress", "reference", "train",
        }
    )  # fmt: skip
    pictures = ("samples", "density", "trajectories", "field", "animation", "nfe")
    picture_options = frozenset({"n", "seed", "progress"})
    suffixes = (".npy", ".csv")

    #: Options of one objective: set for another, they are refused
    objective_options = {
        "meanflow": ("meanflow_equal_share", "meanflow_power", "meanflow_guidance", "meanflow_guidance_mix"),
        "distill": ("distill_nfe",),
    }

    def check(self, config: Any) -> None:
        from flowmatch.modalities.points.options import PointOptions

        defaults = PointOptions()
        for objective, names in self.objective_options.items():
            for name in names:
                if config.objective != objective and getattr(config, name) != getattr(defaults, name):
                    raise FlowmatchError(f"{name}={getattr(config, name)!r} applies to objective {objective}, not {config.objective}")

    def prepare(self, config: Any, objects: Objects, context: Context) -> PointsTask:
        return PointsTask(config, objects, context)

    def load_flow(self, meta, weights, config, where, *, model=None, source=None, folder=None) -> Flow:
        return build_flow(meta, weights, config, where, model=model, source=source, folder=folder)

    # -- a finished run ---------------------------------------------------------------------------
    def finish(self, result, folder: Path | None, *, evaluate: bool, reference: Any, n_eval: int) -> dict[str, Any]:
        """The shape score (``shape``: :func:`~flowmatch.evaluation.report.shape_report`, three sample sets),
        exact W2 of ``n_eval`` samples against held-out points beside its floor, samples.png, the quick
        evaluation (report.json) and the memorisation figures of finite data."""
        from flowmatch.plots.figures import plot_samples

        flow, config = result.flow, result.config
        if reference is None and flow._dataset is None:  # streamed data: nothing held out to measure against
            return {"w2": None, "note": "no held-out data: pass reference= to measure the samples"}
        if reference is None and not flow.dataset.builtin and not len(flow.dataset.test):  # test_fraction 0
            return {"w2": None, "note": "test_fraction 0: every row trained; pass reference= to measure the samples"}
        test = flow.dataset.test if reference is None else _reference_points(reference, flow.dim, config.seed)
        samples, held, metrics = _measure(flow, config, test, n_eval)
        report = None
        if folder is not None and evaluate:
            from flowmatch.evaluation.report import evaluate as quick_evaluation

            report = quick_evaluation(flow, folder, quick=True, seed=config.seed, reference=reference)
        if report is not None:
            memo = report.get("memorisation")
        elif reference is None:  # the same figures the quick evaluation reports (same samples), for a run without it
            from flowmatch.evaluation.report import memorisation_report

            memo = memorisation_report(flow, quick=True, seed=config.seed)
        else:
            memo = None
        if memo is not None:
            metrics["memorisation"] = memo
        if report is not None:
            metrics["report"] = report
            metrics["shape"] = report["quality"]["shape"]
        else:  # the headline a wrong shape cannot pass (the quick evaluation's, where it ran)
            from flowmatch.evaluation.report import SHAPE_POINTS, SHAPE_SETS, shape_report

            metrics["shape"] = shape_report(
                flow, n=min(n_eval, SHAPE_POINTS["quick"]), sets=SHAPE_SETS["quick"], seed=config.seed, reference=reference
            )
        if folder is not None:  # the picture's title leads with the shape score, the mixture's W2 beside it
            name = "data from Python" if config.data == "python" else config.data
            shape = metrics["shape"]
            title = f"{name}: shape {shape['ratio']:.2f}x floor; W2 {metrics['w2']:.3f} (floor {metrics['w2_floor']:.3f})"
            image_shape = getattr(flow.dataset, "image_shape", None) if reference is None else None
            if image_shape is not None:  # images are looked at, not scattered by their first two pixels
                from flowmatch.plots.images import save_image_grid

                save_image_grid(
                    samples[:64], tuple(image_shape), folder / "samples.png", nrow=8, title=title,
                    value_range=flow.dataset.image_value_range,
                )  # fmt: skip
            else:
                plot_samples(samples, held, folder / "samples.png", title=title)
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        if metrics.get("w2") is None:
            return metrics.get("note") or "no held-out data to measure against"
        line = f"W2 {metrics['w2']:.4f} (floor {metrics['w2_floor']:.4f}, ratio {metrics['w2_ratio']:.2f})"
        if metrics.get("shape"):
            from flowmatch.evaluation.report import format_shape

            line = f"{format_shape(metrics['shape'])}; {line}"
        return line

    def report_line(self, report: dict[str, Any]) -> str:
        from flowmatch.evaluation.report import summary_line

        return summary_line(report)

    # -- a loaded flow ------------------------------------------------------------------------------
    def write_samples(self, flow: Flow, out: Path, *, n: int, seed: int, options: dict[str, Any]) -> str:
        """``options``: solver, nfe, grid, atol, rtol, schedule, guidance, noise, precision as
        :meth:`Flow.generate` takes them; ``label`` (a list: n samples of each) and ``condition`` (rows: n
        samples of each); ``trajectory`` (the whole path, .npy)."""
        options = dict(options)
        trajectory = options.pop("trajectory", False)
        labels = options.pop("label", None) or [None]
        rows = list(options.pop("condition", None) or [None])
        if options.get("precision", "fp32") not in PRECISIONS:
            raise FlowmatchError(f"unknown precision {options['precision']!r}; choose from {', '.join(PRECISIONS)}")
        if trajectory and out.suffix != ".npy":
            raise FlowmatchError("trajectory=True needs a .npy output")
        combos = [(label, row) for label in labels for row in rows]
        if trajectory:  # (steps + 1, n, D): drawn whole (Flow.generate checks that it fits in memory)
            parts = []
            for label, row in combos:
                result = flow.generate(n, seed=seed, return_trajectory=True, label=label, condition=row, **options)
                assert result.trajectory is not None
                parts.append(result.trajectory.numpy())
            array = np.concatenate(parts, axis=1)
            write_array(out, array)
            shape, nfe = array.shape, result.nfe
        else:
            shape, nfe = (n * len(combos), flow.dim), _stream_samples(flow, n, seed, out, combos, options)
        which = f", labels {','.join(map(str, labels))} ({n} each, in that order)" if labels != [None] else ""
        which += f", {len(rows)} condition rows ({n} each, in that order)" if rows != [None] else ""
        noise = options.get("noise", 0.0)
        sampler = (
            f"the SDE (Euler-Maruyama, noise {noise:g})"
            if noise
            else f"solver {flow.resolve_sampler(options.get('solver'), options.get('nfe'))[0]}"
        )
        return f"shape {shape}{which}, {sampler}, NFE {nfe}"

    def evaluate(self, flow: Flow, run_dir: Any, options: dict[str, Any]) -> dict[str, Any]:
        from flowmatch.evaluation.report import evaluate

        return evaluate(flow, run_dir, **options)

    def format_report(self, report: dict[str, Any]) -> str:
        from flowmatch.evaluation.report import format_report

        return format_report(report)

    def picture(self, flow: Flow, what: str, out: Path, options: dict[str, Any]) -> Path:
        from flowmatch.evaluation.report import picture

        return picture(flow, what, out, **options)


MODALITY = Points()


#: Memory one block of streamed samples may take (its state and the solver's stages), at most.
STREAM_BYTES = 256 << 20


def _stream_samples(flow: Flow, n: int, seed: int, out: Path, combos: list, options: dict[str, Any]) -> int:
    """Write ``n`` samples for each (label, condition row) in ``combos`` to ``out`` in blocks of rows, so
    that memory stays bounded however large ``n`` is (the file is checked against the free disk first).

    Each combination's noise comes from one generator seeded with ``seed``; blocks are multiples of 16 rows,
    so that the N(0, I) draws equal one draw of all ``n`` rows (torch draws normals in groups of 16): the file
    is the same as one :meth:`Flow.generate` call's, however it is cut. Returns the NFE used."""
    from flowmatch.memory import available_bytes
    from flowmatch.solvers.tableaus import TABLEAUS
    from flowmatch.storage import atomic_rows, require_disk

    solver, nfe = flow.resolve_sampler(options.get("solver"), options.get("nfe"))
    total = n * len(combos)
    require_disk(out, 128 + 4 * total * flow.dim if out.suffix == ".npy" else 2 * total * flow.dim)
    per_row = 4 * flow.dim * ((TABLEAUS[solver].stages if solver in TABLEAUS else 7) + 3)
    budget = min(STREAM_BYTES, (available_bytes() or STREAM_BYTES) // 4)
    block = max(16, budget // per_row // 16 * 16)
    used = nfe
    with atomic_rows(out, (total, flow.dim)) as write:
        for label, row in combos:
            if n <= block:  # one call, exactly as Flow.generate(n, seed=...) draws it
                result = flow.generate(n, seed=seed, label=label, condition=row, **options)
                write(result.x.numpy())
                used = result.nfe
                continue
            generator = torch.Generator().manual_seed(seed)
            for index, start in enumerate(range(0, n, block)):
                rows = min(block, n - start)
                x0 = flow.draw_source(rows, generator)
                result = flow.generate(rows, x0=x0, seed=seed + 1 + index, label=label, condition=row, **options)
                write(result.x.numpy())
                used = result.nfe
    return used


def write_array(path: Path, array: np.ndarray) -> None:
    """Write .npy or .csv atomically."""
    with atomic_file(path) as tmp:
        if path.suffix == ".npy":
            np.save(tmp, array)
        else:
            np.savetxt(tmp, array, delimiter=",", fmt="%.8g")


def _measure(flow: Flow, config: Any, test: torch.Tensor, n_eval: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(samples, held-out points, metrics): exact W2 of min(n_eval, N/2) samples against as many held-out
    points, and its floor against the next as many."""
    from flowmatch.evaluation.metrics import w2_exact

    m = min(n_eval, len(test) // 2)
    held_a, held_b = test[:m], test[m : 2 * m]
    solver, nfe = flow.resolve_sampler()  # rk4 at NFE 100; a student's own Euler NFE; MeanFlow's one jump
    samples = flow.sample(m, solver=solver, nfe=nfe, seed=config.seed + 1)
    w2, floor = w2_exact(samples, held_a), w2_exact(held_b, held_a)
    metrics = {
        "w2": w2,
        "w2_floor": floor,
        "w2_ratio": w2 / floor if floor > 0 else math.nan,
        "n_eval": m,
        "sampler": {"solver": solver, "nfe": nfe},
    }
    return samples, held_a, metrics


def _reference_points(reference: Any, dim: int, seed: int) -> torch.Tensor:
    """The user's held-out points, checked and shuffled with ``seed`` (their given order never sets a split)."""
    from flowmatch.data.dataset import shuffled_rows
    from flowmatch.evaluation.report import points_of

    points = points_of(reference, dim, "reference")
    if len(points) < 4:
        raise FlowmatchError(f"reference must hold at least 4 points, got {len(points)}")
    return shuffled_rows(points, seed)


def rows_for_threads(n: int | None) -> int:
    """The rows of one network call when sampling ``n`` (at most :data:`CPU_BATCH_SIZE`)."""
    return min(n if n else CPU_BATCH_SIZE, CPU_BATCH_SIZE)

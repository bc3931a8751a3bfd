"""A trained flow: a velocity model with the path it was trained on and the map between data
coordinates and the model's (standardised) coordinates.

:class:`Flow` samples by integrating dx/dt = v(x, t) forward from the source at t = 0 (N(0, I) by
default) to t = 1 and mapping back to data coordinates; it guides conditional models, runs under
another schedule or time grid, and scores points (``log_prob``). Rows are flat (n, D) for the
solvers and the metrics; a model that takes rows in another shape gets them reshaped
(:attr:`Flow.shape`). Saving and loading are :mod:`flowmatch.runs`'.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowmatch import conditions as conditions_module
from flowmatch.data.dataset import Dataset, load_dataset
from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath
from flowmatch.solvers.grids import time_grid
from flowmatch.solvers.integration import integrate, require_finite

#: Precisions the sampler's network can run in (the state and the solver stay float32); ``auto`` is the one the
#: run trained in, as its config records it (:func:`flowmatch.saving.recorded_precision`).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")


#: Rows per network call when sampling on the CPU with ``batch_size=None``: a chunk's hidden
#: activations (2048 x 256 floats = 2 MiB for the default MLP) stay in cache, where the whole
#: batch's (100,000 rows: 100 MiB per layer) would stream through memory on every layer.
CPU_BATCH_SIZE = 2048


#: One untouched allocation of this size before row-chunked CPU sampling (see :func:`_recycle_freed_memory`).
_MALLOC_WARM_BYTES = 16 << 20


@dataclass
class Samples:
    """Generated samples in data coordinates, with the solver's record of how they were made."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None  # (len(times), n, D) in data coordinates
    log_prob: torch.Tensor | None = None  # (n,) float64 log-density of each sample in data coordinates


class Flow:
    """A trained velocity field with its path and data coordinates; samples and scores data (the flow of
    kind ``continuous``: points, arrays and images).

    Training and :func:`flowmatch.load` build one; by hand, a model of one's own makes one too::

        flow = Flow(model, "linear", dim=2)                                   # from N(0, I)
        flow = Flow(model, "linear", source=lambda n, g: 0.5 * torch.randn(n, 2, generator=g))  # fn(n, generator)
        flow = Flow(model, make_path("cosine"), source=rows)                  # rows (N, D): x0 drawn from them
        x = flow.sample(1000, solver="rk4", nfe=40)

    ``model(x, t)`` takes rows (n, D) and times (a 0-d tensor or (n,)) and returns velocities (n, D). ``path``
    is a path name (:data:`flowmatch.paths.affine.PATHS`) or an :class:`~flowmatch.paths.affine.AffinePath`.
    ``standardizer`` maps data to the model's coordinates (default: the identity, the data's own); ``dim`` is
    the data's dimension, needed only when neither a standardizer nor a source gives it (a callable source is
    asked for two rows to find it). ``config`` is a run's
    config.json (for a hand-made flow: only what sampling reads).
    """

    kind = "continuous"

    #: The sampler unless told: rk4 at NFE 100 (a distilled student and a MeanFlow model have their own: :meth:`resolve_sampler`).
    DEFAULT_SAMPLER = ("rk4", 100)

    def __init__(
        self,
        model: torch.nn.Module,
        path: AffinePath | str = "linear",
        standardizer: Standardizer | None = None,
        config: dict[str, Any] | None = None,
        dataset: Dataset | None = None,
        source: Any = None,
        shape: tuple[int, ...] | None = None,
        conditions: dict[str, dict[str, int]] | None = None,
        *,
        dim: int | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise FlowmatchError(f"Flow needs a torch.nn.Module as its model, got {type(model).__name__}")
        if isinstance(path, str):
            from flowmatch.paths.affine import make_path

            path = make_path(path)
        elif not isinstance(path, AffinePath):
            raise FlowmatchError(f"path must be a path name or an AffinePath, got {type(path).__name__}")
        if standardizer is None:
            standardizer = Standardizer.identity(_hand_made_dim(dim, source))
        if source is not None:
            from flowmatch.data.sources import as_source

            source = as_source(source, standardizer.dim)  # a callable fn(n, generator) or rows: an object with sample()
        self.model = model
        self.path = path
        self.standardizer = standardizer
        hand_made: dict[str, Any] = {"data": "python", "source": "python" if source is not None else "gaussian", "seed": 0}
        self.config = config if config is not None else hand_made
        self._dataset = dataset
        self._source = source
        #: one row's shape as the model takes it (None: flat rows (D,)); solvers and metrics see flat rows
        self.shape = None if shape is None else tuple(int(k) for k in shape)
        #: the conditions the model takes, by name: {"classes": K} for labels, {"dim": k} for float vectors
        self.conditions = dict(conditions) if conditions is not None else conditions_module.conditions_of(model)
        if config is None and self.shape is None and not self.conditions:  # made by hand: the model is tried once
            _check_hand_made_model(model, self.dim)

    @property
    def dim(self) -> int:
        return int(self.standardizer.mean.numel())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def positions(self) -> int:
        """Positions a network call applies its weights at per row: an image's H x W (flat rows: 1)."""
        return math.prod(self.shape[1:]) if self.shape is not None and len(self.shape) >= 2 else 1

    @property
    def source(self) -> Any:
        """The source distribution at t = 0: None for N(0, I), else an object with ``sample(n, generator)``
        (a data set named by ``--source``, rows or a sampler given in Python)."""
        if self._source is not None:
            return self._source
        spec = self.config.get("source", "gaussian")
        if spec == "gaussian":
            return None
        if spec == "python":
            raise FlowmatchError("this flow's source was given in Python and not saved with it; pass Flow(..., source=) or x0=")
        self._source = load_dataset(spec, seed=self.config["seed"] + 1)
        return self._source

    def draw_source(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x0 in model coordinates: N(0, I), or the source's points."""
        if self.source is None:
            return torch.randn(n, self.dim, generator=generator)
        return self.source.sample(n, generator if generator is not None else torch.Generator().manual_seed(0))

    @property
    def dataset(self) -> Dataset:
        """The training data set (rebuilt from the config on first use after loading)."""
        if self._dataset is None:
            self._dataset = dataset_from_config(self.config)
        return self._dataset

    @property
    def num_classes(self) -> int:
        """Classes the model was trained to condition on (0: no class labels)."""
        return int(self.conditions.get("y", {}).get("classes", 0))

    def labels_for(self, n: int, label) -> torch.Tensor | None:
        """Per-sample class labels (n,) from one class, a sequence of n classes, or None."""
        return conditions_module.labels_for(self.conditions, n, label, self.device)

    def condition_for(self, n: int, label=None, condition=None) -> dict[str, torch.Tensor] | None:
        """The model's condition arguments for n samples (:func:`flowmatch.conditions.condition_for`): class
        labels (``label``: one class or n) and ``condition``, a tensor for the float condition ``c`` or a
        mapping of named conditions, each with one row (shared by all samples) or n rows. None: unconditional."""
        return conditions_module.condition_for(self.conditions, n, label, condition, self.device)

    def null_condition(self, condition: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The same conditions dropped, as training dropped them: the null class for labels, NaN rows for floats."""
        return conditions_module.null_condition(self.conditions, condition)

    def velocity(
        self, condition=None, guidance: float = 1.0, *, grad: bool = False
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """v(x, t) in model coordinates, as the solvers call it: ``x`` flat rows (n, D), ``t`` a number, a 0-d
        tensor or one time per row.

        ``condition``: the model's conditions (see :meth:`condition_for`; a tensor alone is class labels).
        With classifier-free guidance weight w: v = v_null + w (v_cond - v_null), where v_null drops the
        conditions (:meth:`null_condition`); w = 1 is the plain conditional model (one evaluation),
        otherwise both halves go through the model as one batch.

        By default the velocity is evaluated without autograd, so that its outputs hold no graph of the
        model's parameters and it can go to any solver as it is, torchdiffeq's included (which calls
        ``f(t, x)``; the model coordinates are :attr:`standardizer`'s)::

            v = flow.velocity()
            x1 = torchdiffeq.odeint(lambda t, x: v(x, t), flow.draw_source(1000), torch.linspace(0, 1, 3), method="rk4")[-1]
            samples = flow.standardizer.inverse(x1)   # = flow.sample(1000, solver="rk38", nfe=8) from the same x0

        ``grad=True`` evaluates in the caller's autograd mode instead (gradients through the flow, divergences).
        """
        if not isinstance(grad, bool):
            raise FlowmatchError(f"grad must be True or False, got {grad!r}")
        if isinstance(condition, torch.Tensor):
            condition = {"y": condition}
        field = self._velocity_of(self.call_model(self.model), condition, guidance)
        if grad:
            return field

        def without_graph(x: torch.Tensor, t, **times) -> torch.Tensor:
            with torch.no_grad():
                return field(x, t, **times)

        return without_graph

    def call_model(self, model: Callable) -> Callable:
        """``model`` as the solvers call it, on flat rows (:func:`on_flat_rows` with :attr:`shape`)."""
        return on_flat_rows(model, self.shape)

    def _velocity_of(self, model: Callable, condition: dict[str, torch.Tensor] | None, guidance: float) -> Callable:
        if not condition:
            return model
        if guidance == 1.0:
            return lambda x, t, **times: model(x, t, **times, **condition)
        null = self.null_condition(condition)
        both = {k: torch.cat([v, null[k]]) for k, v in condition.items()}

        def guided(x: torch.Tensor, t: torch.Tensor, **times) -> torch.Tensor:  # times: a two-time model's r
            v_cond, v_uncond = model(torch.cat([x, x]), t, **times, **both).chunk(2)
            return v_uncond + guidance * (v_cond - v_uncond)

        return guided

    def resolve_sampler(self, solver: str | None = None, nfe: int | None = None) -> tuple[str, int]:
        """The (solver, NFE) to sample with: what is given, the rest from the flow's own default.

        The default is rk4 at NFE 100; for a distilled student (config ``objective`` distill) the
        Euler NFE it was trained for; for a MeanFlow model (``objective`` meanflow) one jump of its
        average velocity (``solver="meanflow"``, :func:`~flowmatch.solvers.mean_flow_sample`). An NFE
        left out with another solver is 100.
        """
        objective = str(self.config.get("objective", "flow-matching"))
        default = {"distill": ("euler", int(self.config.get("distill_nfe", 1))), "meanflow": ("meanflow", 1)}.get(
            objective, self.DEFAULT_SAMPLER
        )
        solver = default[0] if solver is None else solver
        if nfe is None:
            nfe = default[1] if solver == default[0] else self.DEFAULT_SAMPLER[1]
        return solver, nfe

    def generate(
        self,
        n: int,
        *,
        solver: str | None = None,
        nfe: int | None = None,
        grid: str = "uniform",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        seed: int | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        with_log_prob: bool = False,
        divergence: str = "auto",
        label=None,
        condition=None,
        guidance: float = 1.0,
        precision: str = "fp32",
        batch_size: int | None = None,
        x0: torch.Tensor | None = None,
        grad: bool = False,
        schedule=None,
        noise: float = 0.0,
    ) -> Samples:
        """Integrate n noise samples from t = 0 to t = 1; the result is in data coordinates.

        ``x0`` gives the starting points yourself, shape (n, D) in model coordinates (for the N(0, I)
        source: the noise), for example to push the same noise through several models; by default
        n are drawn from the source with ``seed``.

        ``solver`` and ``nfe`` default to :meth:`resolve_sampler`'s choice (rk4 at NFE 100; a distilled
        student's own Euler NFE; a MeanFlow model's one jump). ``solver="meanflow"`` samples a two-time
        model u(x, r, t) (objective meanflow) in ``nfe`` jumps x_{k+1} = x_k + (t_{k+1} - t_k)
        u(x_k, t_k, t_{k+1}) on ``grid`` (:func:`~flowmatch.solvers.mean_flow_sample`); every ODE
        solver and the likelihood use such a model's instantaneous velocity u(x, t, t).

        ``with_log_prob=True`` also integrates d/dt log p = -div v along each path (see
        ``flowmatch.likelihood``) and fills ``Samples.log_prob`` with each sample's log-density in data
        coordinates (``divergence``: auto, exact or hutchinson).

        ``label`` (one class or n classes) and ``condition`` (rows of the float condition ``c``, or a
        mapping of named conditions; one row or n) sample a conditional model, with classifier-free
        ``guidance`` weight w (see :meth:`velocity`).

        ``precision="bf16"`` runs the network under ``torch.autocast(bfloat16)`` on the flow's device
        (its matrix products in bfloat16, elementwise work such as the time embedding in float32)
        and casts each velocity back to float32: the state and the solver's sums stay float32.
        It cannot be combined with ``with_log_prob`` (the divergence integral needs float32).
        ``precision="auto"`` samples in the precision the run trained in, as its config records it (a run's
        ``auto`` as decided when it started: :func:`flowmatch.saving.recorded_precision`); the default is fp32.

        ``batch_size`` is the number of rows per network call (the solver still steps the whole
        batch at once, so results equal one big call up to float rounding); None means
        :data:`CPU_BATCH_SIZE` on the CPU, where cache-sized calls are faster, and the whole batch
        on other devices. It does not apply with ``with_log_prob``.

        ``schedule`` (a path name, an AffinePath or a Schedule) samples under another schedule than the
        one trained on, with the velocity rewritten for it (:func:`flowmatch.paths.transform_schedule`);
        ``grid`` ("uniform", "cosine", "shift:K" or explicit times) places the solver's steps.

        ``grad=True`` keeps the result in the autograd graph of ``x0`` and of the model's parameters
        (backpropagation through every solver step; with ``with_log_prob``, through the divergence
        too): for a loss on the samples, or d x1 / d x0. Without it the solve records no graph.

        Samples are finite: a draw in which any sample comes out NaN or infinite (a diverged model, or a
        solver that overflows) raises :class:`~flowmatch.errors.FlowmatchError` naming how many, and
        returns nothing.

        ``noise > 0`` samples the SDE with the ODE's marginals instead (:mod:`flowmatch.solvers.sde`:
        Euler-Maruyama with diffusion g_t^2 = noise sigma_t, ``nfe`` steps on the uniform grid; the
        N(0, I) source and a Gaussian path); ``noise = 0`` is the ODE.
        """
        if precision == "auto":
            from flowmatch.saving import recorded_precision

            precision = recorded_precision(self.config)
        n = _check_sampling(n, guidance, precision, with_log_prob, batch_size, grad, seed)
        if noise:
            self._check_sde(noise, solver, grid, schedule, with_log_prob)
            solver = "euler"
        solver, nfe = self.resolve_sampler(solver, nfe)
        _check_memory(n, self.dim, solver, nfe, return_trajectory, with_log_prob, self.device)
        with torch.set_grad_enabled(grad):  # no graph unless asked for
            if self.device.type == "cpu":
                batch_size = batch_size or CPU_BATCH_SIZE
                _recycle_freed_memory()
            if grad:  # one call for the whole batch: the chunks' shared output buffer is for inference
                batch_size = None
            conditions = self.condition_for(n, label, condition)
            if with_log_prob:
                velocity = self.velocity(conditions, float(guidance), grad=True)  # the divergence differentiates it
            else:
                velocity = self._velocity_of(_in_row_chunks(self.call_model(self.model), batch_size), conditions, float(guidance))
            if schedule is not None:
                from flowmatch.paths.transform import transform_schedule

                velocity = transform_schedule(velocity, self.path.schedule, schedule)
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            x0 = self._start(n, x0, generator)
            if with_log_prob:
                from flowmatch.likelihood import sample_with_log_prob

                self._require_gaussian_source()
                solution = sample_with_log_prob(
                    velocity, x0, solver=solver, nfe=nfe, grid=grid, atol=atol, rtol=rtol, divergence=divergence,
                    generator=generator, return_trajectory=return_trajectory, progress=progress, grad=grad,
                )  # fmt: skip
            elif solver == "meanflow":
                solution = self._mean_flow(velocity, x0, nfe, grid, schedule, precision, return_trajectory)
            elif noise:
                from flowmatch.solvers.sde import sde_sample

                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    solution = sde_sample(  # type: ignore[assignment]
                        velocity, x0, self.path, nfe=nfe, noise=noise, generator=generator, return_trajectory=return_trajectory
                    )
            else:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    solution = integrate(  # type: ignore[assignment]  # a Solution: x, nfe, times, trajectory
                        velocity,
                        x0,
                        solver=solver,
                        nfe=nfe,
                        grid=grid,
                        atol=atol,
                        rtol=rtol,
                        return_trajectory=return_trajectory,
                        progress=progress,
                    )
            require_finite(solution.x, solver, solution.nfe)
            trajectory = None
            if solution.trajectory is not None:
                trajectory = self.standardizer.inverse(solution.trajectory.cpu())
            return Samples(
                x=self.standardizer.inverse(solution.x.cpu()),
                nfe=solution.nfe,
                times=solution.times,
                trajectory=trajectory,
                log_prob=solution.log_prob + self.standardizer.log_abs_det() if with_log_prob else None,
            )

    def _mean_flow(self, velocity, x0, nfe, grid, schedule, precision, return_trajectory):
        """``nfe`` jumps of the average velocity on ``grid``; ``velocity`` calls the model with r by keyword."""
        from flowmatch.solvers.meanflow import mean_flow_sample

        times = self.config.get("objective") == "meanflow" or getattr(self.model, "config", {}).get("times") == 2
        if not times:
            raise FlowmatchError("solver meanflow needs a two-time model u(x, r, t) (objective meanflow); this flow has v(x, t)")
        if schedule is not None:
            raise FlowmatchError("solver meanflow jumps with the average velocity of the trained schedule: --schedule does not apply")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return mean_flow_sample(velocity, x0, times=time_grid(grid, nfe, 0.0, 1.0), return_trajectory=return_trajectory)

    def _check_sde(self, noise, solver, grid, schedule, with_log_prob) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise FlowmatchError(f"noise must be a finite number >= 0, got {noise!r}")
        if solver not in (None, "euler"):
            raise FlowmatchError(f"the stochastic sampler (noise > 0) is Euler-Maruyama; solver {solver} is an ODE solver")
        if grid != "uniform" or schedule is not None or with_log_prob:
            raise FlowmatchError("the stochastic sampler (noise > 0) takes the uniform grid, the trained schedule and no log-density")
        self._require_gaussian_source()
        if self.path.bridge_sigma > 0:
            raise FlowmatchError("the stochastic sampler needs a Gaussian path; this flow's path has bridge noise")

    def _start(self, n: int, x0: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """The starting points: ``x0`` as given (checked), or n draws of the source; in the model's dtype."""
        if x0 is None:
            x0 = self.draw_source(n, generator)
        elif not isinstance(x0, torch.Tensor) or x0.shape != (n, self.dim) or not x0.is_floating_point():
            shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise FlowmatchError(f"x0 must be a float tensor of shape ({n}, {self.dim}), got {shape}")
        elif not torch.isfinite(x0).all():
            raise FlowmatchError("x0 has non-finite values")
        return x0.to(self.device, next((p.dtype for p in self.model.parameters()), torch.float32))  # the model's precision

    def sample(self, n: int, **options) -> torch.Tensor:
        """n samples in data coordinates, shape (n, D); options as for :meth:`generate` (any other is refused)."""
        from flowmatch.flows.options import check_sample_options

        check_sample_options(self.generate, options, type(self).__name__)
        return self.generate(n, **options).x

    def _require_gaussian_source(self) -> None:
        if self.config.get("source", "gaussian") != "gaussian":
            raise FlowmatchError(
                f"log-densities need the N(0, I) source; this flow starts from '{self.config['source']}', whose density is unknown"
            )

    def log_prob(
        self,
        x,
        *,
        solver: str = "dopri5",
        nfe: int = 100,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        divergence: str = "auto",
        probes: int = 1,
        seed: int = 0,
        batch_size: int = 4096,
        progress: bool = False,
        grad: bool = False,
    ) -> torch.Tensor:
        """log p(x) of the model at points x (n, D) in data coordinates: float64, shape (n,).

        ``grad=True`` keeps it in the autograd graph of x and of the model's parameters (see
        :func:`flowmatch.likelihood.log_prob`).

        log p_x(x) = log p_z(z) + log |dz/dx|, z = (x - mean) / std the model coordinates, where
        log p_z(z) = log N(z(0); 0, I) - int_0^1 div v dt comes from integrating back to t = 0
        (``flowmatch.likelihood.flow_log_prob``, whose options these are) and log |dz/dx| = -sum(log std).
        """
        from flowmatch.likelihood import flow_log_prob

        return flow_log_prob(
            self, x, solver=solver, nfe=nfe, atol=atol, rtol=rtol, divergence=divergence,
            probes=probes, seed=seed, batch_size=batch_size, progress=progress, grad=grad,
        ).log_prob  # fmt: skip

    def to(self, device) -> Flow:
        self.model.to(device)
        return self

    # -- saving and loading -------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        """What rebuilds this flow without its weights (:func:`flow_meta`)."""
        return flow_meta(self)

    def keep(self, folder: str | os.PathLike) -> None:
        """The rows of a source given in Python, kept beside the weights (a sampler's are named by reference)."""
        if self.config.get("source") == "python" and self._source is not None:
            from flowmatch.data.sources import save_source_rows

            save_source_rows(self._source, Path(folder))

    def save_checkpoint(self, folder: str | os.PathLike) -> None:
        """Weights and metadata into ``folder`` (:func:`flowmatch.engine.runs.save_flow`)."""
        from flowmatch.saving import save_flow

        save_flow(self, folder)


def _check_hand_made_model(model: torch.nn.Module, dim: int) -> None:
    """One call of a hand-made flow's model on two rows, so that a model that does not fit the data fails here,
    with its shapes named, rather than inside a solver."""
    parameter = next(model.parameters(), None)
    device, dtype = (parameter.device, parameter.dtype) if parameter is not None else (torch.device("cpu"), torch.float32)
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, dim, device=device, dtype=dtype), torch.full((2,), 0.5, device=device, dtype=dtype))
    except Exception as exc:  # the user's model: any failure is reported as theirs
        raise FlowmatchError(f"the model fails on rows of {dim} values (model(x of shape (2, {dim}), t of shape (2,))): {exc}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FlowmatchError(f"the model must return velocities of the rows' shape (2, {dim}), got {got}")


def _hand_made_dim(dim: Any, source: Any) -> int:
    """The data's dimension of a hand-made :class:`Flow`: ``dim``, or the width of the source's rows."""
    if dim is None and source is not None:
        if hasattr(source, "sample") and hasattr(source, "dim"):  # a source object
            dim = source.dim
        elif callable(source):  # asked for two rows, with a generator of its own
            drawn = source(2, torch.Generator().manual_seed(0))
            dim = int(math.prod(drawn.shape[1:])) if isinstance(drawn, torch.Tensor) and drawn.ndim >= 2 else None
        else:  # rows (N, D)
            shape = getattr(source, "shape", None)
            dim = int(math.prod(shape[1:])) if shape is not None and len(shape) >= 2 else None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FlowmatchError(f"a Flow without a standardizer needs dim=, the data's dimension (a positive integer), got {dim!r}")
    return dim


def on_flat_rows(model: Callable, shape: tuple[int, ...] | None) -> Callable:
    """``model`` called on flat rows (n, D): each row reshaped to ``shape`` on the way in and flattened on the
    way out (``model`` itself for ``shape`` None)."""
    if shape is None:
        return model
    return lambda x, t, **c: model(x.reshape(x.shape[0], *shape), t, **c).reshape(x.shape[0], -1)


def _check_memory(n: int, dim: int, solver: str, nfe, trajectory: bool, log_prob: bool, device: torch.device) -> None:
    """Refuse a draw whose arrays cannot fit in memory, before allocating them: the state and a solver's
    stages (about ``stages + 3`` copies of n x D floats; dopri5 10; the divergence integral 4 more), and a
    trajectory's ``steps + 1`` states (twice: model and data coordinates)."""
    from flowmatch.memory import require_memory
    from flowmatch.solvers.tableaus import TABLEAUS

    stages = TABLEAUS[solver].stages if solver in TABLEAUS else 7
    steps = nfe // stages if solver in TABLEAUS and isinstance(nfe, int) and nfe > 0 else 1
    state = 4 * n * dim
    need = state * (stages + 3 + (4 if log_prob else 0)) + (2 * state * (steps + 1) if trajectory else 0)
    what = f"sampling {n} points of dimension {dim} ({solver}" + (f", a trajectory of {steps + 1} states)" if trajectory else ")")
    require_memory(need, what, "ask for fewer points (flowmatch sample writes a large -n to its file in chunks)", device)


def _check_sampling(n, guidance, precision, with_log_prob, batch_size, grad, seed=None) -> int:
    """:meth:`Flow.generate`'s arguments, each refused with a message naming it; returns ``n`` as an int."""
    from flowmatch.flows.options import sample_count

    n = sample_count(n)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise FlowmatchError(f"seed must be a non-negative integer or None, got {type(seed).__name__} {seed!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise FlowmatchError(f"guidance must be a finite number, got {guidance!r}")
    if precision not in PRECISIONS:
        raise FlowmatchError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "fp32" and with_log_prob:
        raise FlowmatchError(f"log-densities need float32: sample with precision='fp32' to get with_log_prob (got {precision!r})")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise FlowmatchError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if not isinstance(grad, bool):
        raise FlowmatchError(f"grad must be True or False, got {grad!r}")
    return n


def _recycle_freed_memory() -> None:
    """Make glibc's malloc keep the MiB-sized blocks that row-chunked sampling frees and reallocates.

    glibc serves blocks above its mmap threshold (128 KiB at start) with fresh pages from the OS and
    returns free heap above its trim threshold to the OS, so a chunk's activations (2 MiB each for the
    default MLP) can come back as new pages, and page faults, on every network call (a quarter of the
    sampling time: bench/results/design-figures.md). Freeing an mmap'd block
    raises the mmap threshold to its size and the trim threshold to twice that (mallopt(3), "dynamic
    mmap threshold"); this one allocation, freed at once and never written, does that. Other
    allocators are unaffected.
    """
    torch.empty(_MALLOC_WARM_BYTES, dtype=torch.uint8)


def _in_row_chunks(model: Callable, rows: int | None) -> Callable:
    """model(x, t, **condition) evaluated ``rows`` rows at a time (all at once for None), returned in x's dtype.

    Per-row arguments (conditions, a (batch,) tensor of times) are split with x; the pieces are
    written into one output, so under autocast the velocity comes back as float32.
    """

    def call(x: torch.Tensor, t, **extra) -> torch.Tensor:
        n = x.shape[0]
        if rows is None or n <= rows:
            return model(x, t, **extra).to(x.dtype)
        per_row_t = isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n
        out = None
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            rowwise = {k: e[part] if isinstance(e, torch.Tensor) and e.dim() > 0 and e.shape[0] == n else e for k, e in extra.items()}
            v = model(x[part], t[part] if per_row_t else t, **rowwise)
            if out is None:
                out = x.new_empty((n, *v.shape[1:]))
            out[part] = v
        assert out is not None
        return out

    return call


# -- run folders -----------------------------------------------------------------------------------
_TRI_STATE = {"auto": None, "yes": True, "no": False}


def dataset_from_config(config: dict[str, Any], min_test_rows: int = 0) -> Dataset:
    """The training data set a run's config names (its data, seed, standardisation, labels, mmap),
    with its validation rows held out (``val_fraction``; 0 for runs saved before it existed); finite data
    must hold out at least ``min_test_rows`` test rows (:meth:`Dataset.require_test_rows`)."""
    if config["data"] == "python":
        raise FlowmatchError(
            "this run was trained on data given in Python, which its folder does not hold: pass reference= (held-out points) to evaluate it"
        )
    dataset = load_dataset(
        config["data"],
        seed=config["seed"],
        standardize=_TRI_STATE[config.get("standardize", "auto")],
        label_column=config.get("label_column") or None,
        mmap=_TRI_STATE[config.get("mmap", "auto")],
        condition_columns=config.get("condition_columns") or None,
        test_fraction=config.get("test_fraction", 0.2),
    ).require_test_rows(min_test_rows)
    if config.get("pairs"):  # reflow and distillation train on a teacher's pairs: nothing to validate against
        return dataset
    return dataset.hold_out_validation(float(config.get("val_fraction", 0.0)), int(config["seed"]))


def standardize_option(value: str) -> bool | None:
    """The config's ``standardize`` (auto, yes, no) as :func:`~flowmatch.data.dataset.load_dataset` takes it."""
    return _TRI_STATE[value]


def flow_meta(flow: Flow) -> dict[str, Any]:
    """checkpoint.json: what rebuilds the flow around its weights, as JSON.

    The model's :func:`~flowmatch.models.registry.to_config` (a built-in's options, or an importable
    factory and its arguments; a model that has neither is named by its class, and loading it needs
    ``model=``), the path (:func:`~flowmatch.paths.specs.path_to_config`: a path that cannot be named
    raises here, before anything is written), the standardiser, one row's shape, the conditions, and a
    source given in Python.
    """
    from flowmatch.models.registry import model_record
    from flowmatch.paths.specs import path_to_config
    from flowmatch.saving import FORMAT_VERSION

    model = model_record(flow.model)
    meta = {
        "format": "flowmatch-checkpoint",
        "version": FORMAT_VERSION,
        "kind": flow.kind,
        "dim": flow.dim,
        "model": model,
        "path": path_to_config(flow.path),
        "standardizer": flow.standardizer.to_dict(),
    }
    if flow.shape is not None:
        meta["shape"] = list(flow.shape)
    if flow.conditions != conditions_module.conditions_of(flow.model):
        meta["conditions"] = flow.conditions
    if flow.config.get("source") == "python" and flow._source is not None:
        from flowmatch.data.sources import source_to_config

        meta["source"] = source_to_config(flow._source)
    return meta


def build_flow(
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    where,
    *,
    model: torch.nn.Module | None = None,
    source: Any = None,
    folder: Path | None = None,
) -> Flow:
    """A Flow from checkpoint metadata (see :func:`flow_meta`) and its weights, in ``model`` if given."""
    from flowmatch.models.registry import check_rebuildable
    from flowmatch.paths.specs import path_from_config
    from flowmatch.saving import build_model_for, check_format, load_weights, meta_file

    check_format(meta, where)
    try:
        spec = dict(meta["model"])
        if model is not None and not isinstance(model, torch.nn.Module):
            raise FlowmatchError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
        check_rebuildable(spec, model, where)
        standardizer = Standardizer.from_dict(meta["standardizer"])
        _check_dims(meta, standardizer, meta_file(where))
        model = model if model is not None else build_model_for(spec, meta["dim"], state, where)
        path = path_from_config(meta["path"])
        if source is None and config.get("source") == "python" and "source" in meta:
            from flowmatch.data.sources import source_from_config

            source = source_from_config(meta["source"], folder if folder is not None else Path(where).parent)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FlowmatchError):
            raise
        raise FlowmatchError(f"{meta_file(where)}: malformed checkpoint metadata ({exc!r})") from None
    return Flow(
        model=load_weights(model, state, where), path=path, standardizer=standardizer, config=config, source=source,
        shape=meta.get("shape"), conditions=meta.get("conditions"),
    )  # fmt: skip


def _check_dims(meta: dict[str, Any], standardizer: Standardizer, where) -> None:
    """checkpoint.json agrees with itself: its ``dim`` is a positive integer, the standardiser has that many
    columns and a row ``shape`` holds that many values (the weights are checked against ``dim`` on loading)."""
    dim = meta["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FlowmatchError(f"{where}: checkpoint metadata's dim must be a positive integer, got {dim!r}")
    if standardizer.dim != dim:
        raise FlowmatchError(f"{where}: checkpoint metadata's standardizer has {standardizer.dim} columns but its dim is {dim}")
    shape = meta.get("shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in shape)
        or math.prod(shape) != dim
    ):
        raise FlowmatchError(f"{where}: checkpoint metadata's row shape {shape!r} does not hold dim = {dim} values")

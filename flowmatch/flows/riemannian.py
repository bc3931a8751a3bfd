"""Riemannian flow matching: the loss, and a flow that samples and scores.

**Model.** A velocity tangent to the manifold, v(x, t) (:mod:`flowmatch.models.tangent`: a network on the
manifold's features of a point whose output becomes a tangent vector there).

**Loss.** With the geodesic path x_t = exp_{x0}(kappa_t log_{x0}(x1)) and its velocity u_t
(:class:`flowmatch.manifolds.GeodesicPath`), the Riemannian conditional flow matching loss is

    L = E_{t, x0, x1} |v_theta(x_t, t) - u_t|^2_{g(x_t)},

and for these manifolds the metric g is the ambient Euclidean inner product of tangent vectors, so the
norm is the plain norm of the (n, ambient_dim) rows. Its minimiser over fields is the marginal
velocity, whose flow carries the source distribution to the data (Chen & Lipman 2024).

**Flow.** :class:`RiemannianFlow` holds a model, a manifold and a path: ``loss`` for training,
``generate`` to integrate from the source (uniform by default) with :func:`integrate_manifold`, and
``log_prob`` for the density w.r.t. the Riemannian volume by :func:`manifold_log_prob`. A flow loaded
from a run folder also carries the run's ``config``; the Euclidean comparison (a flow on R^D from the
standard normal source, ``source="gaussian"``, trained on a manifold's ambient coordinates) names the
manifold its data live on as ``data_manifold``.

**Saving.** :meth:`RiemannianFlow.checkpoint_meta` is what rebuilds the flow around its weights
(:func:`build_manifold_flow`): the manifold, the data's manifold, the model's config (the tangent-mlp is
registered by name in :mod:`flowmatch.models.registry`), the path's scheduler and the source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flowmatch import conditions as conditions_module
from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.likelihood import manifold_log_prob
from flowmatch.manifolds.losses import riemannian_loss
from flowmatch.manifolds.manifolds import Manifold, manifold_from_config
from flowmatch.manifolds.paths import GeodesicPath
from flowmatch.manifolds.solvers import integrate_manifold
from flowmatch.solvers.integration import require_finite

Source = torch.Tensor | Callable[[int, torch.Generator | None], torch.Tensor] | None


#: The sources a :class:`RiemannianFlow` draws from by name: the manifold's uniform law, or N(0, I) in R^D;
#: besides these, a wrapped Gaussian (:data:`WRAPPED_GAUSSIAN`) and a built-in set on the same manifold
#: (:data:`flowmatch.data.manifolds.MANIFOLD_SETS`).
FLOW_SOURCES = ("uniform", "gaussian")


#: The wrapped Gaussian source, spelled ``wrapped-gaussian`` (scale :data:`WRAPPED_GAUSSIAN_SCALE`) or
#: ``wrapped-gaussian:SCALE`` (as ``--grid shift:K``): exp_o(N(0, SCALE^2 I) in T_o M) around the manifold's
#: origin o (:func:`manifold_origin`), :class:`flowmatch.data.manifolds.WrappedNormal`.
WRAPPED_GAUSSIAN = "wrapped-gaussian"


WRAPPED_GAUSSIAN_SCALE = 1.0


#: The largest scale the wrapped Gaussian source takes (on the torus a scale of 10 is within 1e-80 of uniform).
WRAPPED_GAUSSIAN_MAX_SCALE = 10.0


def wrapped_gaussian_scale(name: str) -> float | None:
    """The scale of a source spelled ``wrapped-gaussian[:SCALE]``, None for any other name; a scale that is
    not a number in (0, 10] is one :class:`FlowmatchError`."""
    if not isinstance(name, str) or name.split(":", 1)[0] != WRAPPED_GAUSSIAN:
        return None
    if name == WRAPPED_GAUSSIAN:
        return WRAPPED_GAUSSIAN_SCALE
    text = name.split(":", 1)[1]
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not 0 < scale <= WRAPPED_GAUSSIAN_MAX_SCALE:
        raise FlowmatchError(
            f"source {name!r}: the scale after '{WRAPPED_GAUSSIAN}:' must be a number in (0, {WRAPPED_GAUSSIAN_MAX_SCALE:g}], got {text!r}"
        )
    return scale


def manifold_origin(manifold: Manifold) -> torch.Tensor:
    """The point a wrapped Gaussian source is centred on (float64): the north pole (0, ..., 0, 1) of a
    sphere (latitude 90 degrees on S^2), the angles 0 on a torus, the identity (1, 0, 0, 0) on SO(3), 0 in R^d."""
    origin = torch.zeros(manifold.ambient_dim, dtype=torch.float64)
    if manifold.name == "sphere":
        origin[-1] = 1.0
    elif manifold.name == "so3":
        origin[0] = 1.0
    return origin


def source_law(name: str, manifold: Manifold):
    """The law of the source ``name`` on ``manifold``: a wrapped Gaussian (:func:`wrapped_gaussian_scale`),
    or a built-in set on the same manifold and dimension."""
    from flowmatch.data.manifolds import MANIFOLD_SETS, WrappedNormal, manifold_set

    scale = wrapped_gaussian_scale(name)
    if scale is not None:
        return WrappedNormal(name, manifold, manifold_origin(manifold), scale)
    if name not in MANIFOLD_SETS:
        raise FlowmatchError(
            f"source {name!r}: choose one of {', '.join(FLOW_SOURCES)}, {WRAPPED_GAUSSIAN}[:SCALE] or a built-in set: "
            f"{', '.join(MANIFOLD_SETS)}"
        )
    law = manifold_set(name)
    if law.manifold.to_config() != manifold.to_config():
        raise FlowmatchError(f"source {name!r} lies on {law.manifold.label}, not on {manifold.label}, where this flow's data lie")
    return law


class RiemannianFlow:
    """A velocity model on a manifold with its geodesic path: train with :meth:`loss`, sample with
    :meth:`generate`, score with :meth:`log_prob` (the flow of kind ``manifold``).

    ``source`` names the distribution at t = 0: ``"uniform"`` (the manifold's uniform law, density
    1 / volume), ``"wrapped-gaussian"`` or ``"wrapped-gaussian:SCALE"`` (exp_o(N(0, SCALE^2 I)) around the
    manifold's origin, with its exact density: :func:`source_law`), a built-in set on the same manifold
    (e.g. ``"S2-vmf"`` for a flow from one law on the sphere to another, with that set's density) or ``"gaussian"`` (N(0, I), on R^D only: the Euclidean comparison, whose
    ``data_manifold`` is the manifold its training points lie on). ``config`` is the run's config
    (a dict) when the flow comes from a run folder. The model's first parameter fixes the device and
    dtype of generated points (CPU float32 without parameters).
    """

    kind = "manifold"

    #: The sampler a manifold run's samples, pictures and reports use unless told: rk4 at NFE 100 (25 steps).
    DEFAULT_SAMPLER = ("rk4", 100)

    def __init__(
        self,
        model: Callable,
        manifold: Manifold,
        path: GeodesicPath | None = None,
        *,
        source: str = "uniform",
        data_manifold: Manifold | None = None,
        config: dict | None = None,
        conditions: dict[str, dict[str, int]] | None = None,
    ):
        if not isinstance(manifold, Manifold):
            raise FlowmatchError(f"a RiemannianFlow needs a Manifold, got {type(manifold).__name__}")
        self._law = None if source in FLOW_SOURCES else source_law(source, manifold)
        if source == "gaussian" and manifold.name != "euclidean":
            raise FlowmatchError(
                f"the gaussian source is N(0, I) on R^D (the Euclidean comparison); a flow on {manifold.label} starts from 'uniform'"
            )
        if data_manifold is not None and not isinstance(data_manifold, Manifold):
            raise FlowmatchError(f"data_manifold must be a Manifold, got {type(data_manifold).__name__}")
        self.model = model
        self.manifold = manifold
        self.path = path if path is not None else GeodesicPath(manifold)
        self.source = source
        self.data_manifold = data_manifold if data_manifold is not None else manifold
        self.config = dict(config or {})
        #: the conditions the model takes, by name: {"classes": K} for labels, {"dim": k} for float vectors
        self.conditions = dict(conditions) if conditions is not None else conditions_module.conditions_of(model)

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        params = list(self.model.parameters()) if isinstance(self.model, nn.Module) else []
        if params:
            return params[0].device, params[0].dtype
        return torch.device("cpu"), torch.float32

    def _source(self, n: int, generator: torch.Generator | None, source: Source) -> torch.Tensor:
        device, dtype = self._placement()
        if source is None and self.source == "gaussian":
            x0 = torch.randn(n, self.manifold.ambient_dim, generator=generator, dtype=dtype)
        elif source is None and self._law is not None:
            x0 = self._law.sample(n, generator, dtype=dtype)
        elif source is None:
            x0 = self.manifold.random_uniform(n, generator, dtype=dtype)
        elif callable(source):
            x0 = source(n, generator)
        else:
            x0 = source
        x0 = self.manifold.check(x0, "source points").to(device=device, dtype=dtype)
        if x0.shape[0] != n:
            raise FlowmatchError(f"the source gave {x0.shape[0]} points for {n} samples")
        return x0

    def draw_source(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points of the flow's source, drawn with ``generator``, on the model's device and dtype."""
        return self._source(n, generator, None)

    def on_data_manifold(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated points as points of ``data_manifold`` (canonical), and each one's distance from it before.

        For a flow on its data's manifold the points are already there (the distance is their rounding
        error: | |x| - 1 | on spheres and quaternions, 0 otherwise). The Euclidean comparison's points
        in R^D are projected with ``data_manifold.projx``: normalised on spheres and quaternions (distance
        | |x| - 1 |, the Euclidean distance to the manifold), wrapped on the torus (distance: how far the
        angles lie outside the chart [-pi, pi]^d, where the straight-line flow cannot wrap).
        """
        target = self.data_manifold
        x = x.detach()
        if target.name == "torus":
            off = torch.linalg.vector_norm(x - x.clamp(-math.pi, math.pi), dim=1)
        elif target.name in ("sphere", "so3"):
            off = (torch.linalg.vector_norm(x, dim=1) - 1).abs()
        else:
            off = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return target.canonical(target.projx(x)), off

    def source_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log-density of the flow's source at x (n,): -log volume (uniform), -|x|^2 / 2 - (D / 2) log(2 pi)
        (gaussian), or the law's own (a wrapped Gaussian, a built-in set)."""
        if self.source == "gaussian":
            return -0.5 * x.pow(2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        if self._law is not None:
            if not self._law.has_log_prob:
                raise FlowmatchError(f"the source {self.source!r} has no known density: log-densities need one")
            return self._law.log_prob(x).to(x.dtype)
        return self.manifold.uniform_log_prob(x)

    def loss(self, x1: torch.Tensor, generator: torch.Generator | None = None, source: Source = None) -> torch.Tensor:
        """The Riemannian flow matching loss on a batch of data points x1, with x0 from the source
        (independent coupling) and t ~ U[0, 1), both drawn with ``generator`` (None: torch's global generator)."""
        x1 = self.manifold.check(x1, "data points")
        x0 = self._source(x1.shape[0], generator, source).to(device=x1.device, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=generator, dtype=x1.dtype).to(x1.device)
        return riemannian_loss(self.model, self.path, x0, x1, t)

    def velocity(self, condition: dict[str, torch.Tensor] | None = None, guidance: float = 1.0, precision: str = "fp32") -> Callable:
        """v(x, t) as the solvers call it: the model under ``condition`` (:func:`flowmatch.conditions.condition_for`)
        and classifier-free ``guidance`` weight w, v_null + w (v_cond - v_null) (a tangent vector: both are
        tangent at x), with the network in bfloat16 for ``precision="bf16"`` (the geometry in float32)."""
        model = self.model

        def call(x, t, **extra):
            device = x.device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return model(x, t, **extra).to(x.dtype)

        def combine(out, w):
            cond, null = out.chunk(2)
            return null + w * (cond - null)

        return conditions_module.guided(call, self.conditions, condition, float(guidance), combine)

    def generate(
        self, n: int, solver: str | None = None, nfe: int | None = None, seed: int = 0, source: Source = None, *, label=None,
        condition=None, guidance: float = 1.0, precision: str = "fp32",
    ) -> torch.Tensor:  # fmt: skip
        """n samples at t = 1 in canonical form, integrated from source points at t = 0 with exactly
        ``nfe`` velocity evaluations of ``solver`` (default :attr:`DEFAULT_SAMPLER`: rk4 at NFE 100).

        ``source`` is None (the flow's own), a tensor of n points, or ``f(n, generator)`` returning n points;
        randomness comes from a generator seeded with ``seed``. ``label`` (one class or n) and ``condition``
        (rows of the float condition ``c``: one or n) sample a conditional model, with classifier-free
        ``guidance`` weight w (:meth:`velocity`). Samples are finite: a draw in which any comes out NaN or
        infinite raises :class:`~flowmatch.errors.FlowmatchError` naming how many. ``precision`` "bf16" runs the
        network under bfloat16 autocast, "auto" in the precision the run trained in, as recorded
        (:func:`flowmatch.saving.recorded_precision`).
        """
        from flowmatch.flows.options import sample_count

        n = sample_count(n)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise FlowmatchError(f"guidance must be a finite number, got {guidance!r}")
        if precision == "auto":
            from flowmatch.saving import recorded_precision

            precision = recorded_precision(self.config)
        if precision not in ("fp32", "bf16"):
            raise FlowmatchError(f"unknown precision {precision!r}; choose from fp32, bf16, auto")
        device = self._placement()[0]
        given = conditions_module.condition_for(self.conditions, n, label, condition, device)
        if guidance != 1.0 and not given:
            raise FlowmatchError("guidance needs a condition to guide by: give label= or condition=")
        solver = solver if solver is not None else self.DEFAULT_SAMPLER[0]
        nfe = nfe if nfe is not None else self.DEFAULT_SAMPLER[1]
        x0 = self._source(n, torch.Generator().manual_seed(seed), source)
        with torch.no_grad():
            sol = integrate_manifold(self.velocity(given, guidance, precision), x0, self.manifold, solver=solver, nfe=nfe)
        require_finite(sol.x, solver, nfe)
        return self.manifold.canonical(sol.x)

    def sample(self, n: int, **options) -> torch.Tensor:
        """:meth:`generate` (the name every flowmatch flow samples by); an option it does not take is refused."""
        from flowmatch.flows.options import check_sample_options

        check_sample_options(self.generate, options, type(self).__name__)
        return self.generate(n, **options)

    def log_prob(
        self,
        x: torch.Tensor,
        *,
        solver: str = "rk4",
        nfe: int = 64,
        probes: int = 0,
        seed: int = 0,
        base_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
        label=None,
        condition=None,
    ) -> torch.Tensor:
        """log p_1(x) per row w.r.t. the Riemannian volume (see :func:`manifold_log_prob`); the source
        density is the flow's own (:meth:`source_log_prob`) unless ``base_log_prob`` is given. A conditional
        model scores under ``label`` / ``condition`` (one or a row each; None: unconditionally)."""
        device, dtype = self._placement()
        x = self.manifold.check(x, "points").to(device=device, dtype=dtype)
        base = base_log_prob if base_log_prob is not None else self.source_log_prob
        given = conditions_module.condition_for(self.conditions, len(x), label, condition, device)
        velocity = self.velocity(given) if given else self.model
        return manifold_log_prob(velocity, x, self.manifold, base_log_prob=base, solver=solver, nfe=nfe, probes=probes, seed=seed)

    def to(self, device) -> RiemannianFlow:
        if isinstance(self.model, nn.Module):
            self.model.to(device)
        return self

    # -- saving and loading -------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        """checkpoint.json of a manifold run: what rebuilds the flow around its weights, as JSON."""
        from flowmatch.models.registry import model_record
        from flowmatch.saving import FORMAT_VERSION

        if not isinstance(self.model, nn.Module):
            raise FlowmatchError(f"a run folder saves a torch.nn.Module's weights; the flow's model is a {type(self.model).__name__}")
        model = model_record(self.model)
        return {
            "format": "flowmatch-checkpoint",
            "version": FORMAT_VERSION,
            "kind": "manifold",
            "manifold": self.manifold.to_config(),
            "data_manifold": self.data_manifold.to_config(),
            "model": model,
            "scheduler": scheduler_to_config(self.path.scheduler),
            "source": self.source,
            **({"conditions": self.conditions} if self.conditions != conditions_module.conditions_of(self.model) else {}),
        }

    def save_checkpoint(self, folder) -> None:
        """Weights and metadata into ``folder`` (:func:`flowmatch.engine.runs.save_flow`)."""
        from flowmatch.saving import save_flow

        save_flow(self, folder)


def scheduler_to_config(scheduler) -> dict[str, Any]:
    out: dict[str, Any] = {"name": scheduler.name}
    if hasattr(scheduler, "exponent"):
        out["exponent"] = scheduler.exponent
    return out


def build_manifold_flow(
    meta: dict[str, Any], state: dict[str, torch.Tensor], config: dict[str, Any], where, *, model: nn.Module | None = None
) -> RiemannianFlow:
    """The RiemannianFlow of :meth:`RiemannianFlow.checkpoint_meta` and its weights (checked: names, shapes,
    dtypes and finite values), in ``model`` where given (needed for a model the run folder only names)."""
    from flowmatch.discrete.schedulers import make_scheduler
    from flowmatch.models.registry import check_rebuildable
    from flowmatch.saving import build_model_for, load_weights, named

    check_rebuildable(meta.get("model"), model, where)
    try:
        manifold = manifold_from_config(meta["manifold"])
        data_manifold = manifold_from_config(meta["data_manifold"])
        spec = dict(meta["model"])
        model = model if model is not None else build_model_for(spec, manifold.ambient_dim, state, where)
        options = {k: v for k, v in meta["scheduler"].items() if k != "name"}
        path = GeodesicPath(manifold, make_scheduler(meta["scheduler"]["name"], **options))
        flow = RiemannianFlow(
            model, manifold, path, source=meta["source"], data_manifold=data_manifold, config=config, conditions=meta.get("conditions")
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FlowmatchError):  # named once: the checkpoint's own checks already name it
            raise FlowmatchError(named(str(exc), where)) from None
        raise FlowmatchError(f"{where}: malformed checkpoint metadata ({exc!r})") from None
    load_weights(model, state, where)
    return flow

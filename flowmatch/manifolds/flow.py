"""Riemannian flow matching: the tangent-valued model, its loss, and a flow that samples and scores.

**Model.** A network reads the manifold's features of a point (:meth:`Manifold.features`: the
coordinates on a sphere, [cos, sin] of the angles on a torus, the rotation matrix for SO(3)) and the time,
and outputs ``manifold.output_dim`` numbers that :meth:`Manifold.to_tangent` turns into a tangent
vector at the point (the orthogonal projection for spheres and R^d, the output itself for the torus,
q (0, omega) for SO(3)). :class:`TangentModel` does this for any ``net(features, t)``;
:class:`FeatureMLP` is a small such network (the package's :class:`flowmatch.models.MLP` has one width
for its input and output, which differ here).

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

**Saving.** :class:`TangentMLP` is the :class:`TangentModel` around a :class:`FeatureMLP` that knows its
config, registered as ``"tangent-mlp"`` in :mod:`flowmatch.models.registry`, so that a run folder
rebuilds it from JSON (its manifold, width, depth, activation and time embedding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.likelihood import manifold_log_prob
from flowmatch.manifolds.manifolds import Manifold, make_manifold, manifold_from_config
from flowmatch.manifolds.paths import GeodesicPath
from flowmatch.manifolds.solvers import integrate_manifold
from flowmatch.models.mlp import ACTIVATIONS, sinusoidal_embedding, time_column

Source = torch.Tensor | Callable[[int, torch.Generator | None], torch.Tensor] | None


class FeatureMLP(nn.Module):
    """net(f, t): h = act(W_f f + W_t emb(t)), then (depth - 1) x [Linear(width, width), act], then
    Linear(width, out_dim); emb is the sinusoidal time embedding of :mod:`flowmatch.models.mlp` through a
    learned projection. t is a number, a 0-dim tensor or a (batch,) tensor."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 128, depth: int = 3, activation: str = "silu", time_dim: int = 32):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FlowmatchError(f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        if min(in_dim, out_dim, width, depth) < 1 or time_dim < 2 or time_dim % 2:
            raise FlowmatchError(f"model sizes must be positive (time_dim even): width={width}, depth={depth}, time_dim={time_dim}")
        self.config = {"name": "feature-mlp", "width": width, "depth": depth, "activation": activation, "time_dim": time_dim}
        self.time_dim = time_dim
        self.f_in = nn.Linear(in_dim, width)
        self.t_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        layers: list[nn.Module] = [ACTIVATIONS[activation]()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(width, out_dim))
        self.body = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor, t) -> torch.Tensor:
        emb = sinusoidal_embedding(time_column(t, f), self.time_dim)
        return self.body(self.f_in(f) + self.t_in(emb))


class TangentModel(nn.Module):
    """v(x, t) = manifold.to_tangent(x, net(manifold.features(x), t)): a velocity field tangent to the manifold.

    ``net`` maps (n, manifold.feature_dim) features and times to (n, manifold.output_dim) outputs
    (ambient_dim for spheres and R^d, dim for the torus, 3 for SO(3)).
    """

    def __init__(self, net: nn.Module, manifold: Manifold):
        super().__init__()
        if not isinstance(manifold, Manifold):
            raise FlowmatchError(f"a TangentModel needs a Manifold, got {type(manifold).__name__}")
        self.net = net
        self.manifold = manifold

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        out = self.net(self.manifold.features(x), t)
        if out.shape != (x.shape[0], self.manifold.output_dim):
            raise FlowmatchError(
                f"the network must output shape (n, {self.manifold.output_dim}) on {self.manifold.label}, got {tuple(out.shape)}"
            )
        return self.manifold.to_tangent(x, out)


class TangentMLP(TangentModel):
    """A :class:`TangentModel` around a :class:`FeatureMLP` of the manifold's feature and output widths,
    built from plain values so that :func:`flowmatch.models.registry.build_model` makes it by name
    (``"tangent-mlp"``) and a run folder rebuilds it from ``config``.

    ``dim`` is the points' width (the manifold's ``ambient_dim``, checked); ``manifold`` a
    :class:`Manifold`, its ``to_config()`` dict or a name (sphere, torus, so3: their default dimension).
    """

    def __init__(
        self, dim: int, manifold: Manifold | dict | str, width: int = 128, depth: int = 3, activation: str = "silu", time_dim: int = 32
    ):
        if isinstance(manifold, dict):
            manifold = manifold_from_config(manifold)
        elif isinstance(manifold, str):  # by name: the manifold whose points have dim coordinates
            manifold = make_manifold(manifold, {"sphere": dim - 1, "so3": None}.get(manifold, dim))
        if not isinstance(manifold, Manifold):
            raise FlowmatchError(f"a tangent-mlp needs a manifold (a Manifold, its config or its name), got {type(manifold).__name__}")
        if dim != manifold.ambient_dim:
            raise FlowmatchError(f"points on {manifold.label} have {manifold.ambient_dim} coordinates, not {dim}")
        super().__init__(FeatureMLP(manifold.feature_dim, manifold.output_dim, width, depth, activation, time_dim), manifold)
        self.config = {
            "name": "tangent-mlp", "manifold": manifold.to_config(), "width": width, "depth": depth, "activation": activation,
            "time_dim": time_dim,
        }  # fmt: skip


def tangent_mlp(manifold: Manifold, **options) -> TangentMLP:
    """A :class:`TangentMLP` on ``manifold`` (``options``: width, depth, activation, time_dim)."""
    return TangentMLP(manifold.ambient_dim, manifold, **options)


def riemannian_loss(model: Callable, path: GeodesicPath, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean_i |model(x_t, t)_i - u_t,i|^2 over the batch, for (x_t, u_t) on ``path`` between x0 and x1 at times t (n,).

    The squared norm is the ambient Euclidean one of tangent vectors at x_t, which is the Riemannian
    metric of these manifolds (induced by the embedding, or flat for the torus).
    """
    sample = path.sample(x0, x1, t)
    pred = model(sample.x_t, sample.t)
    if pred.shape != sample.velocity.shape:
        raise FlowmatchError(f"the model returned shape {tuple(pred.shape)} for points of shape {tuple(sample.x_t.shape)}")
    return (pred - sample.velocity).pow(2).sum(dim=1).mean()


#: The sources a :class:`RiemannianFlow` draws from by name: the manifold's uniform law, or N(0, I) in R^D;
#: besides these, a wrapped Gaussian (:data:`WRAPPED_GAUSSIAN`) and a built-in set on the same manifold
#: (:data:`flowmatch.manifolds.data.MANIFOLD_SETS`).
FLOW_SOURCES = ("uniform", "gaussian")


#: The wrapped Gaussian source, spelled ``wrapped-gaussian`` (scale :data:`WRAPPED_GAUSSIAN_SCALE`) or
#: ``wrapped-gaussian:SCALE`` (as ``--grid shift:K``): exp_o(N(0, SCALE^2 I) in T_o M) around the manifold's
#: origin o (:func:`manifold_origin`), :class:`flowmatch.manifolds.data.WrappedNormal`.
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
    from flowmatch.manifolds.data import MANIFOLD_SETS, WrappedNormal, manifold_set

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
    :meth:`generate`, score with :meth:`log_prob`.

    ``source`` names the distribution at t = 0: ``"uniform"`` (the manifold's uniform law, density
    1 / volume), ``"wrapped-gaussian"`` or ``"wrapped-gaussian:SCALE"`` (exp_o(N(0, SCALE^2 I)) around the
    manifold's origin, with its exact density: :func:`source_law`), a built-in set on the same manifold
    (e.g. ``"S2-vmf"`` for a flow from one law on the sphere to another, with that set's density) or ``"gaussian"`` (N(0, I), on R^D only: the Euclidean comparison, whose
    ``data_manifold`` is the manifold its training points lie on). ``config`` is the run's config
    (a dict) when the flow comes from a run folder. The model's first parameter fixes the device and
    dtype of generated points (CPU float32 without parameters).
    """

    def __init__(
        self,
        model: Callable,
        manifold: Manifold,
        path: GeodesicPath | None = None,
        *,
        source: str = "uniform",
        data_manifold: Manifold | None = None,
        config: dict | None = None,
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

    def generate(self, n: int, solver: str = "rk4", nfe: int = 64, seed: int = 0, source: Source = None) -> torch.Tensor:
        """n samples at t = 1 in canonical form, integrated from source points at t = 0 with exactly
        ``nfe`` velocity evaluations.

        ``source`` is None (the flow's own), a tensor of n points, or ``f(n, generator)`` returning n points;
        randomness comes from a generator seeded with ``seed``. Samples are finite: a draw in which any
        comes out NaN or infinite raises :class:`~flowmatch.errors.FlowmatchError` naming how many.
        """
        from flowmatch.flow import _require_finite

        x0 = self._source(n, torch.Generator().manual_seed(seed), source)
        with torch.no_grad():
            sol = integrate_manifold(self.model, x0, self.manifold, solver=solver, nfe=nfe)
        _require_finite(sol.x, solver, nfe)
        return self.manifold.canonical(sol.x)

    def sample(self, n: int, **options) -> torch.Tensor:
        """:meth:`generate` (the name every flowmatch flow samples by)."""
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
    ) -> torch.Tensor:
        """log p_1(x) per row w.r.t. the Riemannian volume (see :func:`manifold_log_prob`); the source
        density is the flow's own (:meth:`source_log_prob`) unless ``base_log_prob`` is given."""
        device, dtype = self._placement()
        x = self.manifold.check(x, "points").to(device=device, dtype=dtype)
        base = base_log_prob if base_log_prob is not None else self.source_log_prob
        return manifold_log_prob(self.model, x, self.manifold, base_log_prob=base, solver=solver, nfe=nfe, probes=probes, seed=seed)

    def to(self, device) -> RiemannianFlow:
        if isinstance(self.model, nn.Module):
            self.model.to(device)
        return self

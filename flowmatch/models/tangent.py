"""Models of a velocity tangent to a manifold: v(x, t) = manifold.to_tangent(x, net(manifold.features(x), t)).

A network reads the manifold's features of a point (:meth:`~flowmatch.manifolds.manifolds.Manifold.features`: the
coordinates on a sphere, [cos, sin] of the angles on a torus, the rotation matrix for SO(3)) and the time,
and outputs ``manifold.output_dim`` numbers that :meth:`~flowmatch.manifolds.manifolds.Manifold.to_tangent`
turns into a tangent vector at the point (the orthogonal projection for spheres and R^d, the output itself
for the torus, q (0, omega) for SO(3)). :class:`TangentModel` does this for any ``net(features, t)``;
:class:`FeatureMLP` is a small such network (the package's :class:`flowmatch.models.MLP` has one width for
its input and output, which differ here). :class:`TangentMLP` is the one a run folder rebuilds by name
(``"tangent-mlp"``).
"""

from __future__ import annotations

import torch
from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.manifolds import Manifold, make_manifold, manifold_from_config
from flowmatch.models.conditioning import ConditionEmbedding
from flowmatch.models.mlp import ACTIVATIONS, sinusoidal_embedding, time_column


class FeatureMLP(nn.Module):
    """net(f, t): h = act(W_f f + W_t emb(t)), then (depth - 1) x [Linear(width, width), act], then
    Linear(width, out_dim); emb is the sinusoidal time embedding of :mod:`flowmatch.models.mlp` through a
    learned projection. t is a number, a 0-dim tensor or a (batch,) tensor."""

    def __init__(
        self, in_dim: int, out_dim: int, width: int = 128, depth: int = 3, activation: str = "silu", time_dim: int = 32,
        num_classes: int = 0, condition_dim: int = 0,
    ):  # fmt: skip
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FlowmatchError(f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        if min(in_dim, out_dim, width, depth) < 1 or time_dim < 2 or time_dim % 2:
            raise FlowmatchError(f"model sizes must be positive (time_dim even): width={width}, depth={depth}, time_dim={time_dim}")
        self.conditions = ConditionEmbedding(width, num_classes, condition_dim)
        self.config = {
            "name": "feature-mlp", "width": width, "depth": depth, "activation": activation, "time_dim": time_dim,
            **self.conditions.config(),
        }  # fmt: skip
        self.time_dim = time_dim
        self.f_in = nn.Linear(in_dim, width)
        self.t_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        layers: list[nn.Module] = [ACTIVATIONS[activation]()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(width, out_dim))
        self.body = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor, t, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        emb = sinusoidal_embedding(time_column(t, f), self.time_dim)
        h = self.f_in(f) + self.t_in(emb)
        conditions = self.conditions(len(f), h, y, c)
        if conditions is not None:
            h = h + conditions
        return self.body(h)


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

    def forward(self, x: torch.Tensor, t, **condition) -> torch.Tensor:
        out = self.net(self.manifold.features(x), t, **condition)
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
        self, dim: int, manifold: Manifold | dict | str, width: int = 128, depth: int = 3, activation: str = "silu", time_dim: int = 32,
        num_classes: int = 0, condition_dim: int = 0,
    ):  # fmt: skip
        if isinstance(manifold, dict):
            manifold = manifold_from_config(manifold)
        elif isinstance(manifold, str):  # by name: the manifold whose points have dim coordinates
            manifold = make_manifold(manifold, {"sphere": dim - 1, "so3": None}.get(manifold, dim))
        if not isinstance(manifold, Manifold):
            raise FlowmatchError(f"a tangent-mlp needs a manifold (a Manifold, its config or its name), got {type(manifold).__name__}")
        if dim != manifold.ambient_dim:
            raise FlowmatchError(f"points on {manifold.label} have {manifold.ambient_dim} coordinates, not {dim}")
        net = FeatureMLP(manifold.feature_dim, manifold.output_dim, width, depth, activation, time_dim, num_classes, condition_dim)
        super().__init__(net, manifold)
        self.num_classes = num_classes
        self.config = {
            "name": "tangent-mlp", "manifold": manifold.to_config(), "width": width, "depth": depth, "activation": activation,
            "time_dim": time_dim, **net.conditions.config(),
        }  # fmt: skip


def tangent_mlp(manifold: Manifold, **options) -> TangentMLP:
    """A :class:`TangentMLP` on ``manifold`` (``options``: width, depth, activation, time_dim, num_classes, condition_dim)."""
    return TangentMLP(manifold.ambient_dim, manifold, **options)

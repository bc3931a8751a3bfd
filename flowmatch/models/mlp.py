"""Velocity models v_theta(x, t), and average-velocity models u_theta(x, r, t) (MeanFlow).

Every model is called as ``model(x, t, **condition)`` with x of shape (batch, D) and t a scalar, a
0-dim tensor or a (batch,) tensor of times in [0, 1]; it returns a tensor shaped like x. The built-in
MLP takes class labels ``y`` (batch,) and a float covariate vector ``c`` (batch, k); a user's model may
take any named conditions.

Classifier-free guidance needs a learned "no condition": a dropped label is the null class
``num_classes``, and a dropped float condition is a row of NaNs, which the model must map to a learned
null embedding (as :class:`MLP` does).

- ``seed-mlp``: the seed document's network, input [t, x] -> 128 -> ReLU -> 128 -> ReLU -> D.
- ``mlp``: the default. A sinusoidal embedding of t feeds a learned projection that is added to
  the first layer's pre-activation (no concatenation of t onto x, so at sampling time, where t is
  one number for the whole batch, the time term is computed once per call, and in training, where
  the times come in runs of equal values, once per run), then ``depth`` hidden layers of ``width``
  units with a configurable activation.

**Two times** (``times=2``, for MeanFlow: :func:`flowmatch.losses.meanflow_loss`). The model is then
u(x, r, t), the average velocity over [r, t] of the flow through x at time r <= t, so that
x_t = x_r + (t - r) u(x_r, r, t); it is called as ``model(x, t, r=r, **condition)``. As MeanFlow does,
it embeds the time of x and the interval's length, (r, t - r), through two time branches whose
outputs add, at the time scale s = 1 (``time_scale``: angles s t w_k, where the one-time model has
s = 1000), as MeanFlow's networks embed t in [0, 1]. The loss differentiates the model in r, and
features of frequency up to 1000 make du/dr, and with it the regression target, large enough to feed
on itself: on two Gaussians with the plain mean square the target's correction (t - r) du/dr grew
from 0.08 to a mean of 76 (loss 5e4) in 1750 steps at s = 1000, and stayed near 0.2-0.4 (loss 2-3.5,
the conditional target's own variance) at s = 1. Leaving r out means r = t, where u(x, t, t) = v(x, t)
is the instantaneous velocity: a two-time model called as ``model(x, t)`` is an ordinary velocity
field, so the ODE solvers and the likelihood take it as is.

Models are rebuilt from plain data: ``build_model(name, dim, **options)`` and ``model.config``
round-trip through a checkpoint's JSON metadata.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import forward_ad

from flowmatch.errors import FlowmatchError

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def time_column(t, x: torch.Tensor) -> torch.Tensor:
    """Times as a (batch, 1) or (1, 1) column on x's device and dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, 1)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> torch.Tensor:
    """[cos(s t w_k), sin(s t w_k)], w_k = max_period^(-k / (dim/2)), for a (n, 1) column t and scale s (1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = scale * t * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def check_time_scale(time_scale, times: int) -> float:
    """The time scale of the sinusoidal features: as given (a positive number), else 1000 for one time, 1 for two."""
    if time_scale is None:
        return 1000.0 if times == 1 else 1.0
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (math.isfinite(time_scale) and time_scale > 0):
        raise FlowmatchError(f"time_scale must be a positive number, got {time_scale!r}")
    return float(time_scale)


class SeedMLP(nn.Module):
    """The seed recipe's network: Linear(D + 1, 128), ReLU, Linear(128, 128), ReLU, Linear(128, D)."""

    def __init__(self, dim: int, width: int = 128):
        super().__init__()
        self.config = {"name": "seed-mlp", "width": width}
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        t = time_column(t, x).expand(x.shape[0], 1)
        return self.net(torch.cat([t, x], dim=1))


class MLP(nn.Module):
    """h = act(W_x x + W_t emb(t) [+ E y]), then (depth - 1) x [Linear(width, width), act], then Linear(width, D).

    ``dropout`` > 0 drops hidden units after each activation while training (a regulariser for
    small data sets; identity at sampling).

    With ``num_classes > 0`` a label embedding is added to the first pre-activation; label
    ``num_classes`` is the learned null label used for classifier-free guidance. With
    ``condition_dim = k > 0`` a float condition c (batch, k) adds W_c c there too, and a row of c
    holding NaN adds a learned null vector instead (no condition, for guidance).

    With ``times=2`` the model is u(x, r, t) (module docstring): h gains a second time branch of
    the same shape, ``dt_in(emb(t - r))``, and the first branch embeds r, the time of x:
    h = act(W_x x + t_in(emb(r)) + dt_in(emb(t - r)) [+ ...]). ``times`` is kept in ``config`` (only
    when 2, so a one-time model's config is as before). ``time_scale`` s multiplies the times in the
    sinusoidal features (default 1000 for one time, 1 for two: module docstring); kept in ``config``
    when it is not 1000.
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 3,
        activation: str = "silu",
        time_dim: int = 64,
        num_classes: int = 0,
        dropout: float = 0.0,
        condition_dim: int = 0,
        times: int = 1,
        time_scale: float | None = None,
    ):
        super().__init__()
        if isinstance(times, bool) or times not in (1, 2):
            raise FlowmatchError(f"times must be 1 (v(x, t)) or 2 (u(x, r, t)), got {times!r}")
        time_scale = check_time_scale(time_scale, times)
        if not 0.0 <= dropout < 1.0:
            raise FlowmatchError(f"dropout must be in [0, 1), got {dropout}")
        if activation not in ACTIVATIONS:
            raise FlowmatchError(f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        if width < 1 or depth < 1 or time_dim < 2 or time_dim % 2 or num_classes < 0 or condition_dim < 0:
            raise FlowmatchError(f"model sizes must be positive (time_dim even): width={width}, depth={depth}, time_dim={time_dim}")
        self.config = {
            "name": "mlp",
            "width": width,
            "depth": depth,
            "activation": activation,
            "time_dim": time_dim,
            "num_classes": num_classes,
        }
        if dropout:
            self.config["dropout"] = dropout
        if condition_dim:
            self.config["condition_dim"] = condition_dim
        if times == 2:
            self.config["times"] = times
        if time_scale != 1000.0:
            self.config["time_scale"] = time_scale
        self.time_dim = time_dim
        self.time_scale = time_scale
        self.num_classes = num_classes
        self.x_in = nn.Linear(dim, width)
        self.t_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        self.dt_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width)) if times == 2 else None
        self.y_in = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.c_in = nn.Linear(condition_dim, width) if condition_dim else None
        self.c_null = nn.Parameter(torch.zeros(width)) if condition_dim else None
        drop = [nn.Dropout(dropout)] if dropout else []  # after each hidden activation; identity in eval
        layers: list[nn.Module] = [ACTIVATIONS[activation](), *drop]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), ACTIVATIONS[activation](), *([nn.Dropout(dropout)] if dropout else [])]
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, c: torch.Tensor | None = None, *, r=None) -> torch.Tensor:
        """v(x, t), or for ``times=2`` u(x, r, t) with x at time r (r left out: r = t, u(x, t, t) = v(x, t))."""
        # per-row embeddings are added into the first layer's output in place (a Linear's backward
        # does not need its output, so autograd is unaffected), saving a (batch, width) temporary
        h = self.x_in(x)
        t = time_column(t, x)
        if self.dt_in is None:
            if r is not None:
                raise FlowmatchError("this MLP takes one time, v(x, t); build it with times=2 for u(x, r, t)")
            h = self._add_time(h, t, self.t_in)
        else:
            r = t if r is None else time_column(r, x)
            h = self._add_time(h, r, self.t_in)
            h = self._add_time(h, t - r, self.dt_in)
        if self.y_in is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            h += self.y_in(y)
        if self.c_in is not None:
            h += self._condition(c, x)
        if h.requires_grad:
            return self.body(h)
        # no autograd graph (sampling): activations overwrite their input instead of allocating
        for layer in self.body:
            in_place = _IN_PLACE.get(type(layer))
            h = in_place(h) if in_place is not None else layer(h)
        return h

    def _condition(self, c: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """W_c c per row, the learned null vector for rows of NaN (and for c None: all rows)."""
        assert self.c_in is not None and self.c_null is not None
        if c is None:
            return self.c_null.to(x.dtype).expand(x.shape[0], -1)
        c = c.to(x.dtype).reshape(x.shape[0], -1)
        missing = torch.isnan(c).any(dim=1, keepdim=True)
        return torch.where(missing, self.c_null.to(x.dtype), self.c_in(torch.nan_to_num(c)))

    def _add_time(self, h: torch.Tensor, t: torch.Tensor, branch: nn.Module) -> torch.Tensor:
        """h + branch(emb(t)), evaluating the time branch once per run of equal consecutive times.

        Training times come in runs (``training.sample_times``' strata) and sampling times are one
        number, so the (batch, width) time branch, a third of the network's multiply-adds, shrinks
        to (runs, width). Equal runs broadcast through a view; unequal ones repeat rows. Times being
        differentiated (a forward-mode tangent from ``torch.func.jvp``, as MeanFlow's loss takes, or
        ``requires_grad``) take the plain path: ``unique_consecutive`` has no derivative, and equal
        times may carry different tangents.
        """
        differentiated = t.requires_grad or forward_ad.unpack_dual(t).tangent is not None
        if t.shape[0] > 1 and not is_compiling() and not differentiated:  # a data-dependent shape would break a compiled graph
            times, runs = torch.unique_consecutive(t.reshape(-1), return_counts=True)
            if len(times) < t.shape[0]:
                e = branch(sinusoidal_embedding(times.reshape(-1, 1), self.time_dim, scale=self.time_scale)).to(h.dtype)
                if bool((runs == runs[0]).all()):
                    return (h.view(len(times), -1, h.shape[1]) + e[:, None]).view(h.shape)
                return h + e.repeat_interleave(runs, dim=0, output_size=h.shape[0])
        h += branch(sinusoidal_embedding(t, self.time_dim, scale=self.time_scale))
        return h


#: In-place versions of the activations, used when no gradient is recorded.
_IN_PLACE = {
    nn.ReLU: torch.relu_,
    nn.SiLU: lambda h: nn.functional.silu(h, inplace=True),
    nn.Tanh: torch.tanh_,
}

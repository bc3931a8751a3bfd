"""Velocity models v_theta(x, t).

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

Models are rebuilt from plain data: ``build_model(name, dim, **options)`` and ``model.config``
round-trip through a checkpoint's JSON metadata.
"""

from __future__ import annotations

import math

import torch
from torch import nn

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


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(1000 t w_k), sin(1000 t w_k)], w_k = max_period^(-k / (dim/2)), for a (n, 1) column t."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


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
    ):
        super().__init__()
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
        self.time_dim = time_dim
        self.num_classes = num_classes
        self.x_in = nn.Linear(dim, width)
        self.t_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        self.y_in = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.c_in = nn.Linear(condition_dim, width) if condition_dim else None
        self.c_null = nn.Parameter(torch.zeros(width)) if condition_dim else None
        drop = [nn.Dropout(dropout)] if dropout else []  # after each hidden activation; identity in eval
        layers: list[nn.Module] = [ACTIVATIONS[activation](), *drop]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), ACTIVATIONS[activation](), *([nn.Dropout(dropout)] if dropout else [])]
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        # per-row embeddings are added into the first layer's output in place (a Linear's backward
        # does not need its output, so autograd is unaffected), saving a (batch, width) temporary
        h = self.x_in(x)
        h = self._add_time(h, time_column(t, x))
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

    def _add_time(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """h + t_in(emb(t)), evaluating the time branch once per run of equal consecutive times.

        Training times come in runs (``training.sample_times``' strata) and sampling times are one
        number, so the (batch, width) time branch, a third of the network's multiply-adds, shrinks
        to (runs, width). Equal runs broadcast through a view; unequal ones repeat rows.
        """
        if t.shape[0] > 1 and not is_compiling():  # a data-dependent shape would break the graph
            times, runs = torch.unique_consecutive(t.reshape(-1), return_counts=True)
            if len(times) < t.shape[0]:
                e = self.t_in(sinusoidal_embedding(times.reshape(-1, 1), self.time_dim)).to(h.dtype)
                if bool((runs == runs[0]).all()):
                    return (h.view(len(times), -1, h.shape[1]) + e[:, None]).view(h.shape)
                return h + e.repeat_interleave(runs, dim=0, output_size=h.shape[0])
        h += self.t_in(sinusoidal_embedding(t, self.time_dim))
        return h


#: In-place versions of the activations, used when no gradient is recorded.
_IN_PLACE = {
    nn.ReLU: torch.relu_,
    nn.SiLU: lambda h: nn.functional.silu(h, inplace=True),
    nn.Tanh: torch.tanh_,
}

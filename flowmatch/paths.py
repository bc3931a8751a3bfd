"""Conditional probability paths between a noise sample x0 (t = 0) and a data sample x1 (t = 1).

Every path here is affine in the pair (x0, x1):

    x_t = alpha_t * x1 + sigma_t * x0,        alpha_0 = 0, sigma_0 = 1 (noise), alpha_1 = 1 (data)

so the velocity the model regresses onto is its time derivative,

    u_t = d/dt x_t = alpha'_t * x1 + sigma'_t * x0.

A path is a :class:`Schedule` (alpha, sigma and their derivatives) wrapped in :class:`AffinePath`;
adding a path means adding a schedule. Because x_t and u_t are two linear equations in (x0, x1),
any one of the three predictions (velocity, data x1, noise x0) converts to the others given x_t
(``AffinePath.to_endpoints`` and ``AffinePath.convert``).

Built-in schedules (``make_path(name)``):

- ``gaussian``: alpha_t = t, sigma_t = 1 - (1 - sigma_min) t; the Gaussian path of Lipman et al.
  (2023) with a floor sigma_min on the data end; sigma_min = 0 is the linear path.
- ``linear``: alpha_t = t, sigma_t = 1 - t (rectified flow, CondOT): straight lines, constant
  velocity x1 - x0.
- ``cosine``: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2) (variance preserving:
  alpha^2 + sigma^2 = 1).

A custom schedule: ``AffinePath(CustomSchedule(alpha=..., sigma=...))`` with callables of a time
tensor; derivatives are taken by autograd unless given.

Example::

    path = make_path("linear")
    s = path.sample(x0, x1, t)         # PathSample(x_t, velocity, t)
    loss = ((model(s.x_t, t) - s.velocity) ** 2).mean()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import FlowmatchError

PREDICTIONS = ("velocity", "x1", "x0")


class Schedule:
    """alpha_t and sigma_t of an affine path, with their time derivatives (element-wise in t)."""

    name = "schedule"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianSchedule(Schedule):
    """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t: x_1 ~ N(x1, sigma_min^2 I) at the data end."""

    name = "gaussian"

    def __init__(self, sigma_min: float = 0.0):
        if not 0.0 <= sigma_min < 1.0:
            raise FlowmatchError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def alpha(self, t):
        return t

    def sigma(self, t):
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_sigma(self, t):
        return torch.full_like(t, -(1.0 - self.sigma_min))


class LinearSchedule(GaussianSchedule):
    """alpha_t = t, sigma_t = 1 - t: the straight-line (rectified flow / CondOT) path."""

    name = "linear"

    def __init__(self):
        super().__init__(sigma_min=0.0)


class CosineSchedule(Schedule):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2): variance preserving."""

    name = "cosine"

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class CustomSchedule(Schedule):
    """A schedule from user callables; missing derivatives come from autograd.

    The callables take a tensor of times and act element-wise, e.g.
    ``CustomSchedule(alpha=lambda t: t**2, sigma=lambda t: 1 - t**2)``.
    """

    name = "custom"

    def __init__(
        self,
        alpha: Callable[[torch.Tensor], torch.Tensor],
        sigma: Callable[[torch.Tensor], torch.Tensor],
        d_alpha: Callable[[torch.Tensor], torch.Tensor] | None = None,
        d_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self._alpha, self._sigma = alpha, sigma
        self._d_alpha = d_alpha or _autograd_derivative(alpha)
        self._d_sigma = d_sigma or _autograd_derivative(sigma)

    def alpha(self, t):
        return self._alpha(t)

    def sigma(self, t):
        return self._sigma(t)

    def d_alpha(self, t):
        return self._d_alpha(t)

    def d_sigma(self, t):
        return self._d_sigma(t)


def _autograd_derivative(fn):
    def derivative(t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(tt).sum(), tt)
        return grad

    return derivative


@dataclass
class PathSample:
    """A point on the conditional path: x_t and the target velocity u_t at times t."""

    x_t: torch.Tensor
    velocity: torch.Tensor
    t: torch.Tensor


class AffinePath:
    """x_t = alpha_t x1 + sigma_t x0 and u_t = alpha'_t x1 + sigma'_t x0 for a :class:`Schedule`.

    With ``bridge_sigma = s > 0`` the path gets Brownian-bridge noise (the Schroedinger-bridge path
    of SB-CFM): x_t = alpha_t x1 + sigma_t x0 + g_t eps with g_t = s sqrt(t (1 - t)), eps ~ N(0, I),
    and u_t gains g'_t eps = s (1 - 2t) / (2 sqrt(t (1 - t))) eps (t clamped to [1e-4, 1 - 1e-4]
    in g'_t, where it diverges).
    """

    def __init__(self, schedule: Schedule, bridge_sigma: float = 0.0):
        if not bridge_sigma >= 0.0:
            raise FlowmatchError(f"bridge noise sigma must be >= 0, got {bridge_sigma}")
        self.schedule = schedule
        self.bridge_sigma = float(bridge_sigma)

    @property
    def name(self) -> str:
        return self.schedule.name

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor):
        t = _as_time(t, like)
        s = self.schedule
        return s.alpha(t), s.sigma(t), s.d_alpha(t), s.d_sigma(t)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> PathSample:
        """x_t and u_t for pairs (x0, x1) at per-sample times t of shape (batch,).

        ``noise`` (eps, shaped like x1) is needed only when the path has bridge noise.
        """
        a, s, da, ds = self._coefficients(t, x1)
        x_t, velocity = a * x1 + s * x0, da * x1 + ds * x0
        if self.bridge_sigma > 0:
            if noise is None:
                raise FlowmatchError("a path with bridge noise needs the noise eps")
            tt = _as_time(t, x1)
            g = self.bridge_sigma * torch.sqrt(tt * (1 - tt))
            tc = tt.clamp(1e-4, 1 - 1e-4)
            dg = self.bridge_sigma * (1 - 2 * tc) / (2 * torch.sqrt(tc * (1 - tc)))
            x_t, velocity = x_t + g * noise, velocity + dg * noise
        return PathSample(x_t=x_t, velocity=velocity, t=t)

    def posterior_velocity(
        self,
        sample: PathSample,
        x1: torch.Tensor,
        reference: torch.Tensor,
        own: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        chunk: int = 1024,
    ) -> torch.Tensor:
        """A lower-variance target with the same minimiser: u_t averaged over the data's posterior.

        For a standard Gaussian source (x0 ~ N(0, I)) the path through one data point z is Gaussian,
        x_t | z ~ N(alpha_t z, s_t^2 I) with s_t^2 = sigma_t^2 + g_t^2 (g_t the bridge noise), and the
        velocity it implies at x_t is u(x_t | z) = alpha'_t z + c_t (x_t - alpha_t z), with
        c_t = (sigma_t sigma'_t + g_t g'_t) / s_t^2. The marginal velocity is its posterior mean over z.
        Over a set z_1..z_R holding the pair's own x1 and otherwise independent draws of the data,
        the self-normalised estimate

            T = sum_j w_j u(x_t | z_j),   w_j proportional to exp(-|x_t - alpha_t z_j|^2 / (2 s_t^2)),

        has E[T | x_t] = v(x_t, t) exactly: T is symmetric in the z_j, so the own point's likelihood in
        the joint density can be replaced by the mean likelihood over all z_j, which cancels T's
        denominator and leaves E_z[p(x_t | z) u(x_t | z)] / p_t(x_t) = v(x_t, t). Regressing on T
        therefore has the minimiser of regressing on u_t (the stable target field of Xu et al. 2023;
        explicit flow matching, Ryzhakov et al. 2024), with far less variance where the posterior is
        broad: early times, where a mixture's mass is divided between its modes. Late, the weights
        fall onto the own point and T is u_t.

        Written as a correction to the pair's own target, which keeps it exact when s_t -> 0:
        T = u_t + (alpha'_t - c_t alpha_t) (m - x1), m = sum_j w_j z_j; u_t's own noise (bridge) stays.

        ``sample``: the pairs' PathSample; ``x1``: their data points (n, ...); ``reference``: other
        draws of the data (R, ...); ``own``: (n,) the row of ``reference`` that is each pair's own x1,
        or -1 where it is not among them (it then joins that pair's set); None means row i of
        ``reference`` is x1[i]. ``allowed``: an optional (n, R) boolean mask of the reference points
        each pair may average over (its class). Computed in the inputs' precision (at least float32),
        ``chunk`` pairs at a time.
        """
        dtype = torch.promote_types(x1.dtype, torch.float32)
        a, s, da, ds = (v.to(dtype).reshape(-1, 1) for v in self._coefficients(sample.t, x1[:, :1]))
        var, cov = s * s, s * ds
        if self.bridge_sigma > 0:  # g_t^2 = b^2 t (1 - t), g_t g'_t = b^2 (1 - 2t) / 2
            tt = torch.as_tensor(sample.t, device=x1.device).to(dtype).reshape(-1, 1)
            var, cov = var + self.bridge_sigma**2 * tt * (1 - tt), cov + self.bridge_sigma**2 * (1 - 2 * tt) / 2
        var = var.clamp_min(torch.finfo(dtype).tiny ** 0.5)
        n = len(x1)
        own = torch.arange(n, device=x1.device) if own is None else own
        # log w_j = (a / s^2) x_t . z_j - (a^2 / s^2) |z_j|^2 / 2 + (a constant per pair): one matmul
        # of [(a / s^2) x_t, -a^2 / s^2] with [z_j, |z_j|^2 / 2]
        scale = (a / var).expand(n, 1)
        lhs = torch.cat([scale * sample.x_t.to(dtype).flatten(1), -scale * a], dim=1)
        z, own_z = reference.to(dtype).flatten(1), x1.to(dtype).flatten(1)
        rhs = _with_half_norm(z)
        own_logit = (lhs * _with_half_norm(own_z)).sum(1, keepdim=True)
        in_reference = own[:, None] >= 0  # the own point is already among the reference: not again
        means = []  # m, a chunk of pairs at a time: weights over the reference, then the own point
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            mask = None if allowed is None else allowed[rows]
            logits = _exclude(torch.cat([lhs[rows] @ rhs.T, own_logit[rows]], dim=1), in_reference[rows], mask)
            # log-weights more than 80 below the largest are floored there (such weights do not count),
            # so that float32 exp never makes slow subnormal numbers; excluded points stay out
            logits = _exclude((logits - logits.amax(1, keepdim=True)).clamp_(min=-80.0), in_reference[rows], mask)
            w = torch.softmax(logits, dim=1)
            means.append((z.T @ w[:, :-1].T).T + w[:, -1:] * own_z[rows])
        correction = (da - cov / var * a) * (torch.cat(means) - own_z)
        return sample.velocity + correction.reshape(x1.shape).to(sample.velocity.dtype)

    def to_endpoints(self, pred: torch.Tensor, x_t: torch.Tensor, t, kind: str = "velocity"):
        """(x0, x1) implied by a prediction of ``kind`` (velocity, x1 or x0) at x_t.

        From the velocity, solving x_t = a x1 + s x0, u = a' x1 + s' x0:
        x1 = (s' x_t - s u) / (a s' - s a'),  x0 = (a u - a' x_t) / (a s' - s a').
        From x1: x0 = (x_t - a x1) / s. From x0: x1 = (x_t - s x0) / a.
        (Undefined where the divisor vanishes: x1 at t = 0 and x0 at t = 1 for sigma_min = 0.)
        """
        a, s, da, ds = self._coefficients(t, x_t)
        if kind == "velocity":
            det = a * ds - s * da
            return (a * pred - da * x_t) / det, (ds * x_t - s * pred) / det
        if kind == "x1":
            return (x_t - a * pred) / s, pred
        if kind == "x0":
            return pred, (x_t - s * pred) / a
        raise FlowmatchError(f"unknown prediction '{kind}'; choose one of {', '.join(PREDICTIONS)}")

    def convert(self, pred: torch.Tensor, x_t: torch.Tensor, t, src: str, dst: str) -> torch.Tensor:
        """Convert a prediction between velocity, x1 (data) and x0 (noise) parameterisations."""
        if dst not in PREDICTIONS:
            raise FlowmatchError(f"unknown prediction '{dst}'; choose one of {', '.join(PREDICTIONS)}")
        x0, x1 = self.to_endpoints(pred, x_t, t, src)
        if dst == "x0":
            return x0
        if dst == "x1":
            return x1
        _, _, da, ds = self._coefficients(t, x_t)
        return da * x1 + ds * x0


def _with_half_norm(z: torch.Tensor) -> torch.Tensor:
    """[z, |z|^2 / 2]: the right-hand side of the posterior's log-weight matmul."""
    return torch.cat([z, 0.5 * (z * z).sum(1, keepdim=True)], dim=1)


def _exclude(logits: torch.Tensor, in_reference: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Posterior log-weights over [reference points, own point] with the points a pair may not use at -inf."""
    logits[:, -1:].masked_fill_(in_reference, -math.inf)
    if allowed is not None:
        logits[:, :-1].masked_fill_(~allowed, -math.inf)
    return logits


def _as_time(t, like: torch.Tensor) -> torch.Tensor:
    """Times as a tensor that broadcasts against ``like`` (batch, ...): a scalar or shape (batch,)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


PATHS = ("gaussian", "linear", "cosine")


def make_path(name: str, sigma_min: float = 0.0, bridge_sigma: float = 0.0) -> AffinePath:
    """A built-in path by name; ``sigma_min`` applies to the gaussian path only."""
    if name == "gaussian":
        return AffinePath(GaussianSchedule(sigma_min), bridge_sigma)
    if name == "linear":
        return AffinePath(LinearSchedule(), bridge_sigma)
    if name == "cosine":
        return AffinePath(CosineSchedule(), bridge_sigma)
    raise FlowmatchError(f"unknown path '{name}'; choose one of {', '.join(PATHS)}")

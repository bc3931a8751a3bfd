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
from typing import TYPE_CHECKING, Callable

import torch

from .errors import FlowmatchError

if TYPE_CHECKING:
    from .data import GaussianMixture

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
        source: GaussianMixture | None = None,
        chunk: int = 1024,
    ) -> torch.Tensor:
        """A lower-variance target with the same minimiser: u_t averaged over the data's posterior.

        The source is an isotropic Gaussian mixture, x0 ~ sum_k pi_k N(mu_k, tau_k^2 I) (by default
        N(0, I): one component). Given a data point z and a component k the path is Gaussian,
        x_t | z, k ~ N(alpha_t z + sigma_t mu_k, V_k I) with V_k = sigma_t^2 tau_k^2 + g_t^2 (g_t the
        bridge noise), and the velocity it implies at x_t is the regression of u_t on x_t,

            u(x_t | z, k) = alpha'_t z + sigma'_t mu_k + c_k (x_t - alpha_t z - sigma_t mu_k),
            c_k = (sigma_t sigma'_t tau_k^2 + g_t g'_t) / V_k.

        The marginal velocity is its posterior mean over (z, k). Over a set z_1..z_R holding the pair's
        own x1 and otherwise independent draws of the data, the self-normalised estimate

            T = sum_{j,k} w_jk u(x_t | z_j, k),   w_jk proportional to pi_k N(x_t; alpha_t z_j + sigma_t mu_k, V_k I),

        has E[T | x_t] = v(x_t, t) exactly: T is symmetric in the z_j, so the own point's likelihood in
        the joint density can be replaced by the mean likelihood over all z_j, which cancels T's
        denominator and leaves E_z[p(x_t | z) E[u | x_t, z]] / p_t(x_t) = v(x_t, t). Regressing on T
        therefore has the minimiser of regressing on u_t (the stable target field of Xu et al. 2023;
        explicit flow matching, Ryzhakov et al. 2024), with far less variance where the posterior is
        broad: early times, where a mixture's mass is divided between its modes. Late, the weights
        fall onto the own point and T is u_t.

        Computed as the pair's own target plus a correction, T = u_t + sum_jk w_jk u_jk - E[u_t | x_t, x1]
        with E[u_t | x_t, x1] = sum_k r_k u(x_t | x1, k), r_k the own point's posterior over components
        (the part of u_t that x_t and x1 leave open, such as bridge noise, stays; it has mean zero).
        With O_k = sum_j w_jk over the other points j,

            T - u_t = sum_k (alpha'_t - c_k alpha_t) sum_j w_jk (z_j - x1) + sum_k D_k (c_k e_k + sigma'_t mu_k),

        D_k = O_k - r_k sum_k' O_k', e_k = x_t - alpha_t x1 - sigma_t mu_k. It vanishes with the other
        points' weights, so T stays exact as V_k -> 0; for one component D = 0 and the correction is
        (alpha'_t - c alpha_t)(m - x1), m the weighted mean of the z_j.

        ``sample``: the pairs' PathSample; ``x1``: their data points (n, ...); ``reference``: other
        draws of the data (R, ...); ``own``: (n,) the row of ``reference`` that is each pair's own x1,
        or -1 where it is not among them; None means row i of ``reference`` is x1[i]. ``allowed``: an
        optional (n, R) boolean mask of the reference points each pair may average over (its class).
        ``source``: the source's :class:`~flowmatch.data.GaussianMixture` in model coordinates (None:
        N(0, I)). Computed in the inputs' precision (at least float32), ``chunk`` pairs at a time.
        """
        dtype = torch.promote_types(x1.dtype, torch.float32)
        device = x1.device
        a, s, da, ds = (v.to(dtype).reshape(-1, 1) for v in self._coefficients(sample.t, x1[:, :1]))
        n, x, z, x1f = len(x1), sample.x_t.to(dtype).flatten(1), reference.to(dtype).flatten(1), x1.to(dtype).flatten(1)
        dim = x.shape[1]
        like = dict(dtype=dtype, device=device)
        if source is None:  # N(0, I)
            log_pi, mu, tau2 = torch.zeros(1, **like), torch.zeros(1, dim, **like), torch.ones(1, **like)
        else:
            log_pi, mu, tau2 = (v.to(**like) for v in (source.weights.log(), source.means.flatten(1), source.stds**2))
        var, cov = s * s * tau2, s * ds * tau2  # (n, K)
        if self.bridge_sigma > 0:  # g_t^2 = b^2 t (1 - t), g_t g'_t = b^2 (1 - 2t) / 2
            tt = torch.as_tensor(sample.t, device=device).to(dtype).reshape(-1, 1)
            var, cov = var + self.bridge_sigma**2 * tt * (1 - tt), cov + self.bridge_sigma**2 * (1 - 2 * tt) / 2
        var = var.clamp_min(torch.finfo(dtype).tiny ** 0.5)
        c = cov / var
        y = x[:, None, :] - s[:, :, None] * mu  # x_t - sigma_t mu_k: (n, K, D)
        e = y - a[:, :, None] * x1f[:, None, :]  # x_t - alpha_t x1 - sigma_t mu_k
        base = log_pi - 0.5 * dim * var.log()
        own_logit = base - (e * e).sum(-1) / (2 * var)  # (n, K)
        # log w_jk = [a y_k / V_k, -a^2 / V_k, b_k - |y_k|^2 / (2 V_k)] . [z_j, |z_j|^2 / 2, 1]: one matmul
        scale = (a / var)[:, :, None]
        lhs = torch.cat([scale * y, -scale * a[:, :, None], (base - (y * y).sum(-1) / (2 * var))[:, :, None]], dim=2)
        z_one = torch.cat([z, torch.ones_like(z[:, :1])], dim=1)
        rhs = torch.cat([z, 0.5 * (z * z).sum(1, keepdim=True), z_one[:, -1:]], dim=1)
        own = torch.arange(n, device=device) if own is None else own
        k = len(log_pi)
        duplicate = own >= 0  # the own point has a column of its own; its copy in the reference stays out
        corrections = []
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            m = len(x[rows])
            ref = (lhs[rows].reshape(m * k, dim + 2) @ rhs.T).reshape(m, k, -1)  # the other points' log-weights
            pairs = duplicate[rows].nonzero()[:, 0]
            pairs = (pairs, own[rows][pairs])
            forbidden = None if allowed is None else ~allowed[rows, None, :]

            def exclude():
                ref.transpose(1, 2)[pairs] = -math.inf
                if forbidden is not None:
                    ref.masked_fill_(forbidden, -math.inf)

            exclude()
            top = torch.maximum(ref.flatten(1).amax(1), own_logit[rows].amax(1))[:, None]
            # log-weights more than 80 below the largest are floored there (such weights do not count), so
            # that float32 exp never makes slow subnormal numbers; then the excluded points are put back out
            ref.clamp_(min=top[:, :, None] - 80.0)
            exclude()
            w = ref.sub_(top[:, :, None]).exp_()  # unnormalised, in place
            own_w = (own_logit[rows] - top).clamp_(min=-80.0).exp_()
            sums = (z_one.T @ w.reshape(m * k, -1).T).T.reshape(m, k, dim + 1)  # [sum_j w_jk z_j, sum_j w_jk]
            total = sums[:, :, -1].sum(1, keepdim=True) + own_w.sum(1, keepdim=True)
            mass = sums[:, :, -1] / total  # O_k
            spread = sums[:, :, :-1] / total[:, :, None] - mass[:, :, None] * x1f[rows, None, :]
            correction = ((da[rows] - c[rows] * a[rows])[:, :, None] * spread).sum(1)
            if k > 1:
                r = torch.softmax(own_logit[rows], dim=1)
                d = mass - r * mass.sum(1, keepdim=True)
                correction = correction + (d[:, :, None] * (c[rows, :, None] * e[rows] + ds[rows, :, None] * mu)).sum(1)
            corrections.append(correction)
        return sample.velocity + torch.cat(corrections).reshape(x1.shape).to(sample.velocity.dtype)

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


# -- sampling under another schedule ------------------------------------------------------------------
def _resolve_schedule(schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, AffinePath):
        return schedule.schedule
    if isinstance(schedule, str):
        return make_path(schedule).schedule
    raise FlowmatchError(f"a schedule must be a Schedule, an AffinePath or a path name ({', '.join(PATHS)}), got {schedule!r}")


def _log_snr(s: Schedule, t: torch.Tensor) -> torch.Tensor:
    return torch.log(s.alpha(t)) - torch.log(s.sigma(t))


def transform_schedule(velocity: Callable, trained, target, *, iterations: int = 60) -> Callable:
    """The velocity field of a model trained on schedule ``trained``, rewritten for schedule ``target``.

    Both paths carry the same (x0, x1) coupling: x_t = alpha_t x1 + sigma_t x0 and
    xbar_r = alphabar_r x1 + sigmabar_r x0 are one rescaled by the other, xbar_r = s_r x_{t_r}, where
    t_r matches the signal-to-noise ratio, alpha_{t_r} / sigma_{t_r} = alphabar_r / sigmabar_r, and
    s_r = alphabar_r / alpha_{t_r} = sigmabar_r / sigma_{t_r}. The marginal velocity under the target is

        ubar_r(x) = (s'_r / s_r) x + s_r t'_r u_{t_r}(x / s_r),
        t'_r = (alphabar'_r sigmabar_r - alphabar_r sigmabar'_r) / ((alpha'_t sigma_t - alpha_t sigma'_t) s_r^2),

    and s'_r from s_r = alphabar_r / alpha_{t_r} near the data end (sigmabar_r / sigma_{t_r} near
    the noise end, whichever is better conditioned). Both schedules start at noise (alpha 0, sigma 1)
    and end at data (alpha 1, sigma 0), so s_0 = s_1 = 1: integrating ``ubar`` from 0 to 1 lands where
    integrating u does, sample for sample, for an exact field (Meta's ``ScheduleTransformedModel``
    does the same). t_r is found by bisection on the log-SNR (``iterations`` halvings, to float64
    resolution); the trained schedule's SNR must increase with t, as every built-in one does (a
    gaussian path with sigma_min > 0 never reaches the data end's infinite SNR, so its last step is
    approximate by that much).
    """
    trained, target = _resolve_schedule(trained), _resolve_schedule(target)

    def transformed(x: torch.Tensor, r) -> torch.Tensor:
        r = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
        ab, sb, dab, dsb = target.alpha(r), target.sigma(r), target.d_alpha(r), target.d_sigma(r)
        t = _match_snr(trained, ab, sb, iterations)
        a, s, da, ds = trained.alpha(t), trained.sigma(t), trained.d_alpha(t), trained.d_sigma(t)
        near_data = a >= s  # divide by the larger of alpha and sigma (neither is 0 on its side)
        big_a, big_s = torch.where(near_data, a, 1.0), torch.where(near_data, 1.0, s)
        scale = torch.where(near_data, ab / big_a, sb / big_s)
        dt = (dab * sb - ab * dsb) / ((da * s - a * ds) * scale**2)
        ds_dr = torch.where(near_data, (dab * a - ab * da * dt) / big_a**2, (dsb * s - sb * ds * dt) / big_s**2)
        column = lambda c: c.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # noqa: E731
        u = velocity(x / column(scale), t.to(x.device, x.dtype).expand(x.shape[0]))
        return column(ds_dr / scale) * x + column(scale * dt) * u

    return transformed


def _match_snr(schedule: Schedule, alpha: torch.Tensor, sigma: torch.Tensor, iterations: int) -> torch.Tensor:
    """t in [0, 1] with alpha_t / sigma_t = alpha / sigma (0 and 1 at the ends), by bisection on the log-SNR."""
    target = torch.log(alpha) - torch.log(sigma)  # -inf at noise, +inf at data
    low, high = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(iterations):
        mid = (low + high) / 2
        below = _log_snr(schedule, mid) < target
        low, high = torch.where(below, mid, low), torch.where(below, high, mid)
    t = (low + high) / 2
    t = torch.where(torch.isneginf(target), torch.zeros_like(t), t)
    return torch.where(torch.isposinf(target), torch.ones_like(t), t)

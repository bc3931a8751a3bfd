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
    s = path.sample(x0, x1, t)         # VelocitySample(x_t, velocity, t)
    loss = ((model(s.x_t, t) - s.velocity) ** 2).mean()
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.paths.base import VelocitySample
from flowmatch.paths.schedules import CosineSchedule, GaussianSchedule, LinearSchedule, Schedule

if TYPE_CHECKING:
    from flowmatch.densities import GaussianMixture


PREDICTIONS = ("velocity", "x1", "x0")


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

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> VelocitySample:  # fmt: skip
        """x_t and u_t for pairs (x0, x1) at per-sample times t of shape (batch,) (:class:`~flowmatch.paths.base.ProbabilityPath`).

        ``noise`` (eps, shaped like x1) is needed only when the path has bridge noise; without it, ``generator`` draws it.
        """
        rates = self.schedule.constant_rates
        if rates is not None:  # alpha' and sigma' are numbers: the same values without tensors of them
            tt = _as_time(t, x1)
            x_t = self.schedule.alpha(tt) * x1 + self.schedule.sigma(tt) * x0
            da, ds = rates  # 1 x1 is x1 and x1 + (-1) x0 is x1 - x0, exactly
            velocity = (x1 if da == 1.0 else da * x1) + ds * x0 if ds != -1.0 else (x1 if da == 1.0 else da * x1) - x0
        else:
            a, s, da, ds = self._coefficients(t, x1)
            x_t, velocity = a * x1 + s * x0, da * x1 + ds * x0
        if self.bridge_sigma > 0:
            if noise is None and generator is not None:
                noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype).to(x1.device)
            if noise is None:
                raise FlowmatchError("a path with bridge noise needs the noise eps (or a generator to draw it)")
            tt = _as_time(t, x1)
            g = self.bridge_sigma * torch.sqrt(tt * (1 - tt))
            tc = tt.clamp(1e-4, 1 - 1e-4)
            dg = self.bridge_sigma * (1 - 2 * tc) / (2 * torch.sqrt(tc * (1 - tc)))
            x_t, velocity = x_t + g * noise, velocity + dg * noise
        return VelocitySample(x_t=x_t, velocity=velocity, t=t)

    def posterior_velocity(
        self,
        sample: VelocitySample,
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
        like: dict[str, Any] = dict(dtype=dtype, device=device)
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
            dup_rows = duplicate[rows].nonzero()[:, 0]
            pairs = (dup_rows, own[rows][dup_rows])
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
    if not (isinstance(t, torch.Tensor) and t.dtype == like.dtype and t.device == like.device):  # else as it is
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

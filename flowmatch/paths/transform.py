"""Sampling a trained model under another schedule: the schedule transform by matched signal-to-noise ratio."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import PATHS, AffinePath, make_path
from flowmatch.paths.schedules import Schedule

if TYPE_CHECKING:
    pass


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

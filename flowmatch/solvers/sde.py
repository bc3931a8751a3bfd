"""Stochastic sampling with the flow's marginals, for Gaussian affine paths.

**The score from the velocity.** On x_t = alpha_t x1 + sigma_t x0 with x0 ~ N(0, I), the marginal
velocity and the point itself are two linear equations in the posterior means of the endpoints,

    v(x, t) = alpha'_t E[x1 | x_t = x] + sigma'_t E[x0 | x_t = x],
    x       = alpha_t  E[x1 | x_t = x] + sigma_t  E[x0 | x_t = x],

and Tweedie's formula gives the score from the noise's mean, s(x, t) = grad log p_t(x) = -E[x0 | x] / sigma_t.
Eliminating E[x1 | x]:

    s(x, t) = (alpha_t v(x, t) - alpha'_t x) / (sigma_t (alpha'_t sigma_t - alpha_t sigma'_t)).

**An SDE with the same marginals.** For any diffusion level g_t >= 0,

    dx = [v(x, t) + (g_t^2 / 2) s(x, t)] dt + g_t dW

has the marginals p_t of the ODE dx = v dt: the extra drift (g^2 / 2) grad log p_t and the diffusion
(g^2 / 2) Laplacian p_t cancel in the Fokker-Planck equation. The noise schedule here is
g_t^2 = noise * sigma_t: it vanishes at the data end (t = 1), where the score's 1 / sigma_t diverges,
and the drift it adds, (noise / 2) (alpha_t v - alpha'_t x) / (alpha'_t sigma_t - alpha_t sigma'_t), stays
finite everywhere (linear path: (noise / 2) (t v - x)). ``diffusion`` replaces it with any g_t^2.

**Euler-Maruyama** on a uniform grid of ``nfe`` steps, one velocity call a step:

    x_{n+1} = x_n + h [v + (g^2 / 2) s] + sqrt(h) g eps_n,   eps_n ~ N(0, I).

With noise 0 the step is the Euler step of :func:`flowmatch.solvers.integrate`, computed the same way,
so ``noise=0`` gives back the ODE sampler bit for bit (no random numbers are drawn).

Example::

    sol = sde_sample(model, torch.randn(512, 2), make_path("linear"), nfe=100, noise=1.0, generator=g)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath
from flowmatch.solvers.grids import time_grid
from flowmatch.solvers.integration import Solution, Velocity


def score_from_velocity(path: AffinePath, v: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
    """s(x, t) = (alpha_t v - alpha'_t x) / (sigma_t (alpha'_t sigma_t - alpha_t sigma'_t)) (module docstring);
    t a number, a 0-dim tensor or one time per row. Infinite at sigma_t = 0 (the data end of the path)."""
    a, s, da, ds = _coefficients(path, t, x)
    return (a * v - da * x) / (s * (da * s - a * ds))


def sde_sample(
    velocity: Velocity,
    x0: torch.Tensor,
    path: AffinePath,
    *,
    nfe: int = 100,
    noise: float = 1.0,
    diffusion: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> Solution:
    """Euler-Maruyama from the source sample ``x0`` (t = 0) to t = 1 (module docstring): exactly ``nfe``
    calls of ``velocity(x, t)`` (t a 0-dim tensor, as :func:`flowmatch.solvers.integrate` passes it).
    ``noise`` scales the default diffusion g_t^2 = noise sigma_t; ``diffusion(t)`` gives g_t^2 itself."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
        raise FlowmatchError(f"noise must be a finite number >= 0, got {noise!r}")
    if not isinstance(path, AffinePath) or path.bridge_sigma > 0:
        raise FlowmatchError("the SDE sampler needs a Gaussian affine path (no bridge noise): the score comes from its alpha_t, sigma_t")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise FlowmatchError("x0 must be a floating-point tensor")
    times = time_grid("uniform", nfe, 0.0, 1.0)
    h = times.diff().tolist()
    at = times.to(device=x0.device, dtype=x0.dtype)
    stochastic = diffusion is not None or noise > 0
    x = x0
    states = [x0] if return_trajectory else None
    for n in range(nfe):
        t = at[n]
        v = velocity(x, t)
        if not stochastic:
            x = x.add(v, alpha=h[n])  # the Euler step of integrate(), operation for operation
        else:
            g2 = _diffusion(path, t, x, noise) if diffusion is None else torch.as_tensor(diffusion(t), dtype=x.dtype, device=x.device)
            drift = v + 0.5 * _scaled_score(path, v, x, t, g2)
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu" if generator is None else generator.device)
            x = x + h[n] * drift + math.sqrt(h[n]) * g2.clamp_min(0).sqrt() * eps.to(x.device)
        if states is not None:
            states.append(x)
    return Solution(
        x=x, nfe=nfe, times=times if return_trajectory else None, trajectory=torch.stack(states) if states is not None else None
    )


def _coefficients(path: AffinePath, t, like: torch.Tensor):
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 1:
        t = t.reshape(-1, *[1] * (like.ndim - 1))
    s = path.schedule
    return s.alpha(t), s.sigma(t), s.d_alpha(t), s.d_sigma(t)


def _diffusion(path: AffinePath, t: torch.Tensor, like: torch.Tensor, noise: float) -> torch.Tensor:
    """g_t^2 = noise sigma_t."""
    return noise * _coefficients(path, t, like)[1]


def _scaled_score(path: AffinePath, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """g_t^2 s(x, t), finite where g_t^2 vanishes with sigma_t (the default schedule): the sigma_t of the
    score's denominator cancels against g_t^2 = noise sigma_t before dividing."""
    a, s, da, ds = _coefficients(path, t, x)
    ratio = torch.where(s > 0, g2 / torch.where(s > 0, s, 1), torch.zeros_like(s))
    return ratio * (a * v - da * x) / (da * s - a * ds)

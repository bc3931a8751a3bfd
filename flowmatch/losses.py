"""Losses as functions: the flow-matching loss, its training times and weights, and the distillation loss.

They take tensors, a path and any model called as ``model(x, t, **condition)`` (class labels as
``y``, other conditions by name), so that a loop of one's own is a few lines; ``flowmatch.engine.train`` calls the same
functions.

**Flow matching.** For pairs (x0, x1) and times t,

    L = (1/n) sum_i w(t_i) || v(x_{t_i}, t_i) - u_i ||^2 / D,   x_t = alpha_t x1 + sigma_t x0,

with the conditional target u_i = alpha'_t x1 + sigma'_t x0 (each pair's own velocity), or the
posterior target (``posterior=``): u_i averaged over the reference points z_j (and the source's
components) by how likely each makes x_{t_i} (:meth:`flowmatch.paths.affine.AffinePath.posterior_velocity`).
Both have the marginal velocity field as their minimiser; the posterior's variance is far lower at
early times.

**Weights** (:func:`loss_weights`): ``x1`` and ``x0`` turn the velocity error into the data- or
noise-prediction error: x1 = (sigma'_t x_t - sigma_t u) / det, det = alpha_t sigma'_t - sigma_t alpha'_t,
so w = (sigma_t / det)^2 (and (alpha_t / det)^2 for x0).

**Times** (:func:`sample_times`): uniform or logit-normal t = sigmoid(m + s Phi^-1(u)), then an
optional shift toward noise r <- k r / (1 + (k - 1) r) of r = 1 - t; the uniforms u stratified in K
strata, u_k = (k + v) / K with one v ~ U[0, 1) per batch, each shared by a run of n / K pairs.

**Distillation** (:func:`distillation_loss`): || Phi(x0) - x1 ||^2 / D, Phi the student's ``nfe``
Euler steps from t = 0 to 1, backpropagated through every step.

**MeanFlow** (:func:`meanflow_loss`; Geng et al. 2025, "Mean Flows for One-step Generative Modeling").
A two-time model learns the average velocity over an interval,

    u(x, r, t) = (1 / (t - r)) int_r^t v(x_s, s) ds,   x_r = x, 0 <= r <= t <= 1,

the flow's displacement from x at time r to time t divided by the time: x_t = x_r + (t - r) u(x_r, r, t),
so one call of u(x0, 0, 1) carries noise to data (:func:`flowmatch.solvers.mean_flow_sample`), and
u(x, t, t) = v(x, t). Keeping x_t fixed and sliding the start point x_r along the flow,
(t - r) u(x_r, r, t) = x_t - x_r; its derivative in r, -u + (t - r) du/dr = -v(x_r, r), is the
*MeanFlow identity* in this package's direction:

    u(x_r, r, t) = v(x_r, r) + (t - r) du/dr,     du/dr = v(x_r, r) . grad_x u + d_r u,

the total derivative along the flow, one forward-mode Jacobian-vector product (``torch.func.jvp``)
of (x, r) -> u(x, r, t) with tangents (v, 1) (and 0 for t). It holds for the marginal velocity v;
regressing onto it with the pair's conditional velocity v_r = alpha'_r x1 + sigma'_r x0 in its place
has the same minimiser, as in flow matching. The loss is

    L = (1/n) sum_i sg(w_i) ||u_theta(x_{r_i}, r_i, t_i) - sg(u_tgt,i)||^2 / D,   u_tgt = v_r + (t - r) du_theta/dr,

with sg the stop-gradient and the adaptive weight w = 1 / (||delta||^2 / D + c)^p (p = 1, c = 1e-3; p = 0
is the plain mean square). Rows with r = t are plain flow matching (the target is v_r).

*The paper's time runs the other way* (data at 0, noise at 1, z_tau = (1 - tau) x + tau eps). Its
u(z, r', t') sits at the noisier time t' > r' and steps back to r'. With t = 1 - r' and r = 1 - t' that is
our u(x, r, t) sitting at r < t and stepping forward, with the sign of every velocity flipped; its
identity u = v - (t' - r') du/dt' becomes ours above (d/dt' = -d/dr), its jvp tangents (v, 0, 1) on
(z, r', t') become (v, 1, 0) on (x, r, t), and its embedding of (t', t' - r') is our (r, t - r) (the
time of the evaluated point and the interval's length). Its logit-normal times, tau = sigmoid(-0.4 +
N(0, 1)), are t = 1 - tau = sigmoid(+0.4 + N(0, 1)) here; its t' = max and r' = min of two draws are our
r = min and t = max; and its share of r' = t' (75%) sets our t = r (:func:`meanflow_times`).

*Guidance* folded into the target (the paper's section 4.2): the velocity in the identity becomes the
guided field v~ = omega v_r + kappa u_theta(x, r, r | c) + (1 - omega - kappa) u_theta(x, r, r | null),
the model's own instantaneous velocities without gradient (kappa, the paper's mixing scale, 0 by
default); rows whose condition was dropped keep v~ = v_r. A model trained this way samples guided
at one call, with no second, unconditional evaluation.

A loop of one's own::

    path = flowmatch.make_path("linear")
    for step in range(1000):
        x1 = next(batches); x0 = torch.randn_like(x1)
        t = sample_times(len(x1), strata=32)
        loss = flow_matching_loss(model, path, x0, x1, t)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flowmatch.densities import GaussianMixture
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath, make_path

TIME_DISTRIBUTIONS = ("uniform", "logit-normal")
WEIGHTS = ("none", "x1", "x0")


def sample_times(
    n: int,
    generator: torch.Generator | None = None,
    *,
    distribution: str = "uniform",
    strata: int = 0,
    loc: float = 0.0,
    scale: float = 1.0,
    shift: float = 1.0,
) -> torch.Tensor:
    """``n`` training times in [0, 1] (see the module docstring); ``strata`` 0 draws each on its own.

    Stratified, every u_k is U[0, 1) on its own, so the loss stays an unbiased estimate of the
    integral over t, with less variance; and a model that sees a time repeated can evaluate its time
    embedding once per run (``flowmatch.models.MLP`` does).
    """
    if distribution not in TIME_DISTRIBUTIONS:
        raise FlowmatchError(f"time distribution must be one of {', '.join(TIME_DISTRIBUTIONS)}, got {distribution!r}")
    for name, value in (("n", n), ("strata", strata)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FlowmatchError(f"sample_times: {name} must be an integer >= 0, got {value!r}")
    for name, number in (("scale", scale), ("shift", shift)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
            raise FlowmatchError(f"sample_times: {name} must be a finite number > 0, got {number!r}")
    strata = min(strata, n)
    u = _stratified_uniforms(n, strata, generator) if strata else None
    if distribution == "uniform":
        t = torch.rand(n, generator=generator) if u is None else u
    else:  # logit-normal; stratified through the normal's inverse CDF
        z = torch.randn(n, generator=generator) if u is None else torch.special.ndtri(u.clamp(min=2**-24))
        t = torch.sigmoid(loc + scale * z)
    if shift != 1.0:
        r = 1.0 - t
        t = 1.0 - shift * r / (1.0 + (shift - 1.0) * r)
    return t


def _stratified_uniforms(n: int, strata: int, generator: torch.Generator | None) -> torch.Tensor:
    """(k + v) / strata for k = 0..strata-1, one v ~ U[0, 1), in consecutive runs that sum to n.

    The runs' k come from a cached (n,) tensor, so a draw is four small operations: a training step of a small
    model pays for each (measured: the stratified draw cost 58 us a step in the loop at batch 128 when it formed
    the strata and then repeated them, 10 us now)."""
    v = torch.rand(1, generator=generator)
    t = (_strata_steps(n, strata) + v) / strata
    # (strata - 1 + v) / strata can round to 1 in float32, for v within a few ulps of 1 only: the clamp (which
    # changes nothing else, 1 - 2**-24 being the largest float32 below 1) runs only then
    return t.clamp_(max=1.0 - 2**-24) if v.item() > 1.0 - strata * 2**-20 else t


@functools.lru_cache(maxsize=32)
def _strata_steps(n: int, strata: int) -> torch.Tensor:
    """k of each of n rows (float32, exact): k = 0..strata-1 in consecutive runs that sum to n (read only)."""
    runs = torch.full((strata,), n // strata, dtype=torch.long)
    runs[: n % strata] += 1
    return torch.arange(strata, dtype=torch.float32).repeat_interleave(runs)


def loss_weights(path: AffinePath, t: torch.Tensor, kind: str) -> torch.Tensor | None:
    """w(t) that turns the squared velocity error into the x1 or x0 error (None: no weighting)."""
    if kind not in WEIGHTS:
        raise FlowmatchError(f"loss weight must be one of {', '.join(WEIGHTS)}, got {kind!r}")
    if kind == "none":
        return None
    s = path.schedule
    det = s.alpha(t) * s.d_sigma(t) - s.sigma(t) * s.d_alpha(t)
    num = s.sigma(t) if kind == "x1" else s.alpha(t)
    return (num / det) ** 2


@dataclass
class Posterior:
    """What the posterior target averages over: ``reference`` points (R, D), each pair's ``own`` row in
    it (-1: not there; its own x1 is then added), an (n, R) mask of ``allowed`` points (e.g. the same
    class), and the ``source`` as a Gaussian mixture (None: N(0, I))."""

    reference: torch.Tensor
    own: torch.Tensor | None = None
    allowed: torch.Tensor | None = None
    source: GaussianMixture | None = None


def _check_pairs(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> None:
    """Pairs of one shape and one time per pair; times in [0, 1] where they lie on the CPU (on a device the check
    would wait for it at every step)."""
    if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor) or not isinstance(t, torch.Tensor):
        raise FlowmatchError("x0, x1 and t must be tensors")
    if x0.shape != x1.shape:
        raise FlowmatchError(f"x0 and x1 must have one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if x1.ndim < 1 or not len(x1):
        raise FlowmatchError(f"the loss needs at least one pair, got x1 of shape {tuple(x1.shape)}")
    if t.shape != x1.shape[:1]:
        raise FlowmatchError(f"t must hold one time per pair, shape ({len(x1)},), got {tuple(t.shape)}")
    if t.device.type == "cpu" and not (float(t.min()) >= 0.0 and float(t.max()) <= 1.0):
        raise FlowmatchError(f"times must lie in [0, 1], got values from {float(t.min()):g} to {float(t.max()):g}")


def flow_matching_loss(
    model,
    path: AffinePath,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    condition: dict[str, torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
    weight: str = "none",
    posterior: Posterior | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """The mean flow-matching loss of ``model`` on pairs (x0, x1) at times t (shape (n,)).

    ``condition`` are the model's keyword arguments per row (``labels`` is short for ``{"y": labels}``);
    ``noise`` is the eps of a path with bridge noise; ``posterior`` switches to the posterior target;
    ``autocast`` (e.g. torch.bfloat16) runs the model's call under ``torch.autocast`` while the path,
    the target and the loss stay float32.
    """
    _check_pairs(x0, x1, t)
    sample = path.sample(x0, x1, t, noise)
    velocity = sample.velocity
    if posterior is not None:
        velocity = path.posterior_velocity(sample, x1, posterior.reference, posterior.own, posterior.allowed, posterior.source)
    if labels is not None:
        condition = {"y": labels, **(condition or {})}
    if autocast is None:
        predicted = model(sample.x_t, t, **(condition or {}))
    else:  # the model's call only: the target, the error and its mean stay float32
        with torch.autocast(x1.device.type, dtype=autocast):
            predicted = model(sample.x_t, t, **(condition or {}))
    if predicted.dtype != velocity.dtype:  # a bf16 output back to float32
        predicted = predicted.to(velocity.dtype)
    weights = None if weight == "none" else loss_weights(path, t, weight)
    if weights is None:  # every row has as many entries: the mean of the row means is the mean, in one fused op
        return torch.nn.functional.mse_loss(predicted, velocity)
    squared = (predicted - velocity).pow(2)
    return (weights * (squared if squared.dim() == 2 else squared.flatten(1)).mean(1)).mean()


def distillation_loss(
    model,
    x0: torch.Tensor,
    x1: torch.Tensor,
    nfe: int,
    *,
    condition: dict[str, torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """|| x0 + sum of ``nfe`` Euler steps of the student - x1 ||^2, the mean over rows and dimensions."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
    x, h = x0, 1.0 / nfe
    with torch.autocast(x0.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        for i in range(nfe):
            x = x + h * model(x, torch.full((len(x),), i * h, device=x.device, dtype=x.dtype), **(condition or {})).to(x0.dtype)
        return (x - x1).pow(2).flatten(1).mean(1).mean()


# -- MeanFlow --------------------------------------------------------------------------------------
def meanflow_times(
    n: int,
    generator: torch.Generator | None = None,
    *,
    equal_share: float = 0.75,
    distribution: str = "logit-normal",
    loc: float = 0.4,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r): ``n`` intervals 0 <= r <= t <= 1 for :func:`meanflow_loss`, as the paper draws them.

    Two times per row from :func:`sample_times` (logit-normal sigmoid(loc + scale N(0, 1)) by default,
    or ``distribution="uniform"``), r the smaller (the point's time) and t the larger; then each row
    with probability ``equal_share`` gets t = r, plain flow matching. The defaults are the paper's
    best on ImageNet (25% of rows with r != t, logit-normal (-0.4, 1.0) in its time, which is
    (+0.4, 1.0) in ours: see the module docstring).
    """
    if isinstance(equal_share, bool) or not isinstance(equal_share, (int, float)) or not 0.0 <= equal_share <= 1.0:
        raise FlowmatchError(f"equal_share must be a number in [0, 1], got {equal_share!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowmatchError(f"meanflow_times: n must be an integer >= 0, got {n!r}")
    both = sample_times(2 * n, generator, distribution=distribution, loc=loc, scale=scale).reshape(2, n)
    r, t = torch.minimum(both[0], both[1]), torch.maximum(both[0], both[1])
    equal = torch.rand(n, generator=generator) < equal_share
    return torch.where(equal, r, t), r


def meanflow_target(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t,
    r,
    velocity: torch.Tensor,
    *,
    condition: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """u_tgt = v + (t - r) du/dr at points x of time r (module docstring), without gradient.

    ``model(x, t, r=r, **condition)`` is u(x, r, t); ``velocity`` the v(x, r) of the identity (the
    marginal velocity makes u_tgt the exact average velocity; a path's conditional velocity, as in
    training, its unbiased stand-in). t and r are numbers or one per row, with r <= t.

    du/dr is one ``torch.func.jvp`` of (x, r) -> u(x, r, t) with tangents (v, 1), under ``no_grad``
    and with autocast off: the target is a stop-gradient, so no graph is kept, and it is computed in
    the inputs' precision (float32 under bf16 training: the (t - r) du/dr term is a difference of
    nearby quantities that bf16's 8-bit mantissa would swamp). Only rows with r < t are evaluated
    (rows with r = t have the target v): with the paper's 75% of r = t that is a quarter of the
    batch, at the cost of one host synchronisation. A DDP or ``torch.compile`` wrapper is taken off
    ``model`` first (see :func:`meanflow_loss`).
    """
    n = x.shape[0]
    t, r = _per_row(t, n, x), _per_row(r, n, x)
    target = velocity.detach()
    rows = torch.nonzero(t > r).reshape(-1)
    if rows.numel() == 0:
        return target
    if rows.numel() < n:
        x, velocity, t, r = x[rows], velocity[rows], t[rows], r[rows]
        condition = {
            k: (c[rows] if isinstance(c, torch.Tensor) and c.ndim and c.shape[0] == n else c) for k, c in (condition or {}).items()
        }
    inner = _unwrapped(model)
    kwargs = condition or {}

    def u(x_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
        return inner(x_, t, r=r_, **kwargs)

    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        du = torch.func.jvp(u, (x.detach(), r.detach()), (velocity.detach(), torch.ones_like(r)))[1]
    step = (t - r).reshape(-1, *[1] * (x.ndim - 1)) * du.to(target.dtype)
    if rows.numel() == n:
        return target + step
    return target.index_add(0, rows, step)


def meanflow_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    *,
    path: AffinePath | None = None,
    labels: torch.Tensor | None = None,
    condition: dict[str, torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
    velocity: torch.Tensor | None = None,
    posterior: Posterior | None = None,
    guidance: float = 1.0,
    guidance_mix: float = 0.0,
    null_class: int | None = None,
    power: float = 1.0,
    offset: float = 1e-3,
    target_model: Callable[..., torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """The MeanFlow loss of a two-time ``model`` on pairs (x0, x1) and intervals [r, t] (module docstring).

    ``model(x, t, r=r, **condition)`` is u(x, r, t), x at time r <= t (the built-in ``MLP`` and
    ``UNet`` with ``times=2``, or any callable taking r by keyword); t, r of shape (n,), e.g. from
    :func:`meanflow_times`. The point is x_r on ``path`` (default linear) and v its conditional
    velocity, unless ``velocity`` (n, ...) is given in its place (a marginal velocity), or ``posterior``
    asks for the posterior velocity at x_r (as in :func:`flow_matching_loss`: the batch's estimate of
    the marginal velocity, for which the identity holds exactly, with far less variance than a pair's
    own at early times).

    - ``labels``/``condition``/``noise``: as :func:`flow_matching_loss`.
    - ``guidance`` omega != 1 or ``guidance_mix`` kappa != 0: the guided target field v~ of the module
      docstring, the null condition built as training drops conditions: label ``null_class`` for
      integer conditions, NaN rows for float ones; rows already dropped keep v.
    - ``power`` p and ``offset`` c: the adaptive weight sg(1 / (e + c)^p) of each row's mean square
      error e (p = 0: the plain mean square). The paper sums the square over dimensions where this
      averages (as :func:`flow_matching_loss` does), so its c is D times this one. With p > 0 the
      loss is a robust one (p = 1: its gradient is that of log(e + c)), whose minimiser is not the mean of
      the target where e varies much between rows, as in low dimension: on two 2-D Gaussians (data
      x-variance 4.25) the r = t field's ODE samples had x-variance 5.45 at p = 1 and 4.43 at p = 0
      after 2000 steps (one seed), though the 1-step samples were better at p = 1 (4.1 against 4.3-4.7
      after 1000 steps). In high dimension e concentrates and w acts as a per-time weight.
    - ``autocast`` (e.g. torch.bfloat16): the model's trained call runs under ``torch.autocast``;
      the target (jvp and guidance calls) stays in the inputs' precision (:func:`meanflow_target`).
    - ``target_model``: what the target is computed with (default: ``model`` with any DDP or
      ``torch.compile`` wrapper taken off; the same weights).

    DDP: ``torch.func.jvp`` cannot run through DistributedDataParallel's forward (pytorch issues
    102197, 182661), so the target's calls, all without gradient, go to the wrapped module itself,
    and ``model`` (the DDP wrapper) is called once, with gradient, for the prediction: one forward
    per backward, as DDP expects, and no parameter is touched in place. Against the paper's single
    jvp with gradient, whose primal output is the prediction, that is one plain forward more, but
    the jvp runs on the rows with r < t only (a quarter by default) and keeps no graph. The target's
    calls skip DDP's forward, and with it its buffer broadcast (the built-in models have no buffers)
    and ``torch.compile`` (they run eagerly). If ``model`` is a plain function around a DDP module,
    pass the inner module's function as ``target_model``. Dropout makes the target's and the
    prediction's masks differ.
    """
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise FlowmatchError(f"guidance must be a finite number, got {guidance!r}")
    if isinstance(guidance_mix, bool) or not isinstance(guidance_mix, (int, float)) or not math.isfinite(guidance_mix):
        raise FlowmatchError(f"guidance_mix must be a finite number, got {guidance_mix!r}")
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
        raise FlowmatchError(f"the adaptive weight's power must be a finite number >= 0, got {power!r}")
    if not (isinstance(offset, (int, float)) and math.isfinite(offset) and offset > 0):
        raise FlowmatchError(f"the adaptive weight's offset must be a finite number > 0, got {offset!r}")
    if bool((r > t).any()):
        raise FlowmatchError("meanflow_loss needs intervals with r <= t (x at time r, carried to t)")
    path = make_path("linear") if path is None else path
    sample = path.sample(x0, x1, r, noise)
    if velocity is not None and posterior is not None:
        raise FlowmatchError("give meanflow_loss a velocity or a posterior, not both")
    v = sample.velocity if velocity is None else velocity
    if posterior is not None:
        v = path.posterior_velocity(sample, x1, posterior.reference, posterior.own, posterior.allowed, posterior.source)
    if v.shape != sample.x_t.shape:
        raise FlowmatchError(f"velocity must be shaped like the points {tuple(sample.x_t.shape)}, got {tuple(v.shape)}")
    condition = {**({} if labels is None else {"y": labels}), **(condition or {})}
    teacher = _unwrapped(model) if target_model is None else target_model
    if guidance != 1.0 or guidance_mix != 0.0:
        v = _guided_velocity(teacher, sample.x_t, r, v, condition, float(guidance), float(guidance_mix), null_class)
    target = meanflow_target(teacher, sample.x_t, t, r, v, condition=condition)
    with torch.autocast(x1.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        predicted = model(sample.x_t, t, r=r, **condition)
    error = (predicted.to(target.dtype) - target).pow(2).flatten(1).mean(1)  # a bf16 output back to float32
    if power == 0:
        return error.mean()
    return (error / (error.detach() + offset) ** power).mean()


def _per_row(t, n: int, like: torch.Tensor) -> torch.Tensor:
    """Times as an (n,) tensor of ``like``'s dtype and device (a number or 0-dim tensor repeated)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(n)


def _unwrapped(model):
    """``model`` without DistributedDataParallel and ``torch.compile`` wrappers (the same parameters)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _guided_velocity(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    r: torch.Tensor,
    velocity: torch.Tensor,
    condition: dict[str, torch.Tensor],
    guidance: float,
    mix: float,
    null_class: int | None,
) -> torch.Tensor:
    """v~ = omega v + kappa u(x, r, r | c) + (1 - omega - kappa) u(x, r, r | null); v where the condition was dropped."""
    if not condition:
        raise FlowmatchError("guidance needs a condition (labels or condition) to drop")
    null, dropped = {}, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for name, value in condition.items():
        if value.dtype.is_floating_point:
            null[name] = torch.full_like(value, math.nan)
            dropped |= torch.isnan(value.reshape(x.shape[0], -1)).any(1)
        else:
            if null_class is None:
                raise FlowmatchError(f"guidance needs null_class, the null label of the integer condition {name!r}")
            null[name] = torch.full_like(value, null_class)
            dropped |= (value == null_class).reshape(x.shape[0], -1).any(1)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        guided = guidance * velocity + (1.0 - guidance - mix) * model(x, r, r=r, **null).to(velocity.dtype)
        if mix != 0.0:
            guided = guided + mix * model(x, r, r=r, **condition).to(velocity.dtype)
    return torch.where(dropped.reshape(-1, *[1] * (x.ndim - 1)), velocity, guided)

"""Losses as functions: the flow-matching loss, its training times and weights, and the distillation loss.

They take tensors, a path and any model called as ``model(x, t, **condition)`` (class labels as
``y``, other conditions by name), so that a loop of one's own is a few lines; ``flowmatch.training.train`` calls the same
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

A loop of one's own::

    path = flowmatch.make_path("linear")
    for step in range(1000):
        x1 = next(batches); x0 = torch.randn_like(x1)
        t = sample_times(len(x1), strata=32)
        loss = flow_matching_loss(model, path, x0, x1, t)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowmatch.data.toy import GaussianMixture
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath

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
    """(k + v) / strata for k = 0..strata-1, one v ~ U[0, 1), in consecutive runs that sum to n."""
    v = torch.rand(1, generator=generator)
    runs = torch.full((strata,), n // strata, dtype=torch.long)
    runs[: n % strata] += 1
    u = ((torch.arange(strata) + v) / strata).repeat_interleave(runs, output_size=n)
    return u.clamp(max=1.0 - 2**-24)  # (strata - 1 + v) / strata can round to 1 in float32


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
    sample = path.sample(x0, x1, t, noise)
    velocity = sample.velocity
    if posterior is not None:
        velocity = path.posterior_velocity(sample, x1, posterior.reference, posterior.own, posterior.allowed, posterior.source)
    with torch.autocast(x1.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        condition = {**({} if labels is None else {"y": labels}), **(condition or {})}
        predicted = model(sample.x_t, t, **condition)
        error = (predicted.to(velocity.dtype) - velocity).pow(2).flatten(1).mean(1)  # a bf16 output back to float32
        weights = loss_weights(path, t, weight)
        return (error if weights is None else weights * error).mean()


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

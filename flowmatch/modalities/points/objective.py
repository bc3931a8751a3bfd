"""One training step's loss: draw the batch and its times, take this process's shard, and evaluate the
flow-matching loss (conditional or posterior target), the distillation loss or the MeanFlow loss."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from flowmatch.engine.schedules import batch_size_at
from flowmatch.losses import Posterior, distillation_loss, flow_matching_loss, meanflow_loss, meanflow_times
from flowmatch.losses import sample_times as losses_sample_times
from flowmatch.modalities.points.pairs import PairSampler

#: The posterior target averages over (data point, source component) pairs: the first
#: min(POSTERIOR_REFERENCE, POSTERIOR_PAIRS / K) points of the global batch (and the pair's own), each
#: with every one of the source's K components (one for N(0, I): the whole default batch of 512; 8
#: for 8gaussians: 256 points). Its cost is (batch x points x K) a step; the whole batch learns
#: fastest (bench/results/design-figures.md). ``target = auto`` takes the posterior on finite data from
#: 4 x POSTERIOR_REFERENCE training rows (:data:`flowmatch.engine.options.POSTERIOR_MIN_ROWS`).
POSTERIOR_REFERENCE = 512


POSTERIOR_PAIRS = 2048


class Objective:
    """``objective(step, generator)`` is step ``step``'s loss (a 0-dim tensor) on this process.

    With global batches (a flowmatch data set) every process draws the same ``batch_size * world``
    pairs, times and noise and takes its own shard; a stream's batch is this process's own. The
    posterior target averages over the first ``reference_size`` points of the global batch, the same on
    every process, restricted to a pair's own class where there are labels.

    MeanFlow draws its intervals (t, r) with :func:`~flowmatch.losses.meanflow_times` from the
    config's time distribution, and computes its target with ``target_net``: the model without its
    DistributedDataParallel wrapper (``torch.func.jvp`` cannot run through DDP), on flat rows as ``net``.
    """

    def __init__(
        self, config: Any, pairs: PairSampler, path, net, *, device: torch.device, world: int, rank: int,
        streamed: bool, posterior: bool, source_mixture: Any, null_class: int, autocast: torch.dtype | None,
        target_net=None,
    ):  # fmt: skip
        self.config, self.pairs, self.path, self.net, self.target_net = config, pairs, path, net, target_net
        self.device, self.world, self.rank, self.streamed = device, world, rank, streamed
        self.posterior, self.source_mixture, self.null_class, self.autocast = posterior, source_mixture, null_class, autocast
        self.last_condition: dict[str, torch.Tensor] = {}
        self.times = partial(
            losses_sample_times, distribution=config.time_sampling, strata=config.time_strata, loc=config.time_loc,
            scale=config.time_scale, shift=config.time_shift,
        )  # fmt: skip
        self.reference_size = min(POSTERIOR_REFERENCE, POSTERIOR_PAIRS // (1 if source_mixture is None else len(source_mixture.weights)))

    def __call__(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """The loss; raises StopIteration when a one-shot iterator of batches has run out."""
        config, device = self.config, self.device
        size = batch_size_at(config, step)
        x0, x1, condition, classes = self.pairs(size if self.streamed else size * self.world, generator)
        if config.objective == "meanflow":
            t, r = meanflow_times(
                len(x1), generator, equal_share=config.meanflow_equal_share, distribution=config.time_sampling,
                loc=config.time_loc, scale=config.time_scale,
            )  # fmt: skip
        else:
            t, r = self.times(len(x1), generator), None
        noise = torch.randn(x1.shape, generator=generator) if self.path.bridge_sigma > 0 else None
        shard = slice(0, len(x1)) if self.streamed else slice(self.rank * size, (self.rank + 1) * size)
        reference = on(device, x1[: self.reference_size]) if self.posterior else None  # the same on every process
        if self.world > 1:
            x0, x1, t = x0[shard], x1[shard], t[shard]
            condition = {k: v[shard] for k, v in condition.items()}
        if device.type != "cpu":  # the draws are the CPU's
            x0, x1, t = x0.to(device), x1.to(device), t.to(device)
            condition = {k: v.to(device) for k, v in condition.items()}
        over = None
        if reference is not None:  # each pair's own x1 is row (its index in the global batch) of the reference, if there
            own = torch.arange(shard.start, shard.stop, device=device)
            own = torch.where(own < len(reference), own, -1)
            allowed = same_class(condition.get("y"), None if classes is None else classes[: len(reference)], self.null_class)
            over = Posterior(reference, own, allowed, self.source_mixture)
        if config.objective == "distill":
            loss = distillation_loss(self.net, x0, x1, config.distill_nfe, condition=condition, autocast=self.autocast)
        elif config.objective == "meanflow":
            assert r is not None
            loss = meanflow_loss(
                self.net, x0, x1, t, on(device, r[shard]), path=self.path, condition=condition, posterior=over,
                noise=None if noise is None else on(device, noise[shard]), guidance=config.meanflow_guidance,
                guidance_mix=config.meanflow_guidance_mix, null_class=self.null_class if "y" in condition else None,
                power=config.meanflow_power, target_model=self.target_net, autocast=self.autocast,
            )  # fmt: skip
        else:
            loss = flow_matching_loss(
                self.net, self.path, x0, x1, t, condition=condition, noise=None if noise is None else on(device, noise[shard]),
                weight=config.loss_weight, posterior=over, autocast=self.autocast,
            )  # fmt: skip
        self.last_condition = condition  # what the message of a non-finite loss looks at
        return loss


def on(device: torch.device, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``device`` (itself when it is there already: ``.to`` costs microseconds a call even then)."""
    return tensor if tensor.device == device else tensor.to(device)


def same_class(labels: torch.Tensor | None, classes: torch.Tensor | None, null: int) -> torch.Tensor | None:
    """(n, R) mask of the batch points each pair's posterior may average over: those of its label's class,
    or all of them for a pair with the null label; None (all) for an unconditional model."""
    if labels is None:
        return None
    assert classes is not None
    classes = classes.to(labels.device)
    return (classes[None, :] == labels[:, None]) | (labels[:, None] == null)


def non_finite_message(value: float, step: int, condition: dict[str, torch.Tensor]) -> str:
    """The message for a loss that is NaN or infinite (naming the likely cause on dropped float conditions)."""
    hint = "try a smaller lr or grad_clip=1.0"
    dropped = [k for k, v in condition.items() if v.is_floating_point() and torch.isnan(v).any()]
    if dropped:
        hint = (
            f"condition dropout sets dropped rows of {', '.join(dropped)} to NaN: the model must map them to a learned null "
            "(as flowmatch's MLP does), or train with cond_dropout=0"
        )
    return f"training stopped: the loss is {value} at step {step}; {hint}"

"""An exponential moving average of the weights, used for sampling."""

from __future__ import annotations

import torch


class EMA:
    """theta_ema <- d_k theta_ema + (1 - d_k) theta after step k, d_k = min(decay, (1 + k) / (warmup + k)).

    The warm-up of d_k keeps early, random weights from dominating short runs: until d_k reaches
    ``decay`` the average spans about the last 1 / (1 - d_k) = (warmup + k) / (warmup - 1) steps, a
    fixed fraction of the run so far (a ninth for warmup 10). Off when decay = 0.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: int = 10):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()] if decay > 0 else None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.shadow is not None:
            decay = min(self.decay, (1 + self.updates) / (self.warmup + self.updates))
            torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1.0 - decay)
        self.updates += 1

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.shadow is None:
            return {}
        names = [name for name, _ in model.named_parameters()]
        return dict(zip(names, self.shadow))

    @torch.no_grad()
    def load(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], updates: int) -> None:
        self.updates = updates
        if self.shadow is not None:
            for (name, _), s in zip(model.named_parameters(), self.shadow):
                s.copy_(tensors[name])

    @torch.no_grad()
    def copy_into(self, model: torch.nn.Module, target: torch.nn.Module) -> torch.nn.Module:
        """Fill ``target`` (a copy of ``model``) with the EMA weights (the model's own when EMA is off)
        and the model's buffers; returns ``target``."""
        torch._foreach_copy_(list(target.parameters()), self.shadow or [p.detach() for p in model.parameters()])
        for b, source in zip(target.buffers(), model.buffers()):
            b.copy_(source)
        return target

    def averaged_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (a plain copy when EMA is off)."""
        import copy

        return self.copy_into(model, copy.deepcopy(model))

    def sampling_copy(self, model: torch.nn.Module, weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """The model a finished run samples with, in eval mode: a copy holding the EMA weights, or
        ``weights`` (e.g. those of the best validation step) where given."""
        sampler = self.averaged_copy(model)
        if weights is not None:
            sampler.load_state_dict(weights)
        return sampler.eval()

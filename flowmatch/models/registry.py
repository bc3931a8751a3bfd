"""Built-in models by name."""

from __future__ import annotations

from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.models.mlp import MLP, SeedMLP
from flowmatch.models.unet import UNet

MODELS = {"mlp": MLP, "seed-mlp": SeedMLP, "unet": UNet}


def build_model(name: str, dim: int, **options) -> nn.Module:
    """A velocity model by name for data of dimension ``dim``; options are the class's arguments."""
    if name not in MODELS:
        raise FlowmatchError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    try:
        return MODELS[name](dim, **options)
    except TypeError as exc:
        raise FlowmatchError(f"bad options for model '{name}': {exc}") from None

"""Velocity models called as ``model(x, t, **condition)``: the MLPs (:mod:`.mlp`), the U-Net (:mod:`.unet`),
and the registry that names and rebuilds them (:mod:`.registry`).

Names are imported from their modules on first use.
"""

import importlib

_EXPORTS = {
    "ACTIVATIONS": "mlp",
    "Attention": "unet",
    "Downsample": "unet",
    "MLP": "mlp",
    "MODELS": "registry",
    "ResBlock": "unet",
    "SeedMLP": "mlp",
    "UNet": "unet",
    "Upsample": "unet",
    "build_model": "registry",
    "from_config": "registry",
    "from_factory": "registry",
    "norm_groups": "unet",
    "sinusoidal_embedding": "mlp",
    "time_column": "mlp",
    "to_config": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

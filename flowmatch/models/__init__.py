"""Velocity models called as ``model(x, t, **condition)``: the MLPs (:mod:`.mlp`), the U-Net (:mod:`.unet`),
and the registry that names and rebuilds them (:mod:`.registry`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "ACTIVATIONS": "mlp",
    "Attention": "unet",
    "Downsample": "unet",
    "MLP": "mlp",
    "MixedMLP": "mixed",
    "MODELS": "registry",
    "ResBlock": "unet",
    "SeedMLP": "mlp",
    "TokenTransformer": "transformer",
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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

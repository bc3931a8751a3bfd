"""Discrete flow matching over tokens: the mixture path and its schedulers (:mod:`.paths`,
:mod:`.schedulers`), its losses (:mod:`.losses`), the jump sampler with its corrector and the joint sampler of
mixed rows (:mod:`.sampling`): math, importing nothing above it. The trained flow with its likelihood bound is
:mod:`flowmatch.flows.discrete`; runs on token sequences and mixed-type tables are :mod:`flowmatch.modalities.tokens`'
and :mod:`flowmatch.modalities.tables`'.

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "CORRECTOR_WINDOW": "sampling",
    "CosineScheduler": "schedulers",
    "LinearScheduler": "schedulers",
    "MixturePath": "paths",
    "PolynomialScheduler": "schedulers",
    "Scheduler": "schedulers",
    "cross_entropy_loss": "losses",
    "mixed_loss": "losses",
    "generalized_kl_loss": "losses",
    "jump_sample": "sampling",
    "make_scheduler": "schedulers",
    "mixed_sample": "sampling",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

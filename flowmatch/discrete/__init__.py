"""Discrete flow matching over tokens: the mixture path and its schedulers (:mod:`.paths`,
:mod:`.schedulers`), its losses (:mod:`.losses`) and the jump sampler (:mod:`.sampling`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "CosineScheduler": "schedulers",
    "LinearScheduler": "schedulers",
    "MixturePath": "paths",
    "PolynomialScheduler": "schedulers",
    "Scheduler": "schedulers",
    "cross_entropy_loss": "losses",
    "generalized_kl_loss": "losses",
    "jump_sample": "sampling",
    "make_scheduler": "schedulers",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

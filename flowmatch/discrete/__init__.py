"""Discrete flow matching over tokens: the mixture path and its schedulers (:mod:`.paths`,
:mod:`.schedulers`), its losses (:mod:`.losses`), the jump sampler with its corrector and the joint sampler of
mixed rows (:mod:`.sampling`), the trained flow with its likelihood bound (:mod:`.flow`), and training on token
sequences and mixed-type tables (:mod:`.training`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "CORRECTOR_WINDOW": "sampling",
    "CosineScheduler": "schedulers",
    "DiscreteFlow": "flow",
    "LinearScheduler": "schedulers",
    "MixturePath": "paths",
    "PolynomialScheduler": "schedulers",
    "Scheduler": "schedulers",
    "cross_entropy_loss": "losses",
    "fit_discrete": "training",
    "generalized_kl_loss": "losses",
    "jump_sample": "sampling",
    "make_scheduler": "schedulers",
    "mixed_sample": "sampling",
    "resolve_kind": "training",
    "train_discrete": "training",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

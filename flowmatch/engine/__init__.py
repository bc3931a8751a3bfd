"""The engine: one training loop for every modality (:mod:`.loop`), whole runs (:mod:`.fitting`), and their
parts: checkpoints (:mod:`.checkpoints`, :mod:`.state`), the EMA (:mod:`.ema`), schedules (:mod:`.schedules`),
devices and precision (:mod:`.devices`), torchrun (:mod:`.distributed`) and threads (:mod:`.threads`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "ADDED_KEYS": "fitting",
    "EMA": "ema",
    "FOLDER": "checkpoints",
    "STATE_META": "checkpoints",
    "STATE_TENSORS": "checkpoints",
    "PrecisionChoice": "devices",
    "TrainResult": "loop",
    "TrainingState": "state",
    "batch_size_at": "schedules",
    "choose_precision": "devices",
    "decide_precision": "devices",
    "fit": "fitting",
    "latest_state": "checkpoints",
    "learning_rate": "schedules",
    "list_states": "checkpoints",
    "load_state": "checkpoints",
    "optimizer_from_tensors": "checkpoints",
    "optimizer_to_tensors": "checkpoints",
    "prefixed": "checkpoints",
    "resolve_device": "devices",
    "resolve_precision": "devices",
    "resume_config": "fitting",
    "sample_times": "schedules",
    "save_state": "checkpoints",
    "stream_state": "state",
    "train": "loop",
    "unprefixed": "checkpoints",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

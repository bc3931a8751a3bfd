"""Training: the config (:mod:`.config`), the loop (:mod:`.loop`), its parts (:mod:`.pairs`, :mod:`.schedules`,
:mod:`.ema`, :mod:`.validation`, :mod:`.devices`, :mod:`.distributed`, :mod:`.checkpoints`), whole runs
(:mod:`.fit`), and reflow and distillation (:mod:`.rectify`).

Names are imported from their modules on first use.
"""

import importlib

_EXPORTS = {
    "ADDED_KEYS": "fitting",
    "EMA": "ema",
    "FIXED_KEYS": "rectify",
    "FOLDER": "checkpoints",
    "Objects": "inputs",
    "PAIR_SEED_OFFSET": "rectify",
    "POSTERIOR_MIN_ROWS": "config",
    "POSTERIOR_PAIRS": "config",
    "POSTERIOR_REFERENCE": "config",
    "PRESETS": "config",
    "PYTHON": "inputs",
    "PairSampler": "pairs",
    "STATE_META": "checkpoints",
    "STATE_TENSORS": "checkpoints",
    "TARGETS": "config",
    "TrainConfig": "config",
    "TrainResult": "loop",
    "TrainingData": "inputs",
    "VALIDATION_PAIRS": "validation",
    "Validation": "validation",
    "batch_size_at": "schedules",
    "distill": "rectify",
    "few_step_w2": "rectify",
    "fit": "fitting",
    "latest_state": "checkpoints",
    "learning_rate": "schedules",
    "list_states": "checkpoints",
    "load_pairs": "pairs",
    "load_state": "checkpoints",
    "make_pairs": "rectify",
    "optimizer_from_tensors": "checkpoints",
    "optimizer_to_tensors": "checkpoints",
    "prefixed": "checkpoints",
    "reflow": "rectify",
    "resolve_config": "config",
    "resolve_device": "devices",
    "resolve_path": "inputs",
    "resolve_precision": "devices",
    "resolve_select": "config",
    "resolve_source": "inputs",
    "resolve_target": "config",
    "resume_config": "fitting",
    "sample_times": "schedules",
    "save_pairs": "rectify",
    "save_state": "checkpoints",
    "split_objects": "inputs",
    "straightness": "rectify",
    "train": "loop",
    "training_data": "inputs",
    "unprefixed": "checkpoints",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

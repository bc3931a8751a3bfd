"""Evaluation: sample-quality metrics (:mod:`.metrics`), memorisation (:mod:`.memorisation`), image metrics
(:mod:`.images`) and the report of a trained flow (:mod:`.report`).

Names are imported from their modules on first use.
"""

import importlib

_EXPORTS = {
    "CLASSIFIER_META": "images",
    "CLASSIFIER_WEIGHTS": "images",
    "COPY_QUANTILE": "memorisation",
    "COPY_WARNING": "memorisation",
    "DENSITY_GRID": "report",
    "FIELD_TIMES": "report",
    "FULL": "report",
    "IMAGE_GUIDANCE": "report",
    "ImageClassifier": "images",
    "MAX_EXACT_W2": "metrics",
    "MAX_W_ROWS": "memorisation",
    "MEMORISATION_ROWS": "report",
    "METRICS": "metrics",
    "MMD_SCALES": "metrics",
    "MinMaxScale": "memorisation",
    "PICTURES": "report",
    "QUICK": "report",
    "REPORT": "report",
    "SWEEP_NFE": "report",
    "SWEEP_SOLVERS": "report",
    "TWO_D_ONLY": "report",
    "cached_classifier": "images",
    "classifier_accuracy": "images",
    "classifier_features": "images",
    "closest_record_distances": "memorisation",
    "closest_records": "memorisation",
    "energy_distance": "metrics",
    "evaluate": "report",
    "format_report": "report",
    "frechet_distance": "images",
    "frechet_distance_from_stats": "images",
    "gaussian_w2": "metrics",
    "held_out": "report",
    "image_pictures": "report",
    "image_report": "report",
    "is_builtin": "report",
    "known_density_report": "report",
    "likelihood_report": "report",
    "load_classifier": "images",
    "median_distance": "metrics",
    "memorisation_report": "report",
    "memorisation_warning": "memorisation",
    "mmd": "metrics",
    "mmd_bandwidths": "metrics",
    "nearest_picture": "report",
    "nfe_sweep": "report",
    "picture": "report",
    "precision_recall": "metrics",
    "quality": "metrics",
    "save_classifier": "images",
    "sliced_w2": "metrics",
    "summary_line": "report",
    "train_classifier": "images",
    "w1_l1": "memorisation",
    "w2_exact": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

"""The engine's options: the fields of a run's config that every modality shares, and the rules they follow.

A run's config (:class:`flowmatch.config.TrainConfig`) is plain data: these fields, and beside them the
options each modality declares in its own folder (``flowmatch/modalities/*/options.py``), each a dataclass
of fields made with :func:`option`. Every field is a ``flowmatch train`` flag and a TOML key. Which fields a
modality reads is its seam's business (:class:`flowmatch.engine.seam.Modality`: ``options`` and
``unsupported``); :func:`flowmatch.engine.seam.check_applicable` refuses the rest by name.

The rules here resolve the ``auto`` values every modality shares: the regression target (:func:`resolve_target`)
and the weights a run keeps (:func:`resolve_select`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from flowmatch.data.toy import GAUSSIAN_MIXTURES
from flowmatch.errors import FlowmatchError

TARGETS = ("auto", "conditional", "posterior")


#: ``target = auto`` takes the posterior on finite data only from this many training rows up. With
#: fewer, a batch's reference holds a large share of the data set, and the posterior is then close to
#: the exact velocity field of the training rows, whose flow carries noise onto the rows themselves
#: (measured on wine and moons: bench/results/design-figures.md; the defaults' results:
#: bench/results/memorisation.md).
POSTERIOR_MIN_ROWS = 2048


def option(default, help: str, choices=None, low=None, high=None):
    """A config field with its help text and allowed values, shared by the CLI and validation."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class EngineOptions:
    """The options of every run, whatever its modality. :class:`flowmatch.config.TrainConfig` adds each
    modality's own beside them."""

    # what to learn
    data: str = option(
        "two-gaussians",
        "built-in data set name (a corpus: pydoc; on manifolds: S2-vmf, S2-checkerboard, T2-wrapped, SO3-multimodal), or a "
        "file: .npy/.npz/.csv rows of shape (N, D), a .csv table with categorical columns, a .txt text, a .npy of token ids "
        "(kind tokens), points on a manifold (kind manifold: a lat,lon or w,x,y,z .csv, angles with --units, or a .npy)",
    )
    kind: str = option(
        "auto",
        "what the data are: continuous rows (points, arrays, images), token sequences (discrete flow matching), a mixed-type "
        "table (numeric columns continuous, categorical columns discrete, one network) or points on a manifold (Riemannian "
        "flow matching); auto: manifold for a built-in manifold set or with --manifold, tokens for text and corpora, table "
        "for a CSV with text columns or empty cells (or a DataFrame), else continuous",
    )
    source: str = option(
        "gaussian",
        "distribution at t = 0: gaussian (N(0, I)) or a data set name or file; kind manifold: uniform (the manifold's "
        "uniform law, its default), wrapped-gaussian[:SCALE] (exp of N(0, SCALE^2 I) in the tangent space at the north pole, "
        "the zero angles or the identity rotation; SCALE default 1), a built-in set on the same manifold (e.g. S2-vmf) or "
        "gaussian (N(0, I), --manifold euclidean only)",
    )
    objective: str = option(
        "flow-matching",
        "training loss: flow matching, distillation onto teacher pairs, or MeanFlow (a two-time model of the average "
        "velocity u(x, r, t) that samples in one step)",
        choices=("flow-matching", "distill", "meanflow"),
    )
    target: str = option(
        "auto",
        "regression target: each pair's own velocity (conditional), or its posterior mean over the batch's data "
        "points (posterior: same minimiser, less variance; gaussian or gaussian-mixture source, a source given in Python "
        "that declares its gaussian_mixture, or kind manifold's uniform source; independent pairs); auto = posterior where "
        "it applies",
        choices=TARGETS,
    )
    scheduler: str = option(
        "linear", "kappa_t of the discrete mixture path (tokens, table) and of the geodesic path (manifold)",
        choices=("linear", "polynomial", "cosine"),
    )  # fmt: skip
    scheduler_exponent: float = option(2.0, "n of the polynomial scheduler kappa_t = t^n", low=1e-3)
    # conditions
    conditional: bool = option(False, "condition the model on the data's class labels")
    cond_dropout: float = option(0.1, "probability of dropping a label for the learned null label (guidance)", low=0.0, high=1.0)
    label_column: str = option("", "CSV column (name or 1-based number) holding class labels")
    condition_columns: str = option(
        "", "CSV columns (names or 1-based numbers, comma separated) holding float covariates the model is conditioned on (its c)"
    )
    # model
    model: str = option(
        "mlp",
        "velocity model (unet: images; transformer: token sequences; mixed-mlp: tables; tangent-mlp: manifolds; kinds tokens, "
        "table and manifold pick theirs)",
        choices=("mlp", "seed-mlp", "unet", "transformer", "mixed-mlp", "tangent-mlp", "python"),
    )
    width: int = option(256, "hidden units per layer (mlp, tangent-mlp, mixed-mlp, transformer)", low=1)
    depth: int = option(3, "hidden layers (mlp, tangent-mlp, mixed-mlp) or attention blocks (transformer)", low=1)
    activation: str = option(
        "silu", "activation (mlp, tangent-mlp, mixed-mlp)", choices=("relu", "silu", "gelu", "tanh", "softplus")
    )  # fmt: skip
    dropout: float = option(0.0, "dropout after hidden activations (mlp, mixed-mlp) or in residual blocks (unet)", low=0.0, high=0.9)
    init_from: str = option("", "start from the weights (and architecture) of this run folder")
    # optimisation
    batch_size: int = option(512, "batch size per process (after the batch warm-up)", low=1)
    batch_warmup: int = option(1000, "grow the batch linearly from half of batch_size to batch_size over the first N steps", low=0)
    steps: int = option(6000, "optimiser steps", low=1)
    optimizer: str = option("adam", "optimiser", choices=("adam", "adamw"))
    lr: float = option(4e-3, "learning rate", low=0.0)
    weight_decay: float = option(0.0, "decoupled weight decay (adamw)", low=0.0)
    lr_schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    warmup: int = option(0, "linear learning-rate warm-up steps", low=0)
    grad_clip: float = option(0.0, "clip the gradient norm to this (0 = off)", low=0.0)
    ema: float = option(0.999, "EMA decay of the weights used for sampling (0 = off)", low=0.0, high=0.99999)
    ema_warmup: int = option(10, "EMA warm-up: the decay after step k is min(ema, (1 + k) / (ema_warmup + k))", low=2)
    time_sampling: str = option("uniform", "distribution of training times", choices=("uniform", "logit-normal"))
    time_strata: int = option(32, "stratify each batch's times: K strata, one shared time per stratum (0 = a time per pair)", low=0)
    time_loc: float = option(0.0, "logit-normal location")
    time_scale: float = option(1.0, "logit-normal scale", low=1e-6)
    time_shift: float = option(1.0, "shift of the times toward noise (1 = none, >1 = more noise)", low=1e-6)
    # finite data: validation and checkpoint selection
    val_fraction: float = option(
        0.1, "share of a finite data set's training rows held out for the validation loss (0 = none)", low=0.0, high=0.5
    )
    val_every: int = option(50, "compute the validation loss (EMA weights) every N steps", low=1)
    select: str = option(
        "auto",
        "weights the run keeps: the last, or those of the lowest validation loss (val-loss); auto = val-loss "
        "where there is a validation split",
        choices=("auto", "last", "val-loss"),
    )
    early_stop: int = option(1000, "stop when the validation loss has not improved for N steps (0 = never)", low=0)
    precision: str = option(
        "auto",
        "bf16 autocasts the model's matmuls to bfloat16; auto = bf16 where the device has bf16 matrix units and a "
        "start-up micro-benchmark of the model measures bf16 at least 1.1x faster, else fp32 (recorded in config.json)",
        choices=("auto", "fp32", "bf16"),
    )
    compile: bool = option(False, "torch.compile the model")
    # bookkeeping
    seed: int = option(0, "random seed (the evaluation seeds numpy with it: at most 2**32 - 1)", low=0, high=2**32 - 1)
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    threads: int = option(
        0,
        "intra-op CPU threads of torch while training and measuring (0 = choose: one for small models, up to the cores this "
        "process may use for large ones; left to torch when OMP_NUM_THREADS is set)",
        low=0,
        high=1024,
    )
    checkpoint_every: int = option(1000, "write a training checkpoint every N steps (and at the end)", low=1)
    keep_checkpoints: int = option(2, "training checkpoints to keep", low=1)
    log_every: int = option(50, "append to metrics.csv (and TensorBoard) every N steps", low=1)
    sample_every: int = option(0, "save a sample picture (a tokens run: sample text) every N steps (0 = off)", low=0)

    def __post_init__(self) -> None:
        """Every field holds its declared type, checked at construction by one rule over the fields
        (:func:`check_type`): ``TrainConfig(steps="10")`` is refused here, naming the field, not deep inside
        training. An int given for a float field becomes a float, a path for a str field its string.
        Values (choices, ranges) are :meth:`validate`'s."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if str(f.type) == "str" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            setattr(self, f.name, check_type(f.name, value, str(f.type), type(self).__name__))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config"):
        """Build and validate a config; unknown keys, wrong types and bad values name the key."""
        if not isinstance(values, dict):
            raise FlowmatchError(f"{source}: a config must be a mapping of keys to values, got {type(values).__name__}")
        from flowmatch.saving import RESOLVED

        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key == RESOLVED:  # a run's config.json keeps what it resolved beside its options: not an option
                continue
            if key not in known:
                raise FlowmatchError(f"{source}: unknown key '{key}'")
            kwargs[key] = check_type(key, value, str(known[key].type), source)
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Each field's declared choices and range, then each options class's own rules between its fields
        (a method ``check_fields(source)`` defined on the class)."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise FlowmatchError(f"{source}: {f.name} must be one of {', '.join(meta['choices'])}, got '{value}'")
            if meta.get("low") is not None and not value >= meta["low"]:
                raise FlowmatchError(f"{source}: {f.name} must be >= {meta['low']}, got {value}")
            if meta.get("high") is not None and not value <= meta["high"]:
                raise FlowmatchError(f"{source}: {f.name} must be <= {meta['high']}, got {value}")
        for cls in reversed(type(self).__mro__):
            rules = cls.__dict__.get("check_fields")
            if rules is not None:
                rules(self, source)

    def check_fields(self, source: str) -> None:
        if self.condition_columns and not all(name.strip() for name in self.condition_columns.split(",")):
            raise FlowmatchError(
                f"{source}: condition_columns {self.condition_columns!r} has an empty column name; give names or 1-based "
                "numbers separated by commas, e.g. 'age,income'"
            )
        if self.warmup >= self.steps and self.warmup > 0:
            raise FlowmatchError(f"{source}: warmup ({self.warmup}) must be smaller than steps ({self.steps})")
        obstacle = posterior_obstacle(self) if self.target == "posterior" else ""
        if obstacle:
            raise FlowmatchError(f"{source}: target posterior needs {obstacle}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ENGINE_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineOptions))


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def check_type(key: str, value: Any, type_name: str, source: str):
    """``value`` as field ``key`` of type ``type_name`` holds it (an int becomes a float for a float field);
    anything else is one error naming the key."""
    expected = _TYPES[type_name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        raise FlowmatchError(f"{source}: {key} must be a {type_name}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FlowmatchError(f"{source}: {key} must be finite, got {value}")
    return value


def check_saved_types(values: dict[str, Any], config_class: type, source: str) -> None:
    """The keys of a saved config (config.json) that are fields of ``config_class`` hold their field's type
    (:func:`check_type`); other keys are left to whoever reads them."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(config_class)}
    for key, value in values.items():
        if key in fields:
            check_type(key, value, fields[key], source)


def resolve_target(config, n_train: int | None = None) -> str:
    """The regression target a config trains on: ``auto`` is posterior where it applies and the data
    are fresh draws (``n_train`` None) or at least :data:`POSTERIOR_MIN_ROWS` rows, else conditional."""
    if config.target == "auto":
        small = n_train is not None and n_train < POSTERIOR_MIN_ROWS
        return "conditional" if posterior_obstacle(config) or small else "posterior"
    return config.target


def resolve_select(config, has_validation: bool) -> str:
    """``select = auto``: the weights of the lowest validation loss where there is a validation split."""
    if config.select == "auto":
        return "val-loss" if has_validation else "last"
    return config.select


def posterior_obstacle(config) -> str:
    """Why the posterior target does not apply to ``config`` ("" if it does): it needs x0 drawn from a
    Gaussian or a Gaussian mixture (or, on a manifold, from its uniform law), independently of x1, so that
    the path through a data point has a known density. A source given in Python (``python``) passes here:
    whether it declares its mixture is the modality's to check on the object (:mod:`flowmatch.data.sources`)."""
    if config.objective not in ("flow-matching", "meanflow"):
        return f"objective flow-matching or meanflow, not {config.objective}"
    if getattr(config, "pairs", ""):
        return "drawn pairs, not a pairs file"
    if config.source not in ("gaussian", "uniform", "python", *GAUSSIAN_MIXTURES):
        return (
            f"a gaussian or gaussian-mixture source ({', '.join(['gaussian', *GAUSSIAN_MIXTURES])}), or the uniform law on a "
            f"manifold (kind manifold), not '{config.source}' (a source given in Python may declare its mixture: a "
            "gaussian_mixture attribute)"
        )
    if getattr(config, "coupling", "independent") != "independent":
        return f"independent pairs, not coupling {config.coupling}"
    return ""

"""The training configuration: plain data, every field a ``flowmatch train`` flag and a TOML key, with presets and the rules that resolve ``auto`` values."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from flowmatch.data.toy import GAUSSIAN_MIXTURES
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import PATHS

TARGETS = ("auto", "conditional", "posterior")


#: What a run learns: continuous rows, token sequences, a mixed-type table, or points on a manifold.
KINDS = ("auto", "continuous", "tokens", "table", "manifold")


#: The manifolds of kind manifold: ``auto`` is a built-in set's own (or what a file's columns say).
MANIFOLD_CHOICES = ("auto", "euclidean", "sphere", "torus", "so3")


#: The built-in sets on manifolds (the keys of :data:`flowmatch.manifolds.MANIFOLD_SETS`, which a test
#: keeps equal), named here so that resolving a kind imports nothing heavy.
MANIFOLD_SET_NAMES = ("S2-vmf", "S2-checkerboard", "T2-wrapped", "SO3-multimodal")


#: The posterior target averages over (data point, source component) pairs: the first
#: min(POSTERIOR_REFERENCE, POSTERIOR_PAIRS / K) points of the global batch (and the pair's own), each
#: with every one of the source's K components (one for N(0, I): the whole default batch of 512; 8
#: for 8gaussians: 256 points). Its cost is (batch x points x K) a step; the whole batch learns
#: fastest (bench/results/design-figures.md).
POSTERIOR_REFERENCE = 512


POSTERIOR_PAIRS = 2048


#: ``target = auto`` takes the posterior on finite data only from this many training rows up. With
#: fewer, a batch's reference holds a large share of the data set, and the posterior is then close to
#: the exact velocity field of the training rows, whose flow carries noise onto the rows themselves
#: (measured on wine and moons: bench/results/design-figures.md; the defaults' results:
#: bench/results/memorisation.md).
POSTERIOR_MIN_ROWS = 4 * POSTERIOR_REFERENCE


def _option(default, help: str, choices=None, low=None, high=None):
    """A config field with its help text and allowed values, shared by the CLI and validation."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every field is also a ``flowmatch train`` flag."""

    # what to learn
    data: str = _option(
        "two-gaussians",
        "built-in data set name (a corpus: pydoc; on manifolds: S2-vmf, S2-checkerboard, T2-wrapped, SO3-multimodal), or a "
        "file: .npy/.npz/.csv rows of shape (N, D), a .csv table with categorical columns, a .txt text, a .npy of token ids "
        "(kind tokens), points on a manifold (kind manifold: a lat,lon or w,x,y,z .csv, angles with --units, or a .npy)",
    )
    kind: str = _option(
        "auto",
        "what the data are: continuous rows, token sequences (discrete flow matching) or a mixed-type table (numeric columns "
        "continuous, categorical columns discrete, one network) or points on a manifold (Riemannian flow matching); auto: "
        "manifold for a built-in manifold set or with --manifold, tokens for text and corpora, table for a CSV with text "
        "columns or empty cells, else continuous",
        choices=KINDS,
    )
    source: str = _option(
        "gaussian",
        "distribution at t = 0: gaussian (N(0, I)) or a data set name or file; kind manifold: uniform (the manifold's "
        "uniform law, its default), wrapped-gaussian[:SCALE] (exp of N(0, SCALE^2 I) in the tangent space at the north pole, "
        "the zero angles or the identity rotation; SCALE default 1), a built-in set on the same manifold (e.g. S2-vmf) or "
        "gaussian (N(0, I), --manifold euclidean only)",
    )
    path: str = _option("linear", "probability path", choices=(*PATHS, "python"))
    sigma_min: float = _option(0.0, "noise floor of the gaussian path at t = 1", low=0.0, high=0.999)
    bridge_sigma: float = _option(0.0, "Brownian-bridge noise of the path (SB-CFM; 0 = none)", low=0.0)
    coupling: str = _option("independent", "pairing of (x0, x1) in a batch", choices=("independent", "ot", "sinkhorn"))
    ot_reg: float = _option(0.05, "entropic regularisation of the sinkhorn coupling (relative to the mean cost)", low=1e-6)
    pairs: str = _option("", "train on fixed (x0, x1) pairs from this .npz (reflow); empty = draw pairs")
    conditional: bool = _option(False, "condition the model on the data's class labels")
    cond_dropout: float = _option(0.1, "probability of dropping a label for the learned null label (guidance)", low=0.0, high=1.0)
    label_column: str = _option("", "CSV column (name or 1-based number) holding class labels")
    condition_columns: str = _option(
        "", "CSV columns (names or 1-based numbers, comma separated) holding float covariates the model is conditioned on (its c)"
    )
    objective: str = _option(
        "flow-matching",
        "training loss: flow matching, distillation onto teacher pairs, or MeanFlow (a two-time model of the average "
        "velocity u(x, r, t) that samples in one step)",
        choices=("flow-matching", "distill", "meanflow"),
    )
    target: str = _option(
        "auto",
        "regression target: each pair's own velocity (conditional), or its posterior mean over the batch's data "
        "points (posterior: same minimiser, less variance; gaussian or gaussian-mixture source, or kind manifold's "
        "uniform source; independent pairs); auto = posterior where it applies",
        choices=TARGETS,
    )
    distill_nfe: int = _option(1, "student's velocity evaluations (objective distill)", low=1)
    meanflow_equal_share: float = _option(
        0.75, "objective meanflow: share of rows trained with r = t (plain flow matching; the rest on intervals r < t)", low=0.0, high=1.0
    )
    meanflow_power: float = _option(
        1.0, "objective meanflow: power p of the adaptive loss weight 1 / (error + 1e-3)^p (0 = the plain mean square)", low=0.0
    )
    meanflow_guidance: float = _option(
        1.0, "objective meanflow, conditional: guidance weight omega folded into the target (1 = none); samples guided in one call"
    )
    meanflow_guidance_mix: float = _option(0.0, "objective meanflow: the paper's mixing scale kappa of the guided target (0 = none)")
    # discrete flow matching (kind tokens and table)
    scheduler: str = _option("linear", "kappa_t of the discrete mixture path (tokens, table)", choices=("linear", "polynomial", "cosine"))
    scheduler_exponent: float = _option(2.0, "n of the polynomial scheduler kappa_t = t^n", low=1e-3)
    discrete_source: str = _option(
        "mask", "source of the discrete mixture path: an absorbing mask token or uniform tokens", choices=("mask", "uniform")
    )
    discrete_loss: str = _option("cross-entropy", "loss of the discrete part", choices=("cross-entropy", "generalized-kl"))
    seq_len: int = _option(128, "tokens per training sequence (kind tokens)", low=2)
    heads: int = _option(4, "attention heads (transformer)", low=1)
    missing: str = _option(
        "model",
        "empty cells of a table: model them (a missing category, or a mask for numbers) or refuse the file",
        choices=("model", "refuse"),
    )
    # Riemannian flow matching (kind manifold)
    manifold: str = _option(
        "auto",
        "kind manifold: the manifold (auto: a built-in set's own, or a file's columns: lat,lon -> sphere, w,x,y,z -> so3); "
        "sphere, torus (angles, with --units), so3 (quaternions); euclidean trains the ordinary Euclidean flow on a built-in "
        "set's ambient coordinates (straight paths from N(0, I)), the comparison",
        choices=MANIFOLD_CHOICES,
    )
    units: str = _option(
        "auto",
        "kind manifold: angles in a data file (and in samples written as .csv) are degrees or radians; auto: degrees for "
        "latitude/longitude, radians for the built-in torus; a torus file must say",
        choices=("auto", "degrees", "radians"),
    )
    columns: str = _option(
        "",
        "kind manifold: a .csv file's columns to read, comma separated: latitude,longitude (sphere), the angles (torus) or "
        "w,x,y,z (so3); empty: found by their names (lat/lon, w/x/y/z; every column for a torus)",
    )
    # model
    model: str = _option(
        "mlp",
        "velocity model (unet: images; transformer: token sequences; mixed-mlp: tables; tangent-mlp: manifolds; kinds tokens, "
        "table and manifold pick theirs)",
        choices=("mlp", "seed-mlp", "unet", "transformer", "mixed-mlp", "tangent-mlp", "python"),
    )
    width: int = _option(256, "hidden units per layer (mlp, tangent-mlp)", low=1)
    depth: int = _option(3, "hidden layers (mlp, tangent-mlp)", low=1)
    activation: str = _option("silu", "activation (mlp, tangent-mlp)", choices=("relu", "silu", "gelu", "tanh", "softplus"))
    channels: int = _option(16, "base channels (unet)", low=1)
    channel_mult: str = _option("1,2", "channel multiplier per resolution, comma separated (unet)")
    num_res_blocks: int = _option(1, "residual blocks per resolution (unet)", low=1)
    attention: bool = _option(False, "self-attention at the lowest resolution (unet)")
    dropout: float = _option(0.0, "dropout after hidden activations (mlp) or in residual blocks (unet)", low=0.0, high=0.9)
    init_from: str = _option("", "start from the weights (and architecture) of this run folder")
    # optimisation
    batch_size: int = _option(512, "batch size per process (after the batch warm-up)", low=1)
    batch_warmup: int = _option(1000, "grow the batch linearly from half of batch_size to batch_size over the first N steps", low=0)
    steps: int = _option(6000, "optimiser steps", low=1)
    optimizer: str = _option("adam", "optimiser", choices=("adam", "adamw"))
    lr: float = _option(4e-3, "learning rate", low=0.0)
    weight_decay: float = _option(0.0, "decoupled weight decay (adamw)", low=0.0)
    lr_schedule: str = _option("cosine", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    warmup: int = _option(0, "linear learning-rate warm-up steps", low=0)
    grad_clip: float = _option(0.0, "clip the gradient norm to this (0 = off)", low=0.0)
    ema: float = _option(0.999, "EMA decay of the weights used for sampling (0 = off)", low=0.0, high=0.99999)
    ema_warmup: int = _option(10, "EMA warm-up: the decay after step k is min(ema, (1 + k) / (ema_warmup + k))", low=2)
    time_sampling: str = _option("uniform", "distribution of training times", choices=("uniform", "logit-normal"))
    time_strata: int = _option(32, "stratify each batch's times: K strata, one shared time per stratum (0 = a time per pair)", low=0)
    time_loc: float = _option(0.0, "logit-normal location")
    time_scale: float = _option(1.0, "logit-normal scale", low=1e-6)
    time_shift: float = _option(1.0, "shift of the times toward noise (1 = none, >1 = more noise)", low=1e-6)
    # finite data: validation and checkpoint selection
    val_fraction: float = _option(
        0.1, "share of a finite data set's training rows held out for the validation loss (0 = none)", low=0.0, high=0.5
    )
    val_every: int = _option(50, "compute the validation loss (EMA weights) every N steps", low=1)
    select: str = _option(
        "auto",
        "weights the run keeps: the last, or those of the lowest validation loss (val-loss); auto = val-loss "
        "where there is a validation split",
        choices=("auto", "last", "val-loss"),
    )
    early_stop: int = _option(1000, "stop when the validation loss has not improved for N steps (0 = never)", low=0)
    loss_weight: str = _option("none", "weight the loss as a velocity, data (x1) or noise (x0) error", choices=("none", "x1", "x0"))
    precision: str = _option(
        "auto",
        "bf16 autocasts the model's matmuls to bfloat16; auto = bf16 where the device has bf16 matrix units, else fp32",
        choices=("auto", "fp32", "bf16"),
    )
    compile: bool = _option(False, "torch.compile the model")
    # data and bookkeeping
    standardize: str = _option("auto", "standardise data (auto: files yes, built-ins and images no)", choices=("auto", "yes", "no"))
    workers: int = _option(0, "DataLoader worker processes reading a torch Dataset given to train()", low=0)
    mmap: str = _option("auto", "memory-map a .npy file (auto: files over 1 GiB)", choices=("auto", "yes", "no"))
    seed: int = _option(0, "random seed (the evaluation seeds numpy with it: at most 2**32 - 1)", low=0, high=2**32 - 1)
    device: str = _option("auto", "cpu, cuda, cuda:N or auto")
    threads: int = _option(
        0,
        "intra-op CPU threads of torch while training and measuring (0 = choose: one for small models, up to the cores this "
        "process may use for large ones; left to torch when OMP_NUM_THREADS is set)",
        low=0,
        high=1024,
    )
    checkpoint_every: int = _option(1000, "write a training checkpoint every N steps (and at the end)", low=1)
    keep_checkpoints: int = _option(2, "training checkpoints to keep", low=1)
    log_every: int = _option(50, "append to metrics.csv (and TensorBoard) every N steps", low=1)
    sample_every: int = _option(0, "save a sample picture every N steps (0 = off)", low=0)

    def __post_init__(self) -> None:
        """Every field holds its declared type, checked at construction by one rule over the fields
        (:func:`_check_type`): ``TrainConfig(steps="10")`` is refused here, naming the field, not deep inside
        training. An int given for a float field becomes a float, a path for a str field its string.
        Values (choices, ranges) are :meth:`validate`'s."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if str(f.type) == "str" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            setattr(self, f.name, _check_type(f.name, value, str(f.type), "TrainConfig"))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build and validate a config; unknown keys, wrong types and bad values name the key."""
        if not isinstance(values, dict):
            raise FlowmatchError(f"{source}: a config must be a mapping of keys to values, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise FlowmatchError(f"{source}: unknown key '{key}'")
            kwargs[key] = _check_type(key, value, str(known[key].type), source)
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise FlowmatchError(f"{source}: {f.name} must be one of {', '.join(meta['choices'])}, got '{value}'")
            if meta.get("low") is not None and not value >= meta["low"]:
                raise FlowmatchError(f"{source}: {f.name} must be >= {meta['low']}, got {value}")
            if meta.get("high") is not None and not value <= meta["high"]:
                raise FlowmatchError(f"{source}: {f.name} must be <= {meta['high']}, got {value}")
        if self.warmup >= self.steps and self.warmup > 0:
            raise FlowmatchError(f"{source}: warmup ({self.warmup}) must be smaller than steps ({self.steps})")
        try:
            mult = [int(m) for m in self.channel_mult.split(",")]
        except ValueError:
            mult = []
        if not mult or min(mult) < 1:
            raise FlowmatchError(f"{source}: channel_mult must be positive integers separated by commas, got '{self.channel_mult}'")
        if (self.meanflow_guidance != 1.0 or self.meanflow_guidance_mix != 0.0) and not (
            self.objective == "meanflow" and (self.conditional or self.condition_columns)
        ):
            raise FlowmatchError(f"{source}: meanflow_guidance and meanflow_guidance_mix need objective meanflow and conditional")
        if self.objective == "distill" and not self.pairs:
            raise FlowmatchError(f"{source}: objective distill needs teacher pairs (use 'flowmatch distill')")
        obstacle = _posterior_obstacle(self) if self.target == "posterior" else ""
        if obstacle:
            raise FlowmatchError(f"{source}: target posterior needs {obstacle}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def check_saved_types(values: dict[str, Any], source: str) -> None:
    """The keys of a saved config (config.json) that are :class:`TrainConfig` fields hold their field's type
    (:func:`_check_type`); other keys are left to whoever reads them."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key in fields:
            _check_type(key, value, fields[key], source)


def _check_type(key: str, value: Any, type_name: str, source: str):
    expected = _TYPES[type_name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        raise FlowmatchError(f"{source}: {key} must be a {type_name}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FlowmatchError(f"{source}: {key} must be finite, got {value}")
    return value


#: Defaults of discrete runs, under a preset, a config file and flags: their networks and batches.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "tokens": {
        "model": "transformer",
        "width": 128,
        "depth": 2,
        "batch_size": 64,
        "batch_warmup": 0,
        "lr": 1e-3,
        "warmup": 200,
        "grad_clip": 1.0,
        "steps": 5000,
        "seq_len": 64,
        "val_every": 250,
        "early_stop": 0,
        "ema": 0.999,
    },
    "table": {
        "model": "mixed-mlp",
        "width": 256,
        "depth": 3,
        "batch_size": 256,
        "batch_warmup": 0,
        "lr": 2e-3,
        "steps": 4000,
        "val_every": 50,
    },
    # Riemannian flow matching: the tangent MLP from the uniform law. ReLU: the sphere's coordinates lie in
    # [-1, 1], where SiLU units are nearly polynomial of low degree; a SiLU network did not learn the sphere
    # checkerboard's field at all in 6,000 steps (KL 0.69 nats = the uniform law's), ReLU reached 0.17, and
    # also lowered the KL of S2-vmf and T2-wrapped from 0.02 to 0.003 or less (bench/results/manifolds.md)
    "manifold": {
        "model": "tangent-mlp",
        "source": "uniform",
        "activation": "relu",
        "width": 256,
        "depth": 3,
        "batch_size": 512,
        "batch_warmup": 0,
        "lr": 2e-3,
        "warmup": 200,
        "grad_clip": 1.0,
        "steps": 6000,
        "val_every": 100,
    },
}


def kind_defaults(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """:data:`KIND_DEFAULTS` of ``kind`` for a run that sets ``given`` itself: a default warm-up is at most a
    tenth of the given steps; the Euclidean comparison of kind manifold starts from N(0, I), R^D having no
    uniform law."""
    values = dict(KIND_DEFAULTS.get(kind, {}))
    if "warmup" in values and "steps" in given:
        values["warmup"] = min(values["warmup"], int(given["steps"]) // 10)
    if kind == "manifold" and given.get("manifold") == "euclidean":
        values["source"] = "gaussian"
    return values


def resolve_kind(config: TrainConfig) -> str:
    """``kind = auto``: manifold for a built-in manifold set (:data:`flowmatch.manifolds.MANIFOLD_SETS`) or
    when ``manifold`` is given; otherwise :func:`flowmatch.discrete.training.resolve_kind` (tokens, table or
    continuous)."""
    if config.kind == "auto" and (config.manifold != "auto" or config.data in MANIFOLD_SET_NAMES):
        return "manifold"
    from flowmatch.discrete.training import resolve_kind as data_kind

    return data_kind(config)


PRESETS: dict[str, dict[str, Any]] = {
    # The seed document's recipe: Gaussian path (its sigma_min default 0), the [t, x] -> 128 -> 128
    # ReLU MLP, Adam 1e-3 with a constant rate, batch 128, 10,000 steps, no EMA, seed 42, float32.
    "seed": {
        "data": "two-gaussians",
        "path": "gaussian",
        "sigma_min": 0.0,
        "model": "seed-mlp",
        "width": 128,
        "batch_size": 128,
        "batch_warmup": 0,
        "steps": 10_000,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_schedule": "constant",
        "warmup": 0,
        "ema": 0.0,
        "seed": 42,
        "precision": "fp32",
    },
}


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then a preset, then explicit overrides (a config file or CLI flags)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FlowmatchError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def resolve_target(config: TrainConfig, n_train: int | None = None) -> str:
    """The regression target a config trains on: ``auto`` is posterior where it applies and the data
    are fresh draws (``n_train`` None) or at least :data:`POSTERIOR_MIN_ROWS` rows, else conditional."""
    if config.target == "auto":
        small = n_train is not None and n_train < POSTERIOR_MIN_ROWS
        return "conditional" if _posterior_obstacle(config) or small else "posterior"
    return config.target


def resolve_select(config: TrainConfig, has_validation: bool) -> str:
    """``select = auto``: the weights of the lowest validation loss where there is a validation split."""
    if config.select == "auto":
        return "val-loss" if has_validation else "last"
    return config.select


def _posterior_obstacle(config: TrainConfig) -> str:
    """Why the posterior target does not apply to ``config`` ("" if it does): it needs x0 drawn from a
    Gaussian or a built-in Gaussian mixture (or, on a manifold, from its uniform law), independently of x1,
    so that the path through a data point has a known density."""
    if config.objective not in ("flow-matching", "meanflow"):
        return f"objective flow-matching or meanflow, not {config.objective}"
    if config.pairs:
        return "drawn pairs, not a pairs file"
    if config.source != "gaussian" and config.source not in GAUSSIAN_MIXTURES and config.source != "uniform":
        return (
            f"a gaussian or gaussian-mixture source ({', '.join(['gaussian', *GAUSSIAN_MIXTURES])}), or the uniform law on a "
            f"manifold (kind manifold), not '{config.source}'"
        )
    if config.coupling != "independent":
        return f"independent pairs, not coupling {config.coupling}"
    return ""

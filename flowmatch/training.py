"""Training: regress a velocity model onto a conditional path's velocity.

For a batch of pairs (x0, x1) (noise or source points, and data), and times t, the conditional flow
matching loss is

    L(theta) = E_{t, (x0, x1)} w(t) || v_theta(x_t, t) - u_t(x0, x1) ||^2,
    x_t = alpha_t x1 + sigma_t x0,   u_t = alpha'_t x1 + sigma'_t x0   (see ``flowmatch.paths``),

whose minimiser (for w = 1) is the marginal velocity field that carries the source at t = 0 to the
data at t = 1. The pairs are independent draws by default, or re-paired by a coupling
(``flowmatch.couplings``), or fixed pairs from a file (reflow). For independent pairs from a
Gaussian or Gaussian-mixture source the target is by default (``target = "auto"``) not each pair's
own u_t but its posterior mean over the batch's data points (and the source's components;
``AffinePath.posterior_velocity``): the same
minimiser, with far less variance at early times, where a mixture's mass is divided between its
modes. With ``objective = "distill"`` the loss is instead || Phi_theta(x0) - x1 ||^2 where
Phi_theta integrates the model with a few-step solver: the student learns to reach the teacher's
endpoint x1 in ``distill_nfe`` calls.

Batch: ``batch_size`` pairs a step, after a warm-up during which the batch grows linearly from
half of it over the first ``batch_warmup`` steps (:func:`batch_size_at`). Early, when the gradient
is large against its noise, a small batch makes the same progress per step at less cost; later, the
larger batch lowers the noise floor that the cosine decay and the EMA then average away (in
``bench.peers`` on checkerboard, 3,000 steps, with a time per pair: W2 <= 1.1x floor on every seed,
where a fixed batch of 256 got there on none).

Times and loss weights are :mod:`flowmatch.losses`' (the losses themselves too: the loop calls
:func:`~flowmatch.losses.flow_matching_loss` and :func:`~flowmatch.losses.distillation_loss`). By
default the uniforms are stratified: a batch holds ``time_strata`` = 32 times, one in each of
[k/32, (k+1)/32), each shared by a run of pairs; the loss keeps its expectation, its variance over t
drops, and the model's time branch runs once per run instead of once per pair (a step at batch 512
costs about 0.77x as much on one CPU core).

Finite data (files, tables, images): the trainer holds out ``val_fraction`` of the training rows and
scores the EMA weights on them every ``val_every`` steps (:class:`Validation`); by default it keeps
the weights of the lowest validation loss and stops ``early_stop`` steps after it, and it uses the
posterior target only from :data:`POSTERIOR_MIN_ROWS` training rows up. Without these, a long run
learns the exact velocity field of the training rows, whose flow lands on the rows themselves
(``flowmatch.memorisation`` measures it).

The configuration is plain data (:class:`TrainConfig`), every field a ``flowmatch train`` flag and
a TOML key. :func:`train` is one loop that reads top to bottom; with a run folder it writes
crash-safe checkpoints (``flowmatch.checkpoints``) and resumes from them exactly: weights,
optimiser, EMA, schedule, random-number-generator states and so the data order. Under
``torchrun`` it trains data-parallel: every process draws the same global batch of
``batch_size * world_size`` pairs (the batch size is per process) and takes its own shard, so
the result equals one process with the global batch, up to floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from .checkpoints import (
    latest_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    save_state,
    unprefixed,
    write_json_atomic,
)
from .data import GAUSSIAN_MIXTURES, Dataset, load_dataset
from .errors import FlowmatchError
from .models import build_model
from . import losses as losses_module
from .losses import Posterior, distillation_loss, flow_matching_loss, loss_weights  # noqa: F401  loss_weights: re-exported
from .paths import PATHS, AffinePath, make_path


TARGETS = ("auto", "conditional", "posterior")
#: The posterior target averages over (data point, source component) pairs: the first
#: min(POSTERIOR_REFERENCE, POSTERIOR_PAIRS / K) points of the global batch (and the pair's own), each
#: with every one of the source's K components (one for N(0, I): the whole default batch of 512; 8
#: for 8gaussians: 256 points). Its cost is (batch x points x K) a step.
#: Measured on two-gaussians (N(0, I), seeds 0-7, first probe with W2 <= 1.1x floor): the first 256
#: points, median step 125; the whole batch of 512, 87.5 (no seed later). On 8gaussians -> moons:
#: 32 points crossed at steps 700, 800, 500 (seeds 0-2), 256 at 450 on each.
POSTERIOR_REFERENCE = 512
POSTERIOR_PAIRS = 2048
#: ``target = auto`` takes the posterior on finite data only from this many training rows up. With
#: fewer, a batch's reference holds a large share of the data set, and the posterior is then close to
#: the exact velocity field of the training rows, whose flow carries noise onto the rows themselves.
#: Measured with probes during training (seed 0, test rows as the validation set): on wine (142
#: training rows) the posterior's validation loss is lowest at step 200 and then rises, the copy share
#: going from 0.07 there to 0.98 at step 6,000 (the conditional target: 0.97); on 4,000 rows of moons
#: the posterior copies nothing (copy share 0.03 to 0.05 at every probe). Results of the defaults:
#: bench/results/memorisation.md.
POSTERIOR_MIN_ROWS = 4 * POSTERIOR_REFERENCE
#: The validation loss averages over this many fixed (row, noise, time) triples.
VALIDATION_PAIRS = 2048


def _option(default, help: str, choices=None, low=None, high=None):
    """A config field with its help text and allowed values, shared by the CLI and validation."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every field is also a ``flowmatch train`` flag."""

    # what to learn
    data: str = _option("two-gaussians", "built-in data set name or a .npy/.npz/.csv file of shape (N, D)")
    source: str = _option("gaussian", "distribution at t = 0: gaussian (N(0, I)) or a data set name or file")
    path: str = _option("linear", "probability path", choices=PATHS)
    sigma_min: float = _option(0.0, "noise floor of the gaussian path at t = 1", low=0.0, high=0.999)
    bridge_sigma: float = _option(0.0, "Brownian-bridge noise of the path (SB-CFM; 0 = none)", low=0.0)
    coupling: str = _option("independent", "pairing of (x0, x1) in a batch", choices=("independent", "ot", "sinkhorn"))
    ot_reg: float = _option(0.05, "entropic regularisation of the sinkhorn coupling (relative to the mean cost)", low=1e-6)
    pairs: str = _option("", "train on fixed (x0, x1) pairs from this .npz (reflow); empty = draw pairs")
    conditional: bool = _option(False, "condition the model on the data's class labels")
    cond_dropout: float = _option(0.1, "probability of dropping a label for the learned null label (guidance)", low=0.0, high=1.0)
    label_column: str = _option("", "CSV column (name or 1-based number) holding class labels")
    objective: str = _option("flow-matching", "training loss", choices=("flow-matching", "distill"))
    target: str = _option(
        "auto",
        "regression target: each pair's own velocity (conditional), or its posterior mean over the batch's data "
        "points (posterior: same minimiser, less variance; gaussian or gaussian-mixture source, independent pairs); "
        "auto = posterior where it applies",
        choices=TARGETS,
    )
    distill_nfe: int = _option(1, "student's velocity evaluations (objective distill)", low=1)
    # model
    model: str = _option("mlp", "velocity model (unet: images)", choices=("mlp", "seed-mlp", "unet"))
    width: int = _option(256, "hidden units per layer (mlp)", low=1)
    depth: int = _option(3, "hidden layers (mlp)", low=1)
    activation: str = _option("silu", "activation (mlp)", choices=("relu", "silu", "gelu", "tanh", "softplus"))
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
    time_strata: int = _option(
        32, "stratify each batch's times: K strata, one shared time per stratum (0 = a time per pair)", low=0
    )
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
    early_stop: int = _option(
        1000, "stop when the validation loss has not improved for N steps (0 = never)", low=0
    )
    loss_weight: str = _option("none", "weight the loss as a velocity, data (x1) or noise (x0) error", choices=("none", "x1", "x0"))
    precision: str = _option(
        "auto",
        "bf16 autocasts the model's matmuls to bfloat16; auto = bf16 where the device has bf16 matrix units, else fp32",
        choices=("auto", "fp32", "bf16"),
    )
    compile: bool = _option(False, "torch.compile the model")
    # data and bookkeeping
    standardize: str = _option("auto", "standardise data (auto: files yes, built-ins and images no)", choices=("auto", "yes", "no"))
    mmap: str = _option("auto", "memory-map a .npy file (auto: files over 1 GiB)", choices=("auto", "yes", "no"))
    seed: int = _option(0, "random seed", low=0)
    device: str = _option("auto", "cpu, cuda, cuda:N or auto")
    checkpoint_every: int = _option(1000, "write a training checkpoint every N steps (and at the end)", low=1)
    keep_checkpoints: int = _option(2, "training checkpoints to keep", low=1)
    log_every: int = _option(50, "append to metrics.csv (and TensorBoard) every N steps", low=1)
    sample_every: int = _option(0, "save a sample picture every N steps (0 = off)", low=0)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build and validate a config; unknown keys, wrong types and bad values name the key."""
        if not isinstance(values, dict):
            raise FlowmatchError(f"{source}: a config must be a mapping of keys to values, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise FlowmatchError(f"{source}: unknown key '{key}'")
            kwargs[key] = _check_type(key, value, known[key].type, source)
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
        if self.objective == "distill" and not self.pairs:
            raise FlowmatchError(f"{source}: objective distill needs teacher pairs (use 'flowmatch distill')")
        obstacle = _posterior_obstacle(self) if self.target == "posterior" else ""
        if obstacle:
            raise FlowmatchError(f"{source}: target posterior needs {obstacle}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _check_type(key: str, value: Any, type_name: str, source: str):
    expected = _TYPES[type_name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        raise FlowmatchError(f"{source}: {key} must be a {type_name}, got {type(value).__name__} {value!r}")
    if expected is float and not math.isfinite(value):
        raise FlowmatchError(f"{source}: {key} must be finite, got {value}")
    return value


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
    Gaussian or a built-in Gaussian mixture, independently of x1, so that the path through a data point
    is a known Gaussian mixture."""
    if config.objective != "flow-matching":
        return f"objective flow-matching, not {config.objective}"
    if config.pairs:
        return "drawn pairs, not a pairs file"
    if config.source != "gaussian" and config.source not in GAUSSIAN_MIXTURES:
        return f"a gaussian or gaussian-mixture source ({', '.join(['gaussian', *GAUSSIAN_MIXTURES])}), not '{config.source}'"
    if config.coupling != "independent":
        return f"independent pairs, not coupling {config.coupling}"
    return ""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available (the process's own GPU under torchrun)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlowmatchError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlowmatchError(f"device '{name}' asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FlowmatchError(f"unsupported device '{name}'; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` trains in bf16 where the device multiplies bf16 matrices natively, else in fp32.

    Native means a CUDA GPU that supports bf16 (Ampere and later) or a CPU with AVX512-BF16 or AMX
    (read from Linux's /proc/cpuinfo; elsewhere fp32). Only the model's matmuls run in bf16 under
    ``torch.autocast``: weights, optimiser state, the loss and the path stay float32. On an AMD EPYC
    with AVX512-BF16, 3,000 steps of the default recipe take 0.74-0.77x their fp32 time
    with sample quality within 0.01 in W2 / floor (``bench/results/peers.md``); on CPUs that emulate
    bf16 it would be slower, hence fp32 there.
    ``fp32`` gives runs that are bit-for-bit the same on every machine.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and _cpu_has_bf16_units() else "fp32"


def _cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def batch_size_at(config: TrainConfig, step: int) -> int:
    """The batch of step ``step`` (0-based): batch_size, or during the first ``batch_warmup`` steps
    a linear ramp b_k = b/2 + (b/2) k / K from half of it, rounded down to a multiple of 8 (so the
    matmul kernels see a few shapes, not one per step); a batch under 16 does not ramp."""
    full = config.batch_size
    if step >= config.batch_warmup or full < 16:
        return full
    start = full // 2
    return max(start, (start + (full - start) * step // config.batch_warmup) // 8 * 8)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to zero at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_times(config: TrainConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """A batch's training times as the config asks (:func:`flowmatch.losses.sample_times`): uniform or
    logit-normal (``time_loc``, ``time_scale``), stratified in ``time_strata``, shifted by ``time_shift``."""
    return losses_module.sample_times(
        n, generator, distribution=config.time_sampling, strata=config.time_strata,
        loc=config.time_loc, scale=config.time_scale, shift=config.time_shift,
    )  # fmt: skip


# -- pairs ---------------------------------------------------------------------------------------
class PairSampler:
    """Draws training pairs (x0, x1) in model coordinates, then applies the configured coupling."""

    def __init__(self, config: TrainConfig, dataset: Dataset, source: Dataset | None):
        self.config, self.dataset, self.source = config, dataset, source
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.pairs:
            self.fixed = load_pairs(config.pairs, dataset.dim)

    def __call__(self, n: int, generator: torch.Generator):
        """(x0, x1, labels, classes): labels and classes are None unless the config is conditional.

        With labels, the coupling pairs points within each class, and each label is replaced by the
        null label (``num_classes``) with probability ``cond_dropout``; ``classes`` keeps them all.
        """
        if self.fixed is not None:
            index = torch.randint(len(self.fixed[0]), (n,), generator=generator)
            return self.fixed[0][index], self.fixed[1][index], None, None
        x1, y = self.dataset.sample(n, generator, labels=True)
        if not self.config.conditional:
            y = None
        x0 = torch.randn(x1.shape, generator=generator) if self.source is None else self.source.sample(n, generator)
        if self.config.coupling != "independent":
            from .couplings import couple

            x0, x1 = couple(x0, x1, self.config.coupling, reg=self.config.ot_reg, generator=generator, labels=y)
        classes = y
        if y is not None:
            drop = torch.rand(n, generator=generator) < self.config.cond_dropout
            y = torch.where(drop, torch.full_like(y, self.dataset.num_classes), y)
        return x0, x1, y, classes


def load_pairs(path: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) pairs in model coordinates from an .npz with arrays ``x0`` and ``x1`` (reflow)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            x0, x1 = archive["x0"], archive["x1"]
    except FileNotFoundError:
        raise FlowmatchError(f"pairs file '{path}' does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise FlowmatchError(f"pairs file '{path}': cannot read arrays x0 and x1 ({exc})") from None
    if x0.shape != x1.shape or x0.ndim != 2 or x0.shape[1] != dim or not len(x0):
        raise FlowmatchError(f"pairs file '{path}': x0 {x0.shape} and x1 {x1.shape} must both be (N, {dim})")
    if not (np.isfinite(x0).all() and np.isfinite(x1).all()):
        raise FlowmatchError(f"pairs file '{path}': non-finite values")
    return torch.as_tensor(x0, dtype=torch.float32), torch.as_tensor(x1, dtype=torch.float32)


# -- validation ----------------------------------------------------------------------------------
class Validation:
    """The flow-matching loss of held-out rows, and the weights where it was lowest.

    L_val = (1/M) sum_i w(t_i) || v(x_{t_i}, t_i) - u_{t_i}(x0_i, x1_i) ||^2 over M = ``VALIDATION_PAIRS``
    fixed triples: x1_i runs over the validation rows (each repeated M / rows times), x0_i is drawn
    from the source (and re-paired by the run's coupling), t_i are stratified uniforms, all once, with
    a seed of their own, so that values at different steps differ by the weights alone. It is the
    training loss on rows the model never sees: it falls while the model learns the distribution and
    rises once the model starts to reproduce its training rows (near t = 1 the velocity then points
    at the nearest training row, not at the unseen one). ``select = val-loss`` keeps the weights of
    its minimum, and ``early_stop`` ends a run whose minimum is far enough behind.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, path: AffinePath, source: Dataset | None, device):
        rows = dataset.val
        repeats = max(1, VALIDATION_PAIRS // len(rows))
        g = torch.Generator().manual_seed(config.seed + _VALIDATION_SEED)
        x1 = rows.repeat(repeats, 1)
        y = dataset.val_labels.repeat(repeats) if config.conditional and dataset.val_labels is not None else None
        x0 = torch.randn(x1.shape, generator=g) if source is None else source.sample(len(x1), g)
        if config.coupling != "independent":
            from .couplings import couple

            x0, x1 = couple(x0, x1, config.coupling, reg=config.ot_reg, generator=g, labels=y)
        t = ((torch.arange(len(x1)) + torch.rand(len(x1), generator=g)) / len(x1))[torch.randperm(len(x1), generator=g)]
        noise = torch.randn(x1.shape, generator=g) if path.bridge_sigma > 0 else None
        self.path, self.weight = path, config.loss_weight
        self.pairs = [None if v is None else v.to(device) for v in (x0, x1, t, noise, y)]
        self.best_loss, self.best_step = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._scratch: torch.nn.Module | None = None

    def scratch(self, model: torch.nn.Module) -> torch.nn.Module:
        """One eval-mode copy of the model, made once, that each validation fills with the EMA weights."""
        if self._scratch is None:
            import copy

            self._scratch = copy.deepcopy(model).eval()
        return self._scratch

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, chunk: int = 512) -> float:
        """:func:`~flowmatch.losses.flow_matching_loss` over the fixed triples, ``chunk`` rows a call."""
        total, n = 0.0, len(self.pairs[0])
        for i in range(0, n, chunk):
            x0, x1, t, noise, y = (None if v is None else v[i : i + chunk] for v in self.pairs)
            part = flow_matching_loss(model, self.path, x0, x1, t, labels=y, noise=noise, weight=self.weight)
            total += float(part) * len(x1)
        return total / n

    def update(self, step: int, model: torch.nn.Module) -> float:
        """Score ``model`` (the EMA weights, in eval mode) at ``step``; keep its weights if best so far."""
        value = self.loss(model)
        if value < self.best_loss:
            self.best_loss, self.best_step = value, step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return value

    def summary(self, select: str, stopped_early: bool) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_loss": self.best_loss, "select": select, "stopped_early": stopped_early}


_VALIDATION_SEED = 4_000_037


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns: the trained flow and a summary of the run."""

    flow: Any  # flowmatch.runs.Flow
    config: TrainConfig
    losses: list[float]
    seconds: float
    step: int
    interrupted: bool = False
    precision: str = "fp32"  # what the model was trained in ("auto" resolved on this device)
    target: str = "conditional"  # the regression target it trained on ("auto" resolved on this data)
    validation: dict[str, Any] | None = None  # best step and loss, selection, early stop (finite data)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else float("nan")


def train(
    config: TrainConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, Any, float], None] | None = None,
    callback_steps: Iterable[int] = (),
    **overrides,
) -> TrainResult:
    """Train a flow; ``train(steps=2000, data="moons")`` is the same as passing a TrainConfig.

    With ``run_dir`` the folder gets ``config.json``, ``metrics.csv``, training checkpoints and
    sample pictures as training goes (see :func:`fit` for the finished run folder); with
    ``resume`` training continues from the folder's newest checkpoint.

    ``callback(step, flow, seconds)`` is called after each step in ``callback_steps`` (on the main
    process) with a Flow holding the EMA weights of that moment and the training seconds so far, for
    example to score the model as it trains; the training clock (``TrainResult.seconds``, the
    ``seconds`` column) stops while it runs.
    """
    from .runs import Flow, build_flow, dataset_from_config  # runs needs data and models only; imported here to keep modules acyclic

    if config is None:
        config = resolve_config(overrides=overrides)
    elif overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    else:
        config.validate()
    world, rank, local_rank = _distributed_env()
    device = resolve_device(config.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0

    # -- set-up: everything that can fail on bad input happens before any file is written ---------
    dataset = dataset_from_config(config.to_dict())
    if config.conditional and not dataset.num_classes:
        raise FlowmatchError(f"data '{config.data}' has no class labels to condition on (see --label-column)")
    source = None if config.source == "gaussian" else load_dataset(config.source, seed=config.seed + 1)
    if source is not None and source.dim != dataset.dim:
        raise FlowmatchError(f"source '{config.source}' has dimension {source.dim}, data has {dataset.dim}")
    pairs = PairSampler(config, dataset, source)
    path = make_path(config.path, config.sigma_min, config.bridge_sigma)
    validation = None
    if dataset.val is not None and config.objective == "flow-matching":
        validation = Validation(config, dataset, path, source, device)
    select = resolve_select(config, validation is not None)
    if select == "val-loss" and validation is None:
        raise FlowmatchError(f"select val-loss needs a validation split: data '{config.data}' has none (val_fraction > 0, finite data)")
    torch.manual_seed(config.seed)
    run = Path(run_dir) if run_dir is not None else None
    state = latest_state(run) if run is not None and resume else None
    if state is not None:  # the checkpoint's own architecture: a warm start's teacher need not exist any more
        model = build_flow(state[2]["flow"], unprefixed("model", state[1]), config.to_dict(), where=state[0]).model.train()
    else:
        model = _initial_model(config, dataset)
    model = model.to(device)
    flow_meta = Flow(model=model, path=path, standardizer=dataset.standardizer, config=config.to_dict()).checkpoint_meta()
    ema = EMA(model, config.ema, config.ema_warmup)
    optimizer = _optimizer(config, model)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    start_step, elapsed = 0, 0.0

    if state is not None:
        _, tensors, meta = state
        ema.load(model, unprefixed("ema", tensors), meta["ema_updates"])
        optimizer_from_tensors(optimizer, unprefixed("optimizer", tensors), meta["optimizer_groups"])
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        start_step, elapsed, losses = meta["step"], meta["seconds"], list(meta["loss_tail"])
        if validation is not None and "validation" in meta:
            validation.best_loss, validation.best_step = meta["validation"]["best_loss"], meta["validation"]["best_step"]
            validation.best_state = unprefixed("best", tensors) or None
    if world > 1:
        dist.barrier()  # every process has checked its input before the run folder is touched

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    precision = resolve_precision(config.precision, device)
    low_precision = torch.bfloat16 if precision == "bf16" else None  # the model's calls under autocast
    target_kind = resolve_target(config, dataset.n_train)
    posterior = target_kind == "posterior"
    source_mixture = None if source is None else source.gaussian_mixture  # the posterior's source density
    if posterior and source is not None and source_mixture is None:
        raise FlowmatchError(f"target posterior: source '{config.source}' has no isotropic Gaussian-mixture density here")
    reference_size = min(POSTERIOR_REFERENCE, POSTERIOR_PAIRS // (1 if source_mixture is None else len(source_mixture.weights)))

    def checkpoint(step: int, folder: Path | None = run) -> None:
        if folder is None or not main_process:
            return
        opt_tensors, opt_groups = optimizer_to_tensors(optimizer)
        tensors = {
            **prefixed("model", model.state_dict()),
            **prefixed("ema", ema.state_dict(model)),
            **prefixed("optimizer", opt_tensors),
            "rng.generator": generator.get_state(),
            "rng.torch": torch.get_rng_state(),
        }
        if validation is not None and validation.best_state is not None:
            tensors.update(prefixed("best", validation.best_state))
        meta = {
            "optimizer_groups": opt_groups,
            "ema_updates": ema.updates,
            "seconds": elapsed + time.perf_counter() - started,
            "loss_tail": losses[-100:],
            "flow": flow_meta,
        }
        if validation is not None:
            meta["validation"] = {"best_loss": validation.best_loss, "best_step": validation.best_step}
        save_state(folder, step, tensors, meta, config.keep_checkpoints)

    started = time.perf_counter()
    if run is not None and main_process and not resume:
        _start_run_folder(run, config, checkpoint)
    log = _Log(run if main_process else None, config, start_step)
    stop = _StopSignal()
    bar = _progress_bar(config.steps, start_step, progress and main_process)
    callback_steps = set(callback_steps) if callback is not None and main_process else set()
    done = start_step
    # a resumed run that had stopped early is finished (its best weights are already behind it)
    stopped_early = validation is not None and 0 < config.early_stop <= start_step - validation.best_step
    shown: dict[str, str] = {}  # the progress bar's figures
    with stop:
        for step in range(start_step, start_step if stopped_early else config.steps):
            # one global batch, drawn identically by every process; each trains on its own shard
            size = batch_size_at(config, step)
            x0, x1, y, classes = pairs(size * world, generator)
            t = sample_times(config, len(x1), generator)
            noise = torch.randn(x1.shape, generator=generator) if config.bridge_sigma > 0 else None
            shard = slice(rank * size, (rank + 1) * size)
            reference = x1[:reference_size].to(device) if posterior else None  # the same on every process
            x0, x1, t = x0[shard].to(device), x1[shard].to(device), t[shard].to(device)
            y = None if y is None else y[shard].to(device)

            if config.objective == "distill":
                loss = distillation_loss(net, x0, x1, config.distill_nfe, autocast=low_precision)
            else:
                over = None
                if posterior:  # each pair's own x1 is row (its index in the global batch) of the reference, if there
                    own = torch.arange(shard.start, shard.stop, device=device)
                    own = torch.where(own < len(reference), own, -1)
                    allowed = _same_class(y, None if classes is None else classes[: len(reference)], dataset.num_classes)
                    over = Posterior(reference, own, allowed, source_mixture)
                loss = flow_matching_loss(
                    net, path, x0, x1, t, labels=y, noise=None if noise is None else noise[shard].to(device),
                    weight=config.loss_weight, posterior=over, autocast=low_precision,
                )  # fmt: skip
            if not torch.isfinite(loss):
                raise FlowmatchError(
                    f"training stopped: the loss is {loss.item()} at step {step}; the last good checkpoint is kept; "
                    "try a smaller --lr or --grad-clip"
                )

            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(model)
            if validation is not None and ((step + 1) % config.val_every == 0 or step + 1 == config.steps):
                value = validation.update(step + 1, ema.copy_into(model, validation.scratch(model)))
                log.validation(step + 1, value)
                shown["val"] = f"{value:.4f}"
                stopped_early = config.early_stop > 0 and step + 1 - validation.best_step >= config.early_stop

            if world > 1:  # report the global batch's loss, as one process with the whole batch would
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            losses.append(loss.item())
            done = step + 1
            log.step(done, losses, lr, elapsed + time.perf_counter() - started)
            if bar is not None and (done % 25 == 0 or done == config.steps):
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", **shown, refresh=False)
                bar.update(done - bar.n)
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested or stopped_early:
                checkpoint(done)
            if main_process and config.sample_every and done % config.sample_every == 0 and run is not None:
                _progress_picture(_flow_for(model, ema, path, dataset, config), run, done)
            if done in callback_steps:
                paused = time.perf_counter()
                callback(done, _flow_for(model, ema, path, dataset, config, source=source), elapsed + paused - started)
                started += time.perf_counter() - paused  # the callback's time is not training time
            if stop.requested or stopped_early:
                break
    if bar is not None:
        bar.close()
    if stopped_early and main_process and progress:
        print(f"stopped early at step {done}: the validation loss was lowest at step {validation.best_step} "
              f"({validation.best_loss:.4f}) and has not improved for {config.early_stop} steps")
    log.close()
    if world > 1:
        _record_rank_agreement(model, run if main_process else None, world)
    seconds = elapsed + time.perf_counter() - started
    chosen = validation.best_state if validation is not None and select == "val-loss" else None
    flow = _flow_for(model, ema, path, dataset, config, source=source, weights=chosen)
    return TrainResult(
        flow, config, losses, seconds, step=done, interrupted=stop.requested, precision=precision, target=target_kind,
        validation=None if validation is None else validation.summary(select, stopped_early),
    )


def _same_class(labels: torch.Tensor | None, classes: torch.Tensor | None, null: int) -> torch.Tensor | None:
    """(n, R) mask of the batch points each pair's posterior may average over: those of its label's class,
    or all of them for a pair with the null label; None (all) for an unconditional model."""
    if labels is None:
        return None
    classes = classes.to(labels.device)
    return (classes[None, :] == labels[:, None]) | (labels[:, None] == null)


@torch.no_grad()
def _record_rank_agreement(model: torch.nn.Module, run: Path | None, world: int) -> None:
    """Measure max |theta_rank - theta_rank0| over all processes; rank 0 writes it to distributed.json."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    if run is not None:
        write_json_atomic(run / "distributed.json", {"world_size": world, "max_weight_difference_across_ranks": gap.item()})


def _distributed_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 when not distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _initial_model(config: TrainConfig, dataset: Dataset) -> torch.nn.Module:
    dim = dataset.dim
    if config.init_from:
        from .runs import load

        teacher = load(config.init_from)
        if teacher.dim != dim:
            raise FlowmatchError(f"init_from '{config.init_from}' has dimension {teacher.dim}, data has {dim}")
        return teacher.model.train()
    classes = dataset.num_classes if config.conditional else 0
    if config.model == "unet":
        if dataset.image_shape is None:
            raise FlowmatchError(f"--model unet needs image data; '{config.data}' is not a set of images")
        return build_model(
            "unet",
            dim,
            image_shape=list(dataset.image_shape),
            channels=config.channels,
            channel_mult=[int(m) for m in config.channel_mult.split(",")],
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=[min(dataset.image_shape[1:]) // 2 ** (len(config.channel_mult.split(",")) - 1)]
            if config.attention
            else [],
            dropout=config.dropout,
            num_classes=classes,
        )
    if config.model == "seed-mlp":
        if classes:
            raise FlowmatchError("the seed-mlp model takes no labels; use --model mlp for conditional training")
        return build_model("seed-mlp", dim, width=config.width)
    return build_model(
        "mlp", dim, width=config.width, depth=config.depth, activation=config.activation, num_classes=classes, dropout=config.dropout
    )


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW, fused: one kernel updates every parameter (on the CPU torch's default is a
    Python loop over the tensors, 1.1 ms a step for the default MLP against 0.34 ms fused)."""
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _flow_for(model, ema, path, dataset, config, *, source=None, weights=None):
    """A Flow that samples with a copy of the model holding the EMA weights (or ``weights``)."""
    from .runs import Flow

    sampler = ema.averaged_copy(model)
    if weights is not None:
        sampler.load_state_dict(weights)
    return Flow(model=sampler.eval(), path=path, standardizer=dataset.standardizer, dataset=dataset, source=source, config=config.to_dict())


class EMA:
    """theta_ema <- d_k theta_ema + (1 - d_k) theta after step k, d_k = min(decay, (1 + k) / (warmup + k)).

    The warm-up of d_k keeps early, random weights from dominating short runs: until d_k reaches
    ``decay`` the average spans about the last 1 / (1 - d_k) = (warmup + k) / (warmup - 1) steps, a
    fixed fraction of the run so far (a ninth for warmup 10). Off when decay = 0.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: int = 10):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()] if decay > 0 else None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.shadow is not None:
            decay = min(self.decay, (1 + self.updates) / (self.warmup + self.updates))
            torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1.0 - decay)
        self.updates += 1

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.shadow is None:
            return {}
        names = [name for name, _ in model.named_parameters()]
        return dict(zip(names, self.shadow))

    @torch.no_grad()
    def load(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], updates: int) -> None:
        self.updates = updates
        if self.shadow is not None:
            for (name, _), s in zip(model.named_parameters(), self.shadow):
                s.copy_(tensors[name])

    @torch.no_grad()
    def copy_into(self, model: torch.nn.Module, target: torch.nn.Module) -> torch.nn.Module:
        """Fill ``target`` (a copy of ``model``) with the EMA weights (the model's own when EMA is off)
        and the model's buffers; returns ``target``."""
        torch._foreach_copy_(list(target.parameters()), self.shadow or [p.detach() for p in model.parameters()])
        for b, source in zip(target.buffers(), model.buffers()):
            b.copy_(source)
        return target

    def averaged_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (a plain copy when EMA is off)."""
        import copy

        return self.copy_into(model, copy.deepcopy(model))


class _StopSignal:
    """Turns SIGINT and SIGTERM into a request to stop after the current step (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Log:
    """metrics.csv (and TensorBoard when installed) every ``log_every`` steps, main process only."""

    def __init__(self, run: Path | None, config: TrainConfig, start_step: int):
        self.every = config.log_every
        self.file = self.val_file = None
        self.tensorboard = None
        self.last_time = None
        if run is None:
            return
        path = run / "metrics.csv"
        rows = path.read_text().splitlines() if path.exists() else []
        kept = [r for r in rows[1:] if int(r.split(",")[0]) <= start_step]  # drop rows past the checkpoint
        path.write_text("\n".join(["step,loss,lr,steps_per_s,seconds", *kept]) + "\n")
        self.file = open(path, "a")
        val_path = run / "validation.csv"
        rows = val_path.read_text().splitlines() if val_path.exists() else []
        kept = [r for r in rows[1:] if int(r.split(",")[0]) <= start_step]
        val_path.write_text("\n".join(["step,val_loss", *kept]) + "\n")
        self.val_file = open(val_path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            self.tensorboard = None

    def step(self, step: int, losses: list[float], lr: float, seconds: float) -> None:
        if self.file is None or step % self.every:
            return
        recent = losses[-self.every :]
        loss = sum(recent) / len(recent)
        rate = self.every / (seconds - self.last_time) if self.last_time is not None and seconds > self.last_time else float("nan")
        self.last_time = seconds
        self.file.write(f"{step},{loss:.6g},{lr:.6g},{rate:.4g},{seconds:.3f}\n")
        self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss, step)
            self.tensorboard.add_scalar("lr", lr, step)

    def validation(self, step: int, loss: float) -> None:
        if self.val_file is None:
            return
        self.val_file.write(f"{step},{loss:.6g}\n")
        self.val_file.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("val_loss", loss, step)

    def close(self) -> None:
        if self.val_file is not None:
            self.val_file.close()
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _start_run_folder(run: Path, config: TrainConfig, checkpoint) -> None:
    """Create the run folder with its config and a step-0 checkpoint, atomically (staging + rename).

    From the moment the folder exists it holds a loadable, resumable checkpoint. An old run in its
    place (which :func:`fit` allowed with ``force``) is removed only then.
    """
    import shutil
    import tempfile

    run.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run.name}.partial-", dir=run.parent))
    try:
        write_json_atomic(staging / "config.json", config.to_dict())
        checkpoint(0, staging)
        if run.exists():
            old = run.with_name(f".{run.name}.old-{os.getpid()}")
            os.replace(run, old)
            shutil.rmtree(old)
        os.replace(staging, run)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress_picture(flow, run: Path, step: int) -> None:
    from .plots import plot_samples

    folder = run / "progress"
    folder.mkdir(exist_ok=True)
    test = flow.dataset.test[:1000]
    samples = flow.sample(len(test), solver="rk4", nfe=40, seed=0)
    plot_samples(samples, test, folder / f"step-{step:08d}.png", title=f"step {step}")


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


# -- a whole run ---------------------------------------------------------------------------------
def fit(
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    n_eval: int = 2000,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, measure W2 against held-out data, and (with ``out``) write the finished run folder.

    ``resume=True`` continues the run in ``out`` from its newest checkpoint with its saved config
    (``config`` may then only raise ``steps``). With ``evaluate`` (the default) a quick evaluation
    (``flowmatch.evaluation.evaluate(quick=True)``) writes ``report.json`` into the run folder.

    Metrics: the mean loss over the last 100 steps; exact W2 between ``n_eval`` rk4 (NFE 100)
    samples (a distilled student: Euler at its ``distill_nfe``) and ``n_eval`` held-out points; and the floor, W2 between two disjoint held-out draws
    of the same size. Held-out sets smaller than 2 * n_eval are split in two halves.
    """
    from .metrics import w2_exact
    from .plots import plot_samples
    from .runs import check_writable_run

    if resume:
        if out is None:
            raise FlowmatchError("resume needs the run folder")
        config = resume_config(Path(out), config)
    else:
        config = config or TrainConfig()
        config.validate()
        if out is not None:
            check_writable_run(Path(out), force)  # fail before spending time on training
    result = train(config, run_dir=out, resume=resume, progress=progress)
    if result.interrupted or _distributed_env()[1] != 0:
        return result, {}

    flow = result.flow
    test = flow.dataset.test
    m = min(n_eval, len(test) // 2)
    held_a, held_b = test[:m], test[m : 2 * m]
    solver, nfe = ("euler", config.distill_nfe) if config.objective == "distill" else ("rk4", 100)
    samples = flow.sample(m, solver=solver, nfe=nfe, seed=config.seed + 1)
    w2, floor = w2_exact(samples, held_a), w2_exact(held_b, held_a)
    metrics = {
        "final_loss": result.final_loss,
        "w2": w2,
        "w2_floor": floor,
        "w2_ratio": w2 / floor,
        "n_eval": m,
        "sampler": {"solver": solver, "nfe": nfe},
        "train_seconds": result.seconds,
        "steps": config.steps,
        "steps_run": result.step,
        "precision": result.precision,
        "target": result.target,
    }
    if result.validation is not None:
        metrics["validation"] = result.validation
    report = None
    if out is not None:
        folder = Path(out)
        flow.save_checkpoint(folder)
        plot_samples(samples, held_a, folder / "samples.png", title=f"{config.data}: W2 {w2:.3f} (floor {floor:.3f})")
        if evaluate:
            from .evaluation import evaluate as quick_evaluation

            report = quick_evaluation(flow, folder, quick=True, seed=config.seed)
    if report is not None:
        memo = report.get("memorisation")
    else:  # the same figures the quick evaluation reports (same samples), for a run without it
        from .evaluation import memorisation_report

        memo = memorisation_report(flow, quick=True, seed=config.seed)
    if memo is not None:
        metrics["memorisation"] = memo
    if out is not None:
        write_json_atomic(Path(out) / "metrics.json", metrics)
    if report is not None:
        metrics["report"] = report
    return result, metrics


#: Keys added to TrainConfig after runs were first saved, with the value that reproduces a run saved
#: without them (its config.json lacks the key): resuming such a run continues it as it started.
ADDED_KEYS = {"batch_warmup": 0, "time_strata": 0, "target": "conditional", "val_fraction": 0.0, "select": "last", "early_stop": 0}


def resume_config(run: Path, config: TrainConfig | None) -> TrainConfig:
    """The saved config of a run to resume; ``config`` may differ from it only by more steps."""
    from .runs import read_json

    if not (run / "config.json").is_file():
        raise FlowmatchError(f"cannot resume: '{run}' is not a flowmatch run folder (config.json is missing)")
    values = read_json(run / "config.json")
    if isinstance(values, dict):
        old = "val_fraction" not in values  # saved before the finite-data rules (target auto by data size)
        values = {**ADDED_KEYS, **values}
        if old and values["target"] == "auto":  # auto then meant the posterior wherever it applies
            probe = TrainConfig.from_dict({**values, "target": "conditional"}, source=f"{run / 'config.json'}")
            values["target"] = "conditional" if _posterior_obstacle(probe) else "posterior"
    saved = TrainConfig.from_dict(values, source=f"{run / 'config.json'}")
    if config is None:
        return saved
    changed = [k for k, v in config.to_dict().items() if k != "steps" and saved.to_dict()[k] != v]
    if changed:
        raise FlowmatchError(f"cannot change {', '.join(changed)} when resuming; only steps may be raised")
    if config.steps < saved.steps:
        raise FlowmatchError(f"cannot resume with fewer steps ({config.steps}) than the run had ({saved.steps})")
    if config.steps != saved.steps:
        write_json_atomic(run / "config.json", config.to_dict())
    return config

"""Training: regress a velocity model onto a conditional path's velocity.

For a batch of data x1, noise x0 ~ N(0, I) and times t ~ U[0, 1], the conditional flow matching
loss is

    L(theta) = E_{t, x0, x1} || v_theta(x_t, t) - u_t(x0, x1) ||^2,
    x_t = alpha_t x1 + sigma_t x0,   u_t = alpha'_t x1 + sigma'_t x0   (see ``flowmatch.paths``),

whose minimiser is the marginal velocity field that carries N(0, I) at t = 0 to the data at t = 1.

The configuration is plain data (:class:`TrainConfig`); the loop in :func:`train` reads top to
bottom. Sampling uses an exponential moving average (EMA) of the weights when ``ema > 0``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import load_dataset
from .errors import FlowmatchError
from .models import build_model
from .paths import PATHS, make_path


def _option(default, help: str, choices=None, low=None, high=None):
    """A config field with its help text and allowed values, shared by the CLI and validation."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every field is also a ``flowmatch train`` flag."""

    data: str = _option("two-gaussians", "built-in data set name or a .npy/.npz/.csv file of shape (N, D)")
    path: str = _option("linear", "probability path", choices=PATHS)
    sigma_min: float = _option(0.0, "noise floor of the gaussian path at t = 1", low=0.0, high=0.999)
    model: str = _option("mlp", "velocity model", choices=("mlp", "seed-mlp"))
    width: int = _option(256, "hidden units per layer (mlp)", low=1)
    depth: int = _option(3, "hidden layers (mlp)", low=1)
    activation: str = _option("silu", "activation (mlp)", choices=("relu", "silu", "gelu", "tanh", "softplus"))
    batch_size: int = _option(256, "training batch size", low=1)
    steps: int = _option(6000, "optimiser steps", low=1)
    lr: float = _option(2e-3, "Adam learning rate", low=0.0)
    lr_schedule: str = _option("cosine", "learning-rate schedule after warm-up", choices=("constant", "cosine"))
    warmup: int = _option(0, "linear learning-rate warm-up steps", low=0)
    ema: float = _option(0.999, "EMA decay of the weights used for sampling (0 = off)", low=0.0, high=0.99999)
    standardize: str = _option("auto", "standardise data (auto: files yes, built-ins no)", choices=("auto", "yes", "no"))
    seed: int = _option(0, "random seed", low=0)
    device: str = _option("auto", "cpu, cuda, cuda:N or auto")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build and validate a config; unknown keys, wrong types and bad values name the key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise FlowmatchError(f"{source}: unknown key '{key}'")
        kwargs = {}
        for key, value in values.items():
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, type_name: str, source: str):
    expected = {"str": str, "int": int, "float": float}[type_name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise FlowmatchError(f"{source}: {key} must be a {type_name}, got {type(value).__name__} {value!r}")
    if expected is float and not math.isfinite(value):
        raise FlowmatchError(f"{source}: {key} must be finite, got {value}")
    return value


PRESETS: dict[str, dict[str, Any]] = {
    # The seed document's recipe: Gaussian path (its sigma_min default 0), the [t, x] -> 128 -> 128
    # ReLU MLP, Adam 1e-3 with a constant rate, batch 128, 10,000 steps, no EMA, seed 42.
    "seed": {
        "data": "two-gaussians",
        "path": "gaussian",
        "sigma_min": 0.0,
        "model": "seed-mlp",
        "batch_size": 128,
        "steps": 10_000,
        "lr": 1e-3,
        "lr_schedule": "constant",
        "warmup": 0,
        "ema": 0.0,
        "seed": 42,
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
    return TrainConfig.from_dict(values, source=f"preset {preset}" if preset and not overrides else "config")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlowmatchError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlowmatchError(f"device '{name}' asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FlowmatchError(f"unsupported device '{name}'; use cpu, cuda, cuda:N or auto")
    return device


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to zero at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained flow and a summary of the run."""

    flow: Any  # flowmatch.runs.Flow
    config: TrainConfig
    losses: list[float]
    seconds: float

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail)


def train(config: TrainConfig | None = None, *, progress: bool = True, **overrides) -> TrainResult:
    """Train a flow; ``train(steps=2000, data="moons")`` is the same as passing a TrainConfig."""
    from .runs import Flow  # runs imports training's config; import here to keep modules acyclic

    if config is None:
        config = resolve_config(overrides=overrides)
    elif overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    else:
        config.validate()
    device = resolve_device(config.device)
    standardize = {"auto": None, "yes": True, "no": False}[config.standardize]
    dataset = load_dataset(config.data, seed=config.seed, standardize=standardize)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    path = make_path(config.path, config.sigma_min)
    model_options = {"width": config.width}
    if config.model == "mlp":
        model_options.update(depth=config.depth, activation=config.activation)
    model = build_model(config.model, dataset.dim, **model_options).to(device)
    ema = _EMA(model, config.ema)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    losses: list[float] = []
    bar = _progress_bar(config.steps, progress)
    started = time.perf_counter()
    for step in range(config.steps):
        x1 = dataset.sample(config.batch_size, generator).to(device)
        x0 = torch.randn(x1.shape, generator=generator).to(device)
        t = torch.rand(x1.shape[0], generator=generator).to(device)
        target = path.sample(x0, x1, t)
        loss = (model(target.x_t, t) - target.velocity).pow(2).mean()
        if not torch.isfinite(loss):
            raise FlowmatchError(f"training diverged: loss is {loss.item()} at step {step}; try a smaller --lr")

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(model)

        losses.append(loss.item())
        if bar is not None and (step % 50 == 0 or step == config.steps - 1):
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
            bar.update(step + 1 - bar.n)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started

    flow = Flow(
        model=ema.averaged(model).eval(),
        path=path,
        standardizer=dataset.standardizer,
        dataset=dataset,
        config=config.to_dict(),
    )
    return TrainResult(flow=flow, config=config, losses=losses, seconds=seconds)


class _EMA:
    """theta_ema <- d_k theta_ema + (1 - d_k) theta after step k, d_k = min(decay, (1 + k) / (10 + k)).

    The warm-up of d_k keeps early, random weights from dominating short runs. Off when decay = 0.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()] if decay > 0 else None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.shadow is not None:
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
            torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with EMA weights copied in (the model itself when EMA is off)."""
        if self.shadow is not None:
            for p, s in zip(model.parameters(), self.shadow):
                p.copy_(s)
        return model


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)


def fit(
    config: TrainConfig | None = None,
    out: str | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    n_eval: int = 2000,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, measure W2 against held-out data, and (with ``out``) write the run folder.

    Metrics: the mean loss over the last 100 steps; exact W2 between ``n_eval`` rk4 (NFE 100)
    samples and ``n_eval`` held-out points; and the floor, W2 between two disjoint held-out draws
    of the same size. Held-out sets smaller than 2 * n_eval are split in two halves.
    """
    from pathlib import Path

    from .metrics import w2_exact
    from .plots import plot_samples
    from .runs import RunWriter, check_writable_run, write_json

    config = config or TrainConfig()
    config.validate()
    if out is not None:
        check_writable_run(Path(out), force)  # fail before spending time on training
    result = train(config, progress=progress)
    flow = result.flow

    test = flow.dataset.test
    m = min(n_eval, len(test) // 2)
    held_a, held_b = test[:m], test[m : 2 * m]
    samples = flow.sample(m, solver="rk4", nfe=100, seed=config.seed + 1)
    w2, floor = w2_exact(samples, held_a), w2_exact(held_b, held_a)
    metrics = {
        "final_loss": result.final_loss,
        "w2": w2,
        "w2_floor": floor,
        "w2_ratio": w2 / floor,
        "n_eval": m,
        "sampler": {"solver": "rk4", "nfe": 100},
        "train_seconds": result.seconds,
        "steps": config.steps,
    }
    if out is not None:
        with RunWriter(out, force=force) as folder:
            write_json(folder / "config.json", config.to_dict())
            flow.save_checkpoint(folder)
            write_json(folder / "metrics.json", metrics)
            plot_samples(samples, held_a, folder / "samples.png", title=f"{config.data}: W2 {w2:.3f} (floor {floor:.3f})")
    return result, metrics

"""What a run trains: the config, and the model, data, path and source, each given by name or as an object.

``train(model=..., data=..., path=..., source=...)`` takes, besides the config's names:

- ``model``: any ``torch.nn.Module`` called as ``model(x, t, **condition)``;
- ``data``: a tensor or array (N, ...) (or a mapping ``{"x": rows, "labels": ..., "conditions": ...}``),
  split and standardised as a data file is; or a torch ``Dataset``, a ``DataLoader`` or any iterable of
  batches, streamed (:mod:`flowmatch.data.streams`) and standardised from its first batches
  (:func:`~flowmatch.data.streams.estimate_standardizer`; ``standardize`` as for rows: auto standardises
  flat rows, not images);
- ``path``: an :class:`~flowmatch.paths.affine.AffinePath` or a Schedule (a ``CustomSchedule`` too);
- ``source``: the rows of a tensor, a sampler ``fn(n, generator)``, or a data set's name.

The config records an object as ``"python"``; the run folder records how to rebuild it where it can
(:mod:`flowmatch.runs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from flowmatch.data.dataset import Dataset, load_dataset
from flowmatch.data.standardize import Standardizer
from flowmatch.data.streams import SHUFFLE_ROWS as DEFAULT_SHUFFLE_ROWS
from flowmatch.data.streams import Stream, estimate_standardizer, is_stream
from flowmatch.engine.seam import Objects
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath, make_path
from flowmatch.paths.schedules import Schedule


@dataclass
class TrainingData:
    """The data of a run, with what the model needs to know about them."""

    dataset: Dataset | None  # finite or built-in data: every process draws the same global batch
    stream: Stream | None  # streamed data: each process reads its own batches
    dim: int
    shape: tuple[int, ...] | None  # one row as the model takes it (None: flat)
    standardizer: Standardizer
    conditions: dict[str, dict[str, int]]  # the model's conditions and how to drop them (see PairSampler)
    n_train: int | None  # training rows (None: fresh draws or unknown)

    @property
    def source_of_batches(self) -> Dataset | Stream:
        return self.dataset if self.dataset is not None else self.stream  # type: ignore[return-value]


def training_data(
    config: Any,
    objects: Objects,
    *,
    world: int = 1,
    rank: int = 0,
    start_step: int = 0,
    stream_state: dict[str, Any] | None = None,
    min_test_rows: int = 0,
    resumed_flow: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> TrainingData:
    """Resolve the data: a name or file (as the config says), an array, or a stream. Finite data must hold out
    at least ``min_test_rows`` test rows (:meth:`Dataset.require_test_rows`). A stream's standardiser is
    estimated from its first batches, or for a resumed run (``resumed_flow``: the checkpoint's flow
    metadata) the one it started with; under torchrun the processes pool their batches (over ``device``)."""
    from flowmatch.engine.schedules import batch_size_at
    from flowmatch.flows.continuous import dataset_from_config

    data = objects.data
    if data is not None and is_stream(data):
        if config.pairs:
            raise FlowmatchError("a pairs file replaces the data: do not pass data= with pairs")
        if config.test_fraction != 0.2:
            raise FlowmatchError("test_fraction applies to data files and arrays; a stream holds no rows out (measure with reference=)")
        stream = Stream(
            data, size_at=lambda step: batch_size_at(config, step), seed=config.seed, world=world, rank=rank,
            start_step=start_step, workers=config.workers, state=stream_state, shuffle_rows=config.shuffle_rows,
        )  # fmt: skip
        if stream.kind == "map" and config.shuffle_rows != DEFAULT_SHUFFLE_ROWS:
            raise FlowmatchError("shuffle_rows applies to a DataLoader or an iterable; flowmatch shuffles a torch Dataset itself")
        if stream.kind != "map" and config.workers:
            raise FlowmatchError(
                "workers applies to a torch Dataset given as data (flowmatch's own DataLoader); give your DataLoader its num_workers"
            )
        x, condition = stream.peek()
        dim = math.prod(x.shape[1:])
        shape = tuple(x.shape[1:]) if x.ndim > 2 else None
        return TrainingData(
            dataset=None, stream=stream, dim=dim, shape=shape,
            standardizer=_stream_standardizer(stream, config, dim, shape, resumed_flow, world, device),
            conditions=_stream_conditions(condition, objects.model), n_train=stream.n_rows,
        )  # fmt: skip
    for name, default, applies in (
        ("shuffle_rows", DEFAULT_SHUFFLE_ROWS, "a DataLoader or iterable given to train()"),
        ("workers", 0, "a torch Dataset given to train()"),
    ):
        if getattr(config, name) != default:
            raise FlowmatchError(f"{name} applies to {applies}, not to {_what(data)}")
    if data is not None:
        dataset = _array_dataset(data, config).require_test_rows(min_test_rows).hold_out_validation(config.val_fraction, config.seed)
    else:
        dataset = dataset_from_config(config.to_dict(), min_test_rows)
    if config.conditional and not dataset.num_classes:
        raise FlowmatchError(f"data '{config.data}' has no class labels to condition on (set label_column=NAME for a CSV column)")
    conditions: dict[str, dict[str, int]] = {}
    if config.conditional:
        conditions["y"] = {"classes": dataset.num_classes}
    if dataset.train_conditions is not None:
        conditions["c"] = {"dim": int(dataset.train_conditions.shape[1])}
    return TrainingData(
        dataset=dataset, stream=None, dim=dataset.dim, shape=dataset.shape, standardizer=dataset.standardizer,
        conditions=conditions, n_train=dataset.n_train,
    )  # fmt: skip


def _array_dataset(data: Any, config: Any) -> Dataset:
    """A Dataset of rows given in Python: an array, or a mapping {"x", "labels", "conditions"}."""
    from flowmatch.flows.continuous import standardize_option

    parts = dict(data) if isinstance(data, Mapping) else {"x": data}
    unknown = set(parts) - {"x", "labels", "conditions"}
    if "x" not in parts or unknown:
        raise FlowmatchError(f"data given as a mapping takes keys x, labels and conditions; got {', '.join(map(str, parts))}")
    return Dataset.from_array(
        parts["x"], labels=parts.get("labels"), conditions=parts.get("conditions"),
        standardize=standardize_option(config.standardize), seed=config.seed, test_fraction=config.test_fraction,
    )  # fmt: skip


def _what(data: Any) -> str:
    """How the data were given, for an error that says an option does not apply to them."""
    return "a data file or built-in set" if data is None else f"rows given as a {type(data).__name__}"


def _stream_standardizer(
    stream: Stream,
    config: Any,
    dim: int,
    shape: tuple[int, ...] | None,
    resumed: dict[str, Any] | None,
    world: int,
    device: torch.device | None,
) -> Standardizer:
    """A stream's standardiser: a resumed run's own (checkpoint.json's, whatever it was); none with ``standardize``
    no, or auto on rows with a shape (images, as for rows given as a tensor); else the estimate from the first
    batches (:func:`~flowmatch.data.streams.estimate_standardizer`)."""
    if resumed is not None and "standardizer" in resumed:
        saved = Standardizer.from_dict(resumed["standardizer"])
        if saved.dim != dim:
            raise FlowmatchError(f"the checkpoint's standardiser has {saved.dim} columns, the stream's rows {dim}")
        return saved
    if config.standardize == "no" or (config.standardize == "auto" and shape is not None):
        return Standardizer.identity(dim)
    return estimate_standardizer(stream, _sum_over_processes(device) if world > 1 else None)


def _sum_over_processes(device: torch.device | None):
    """A tensor summed over torchrun's processes (on ``device``: NCCL reduces GPU tensors), back on the CPU."""
    import torch.distributed as dist

    def reduce_sum(value: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return value
        value = value.to(device) if device is not None else value
        dist.all_reduce(value)
        return value.cpu()

    return reduce_sum


def _stream_conditions(condition: dict[str, torch.Tensor], model: torch.nn.Module | None) -> dict[str, dict[str, int]]:
    """The conditions a stream's batches carry: integer ones are labels (dropped to the model's
    ``num_classes`` where it has one, else never dropped), float ones vectors (dropped to NaN)."""
    out = {}
    for name, value in condition.items():
        if value.is_floating_point():
            out[name] = {"dim": int(value[0].numel()) if len(value) else 0}
        else:
            out[name] = {"classes": int(getattr(model, "num_classes", 0) or 0)}
    if model is None and set(out) - {"c"}:
        raise FlowmatchError(
            f"the built-in models take a float condition named 'c' from a stream; these batches carry {', '.join(out)}: "
            "name the condition 'c', pass class labels through a data set (data=tensor with labels), or bring your own model"
        )
    return out


def resolve_source(config: Any, objects: Objects, dim: int):
    """None for N(0, I), else an object with ``sample(n, generator)`` (a data set by name, or one given)."""
    if objects.source is not None:
        from flowmatch.data.sources import as_source

        return as_source(objects.source, dim)
    if config.source == "gaussian":
        return None
    source = load_dataset(config.source, seed=config.seed + 1)
    if source.dim != dim:
        raise FlowmatchError(f"source '{config.source}' has dimension {source.dim}, data has {dim}")
    return source


def resolve_path(config: Any, objects: Objects) -> AffinePath:
    """The config's path, or the one given: an AffinePath, or a Schedule (a ``CustomSchedule`` too) made one."""
    if objects.path is None:
        return make_path(config.path, config.sigma_min, config.bridge_sigma)
    path = AffinePath(objects.path) if isinstance(objects.path, Schedule) else objects.path
    if not isinstance(path, AffinePath):
        raise FlowmatchError(f"path must be a name, an AffinePath or a Schedule, got {type(objects.path).__name__}")
    check_endpoints(path)
    return path


#: How far a given path's alpha(0), sigma(0) and alpha(1) may be from the source's (alpha 0, sigma 1) and the
#: data's (alpha 1): a few percent of rounding in a user's formula, never a path that starts or ends elsewhere.
#: sigma(1) may be anything in [0, 1), as the built-in Gaussian path's sigma_min may.
ENDPOINT_TOLERANCE = 0.05


def check_endpoints(path: AffinePath) -> None:
    """Refuse a given path that does not go from the source (t = 0: alpha 0, sigma 1) to the data (t = 1: alpha 1,
    sigma about 0), such as a CustomSchedule with alpha = sigma = 0.5, which would train a flow that samples
    neither."""
    import torch

    t = torch.tensor([0.0, 1.0])
    try:
        alpha, sigma = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (path.schedule.alpha(t), path.schedule.sigma(t)))
    except Exception as exc:  # noqa: BLE001 a user's callables: any failure is theirs, named
        raise FlowmatchError(f"path: its schedule fails at t = 0 and 1 ({type(exc).__name__}: {exc})") from None
    if alpha.shape != (2,) or sigma.shape != (2,):
        raise FlowmatchError(
            f"path: alpha(t) and sigma(t) must give one value per time, got shapes {tuple(alpha.shape)} and {tuple(sigma.shape)} for 2 times"
        )
    wanted = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    got = torch.cat([alpha[:1], sigma[:1], alpha[1:], sigma[1:]])
    if not torch.isfinite(got).all() or (got[:3] - wanted).abs().max() > ENDPOINT_TOLERANCE or not 0 <= got[3] < 1:
        a0, s0, a1, s1 = got.tolist()
        raise FlowmatchError(
            f"path is not a path from the source to the data: alpha(0) = {a0:g}, sigma(0) = {s0:g}, alpha(1) = {a1:g}, "
            f"sigma(1) = {s1:g}; a path starts at alpha 0, sigma 1 (the source) and ends at alpha 1 (the data), each within "
            f"{ENDPOINT_TOLERANCE:g}, with sigma(1) in [0, 1)"
        )

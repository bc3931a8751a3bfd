"""Training data streamed from torch: a map-style ``Dataset``, a ``DataLoader`` or any iterable of batches.

Nothing is loaded whole: each step takes the next batch. A batch is a tensor x (B, ...), a pair
(x, y), or a mapping with the data under ``"x"`` and any other entries as named conditions; the
model is called as ``model(x, t, **conditions)`` (a pair's second entry is the condition ``y``).

How each kind is read, on one process and under ``torchrun``:

- a map-style ``torch.utils.data.Dataset`` (``__getitem__`` and ``__len__``): flowmatch reads it with
  a ``DataLoader`` whose batch sampler walks one :class:`~torch.utils.data.DistributedSampler` epoch
  after another (shuffled with the run's seed; under torchrun each process gets its own shard), with
  the run's batch size for each step (its warm-up included). The position is a function of the step,
  so a resumed run reads exactly the rows it would have read.
- a ``DataLoader`` (and any other iterable that can be iterated again): read as given, its batch size
  its own, epoch after epoch; flowmatch calls its sampler's ``set_epoch`` where there is one. Under
  torchrun each process must get its own shard, e.g. with a ``DistributedSampler``, and every process
  must yield the same number of batches per epoch. On resume flowmatch restores the random-number
  states of the epoch's start (torch's global generator, the loader's and its sampler's generators),
  iterates again and skips the batches already trained on: exact for a loader whose order depends
  on those generators (the usual ``shuffle=True``).
- an iterator (``iter(data) is data``, e.g. a generator): read once; training ends when it is
  exhausted. It cannot be rewound, so a resumed run continues from wherever the iterator passed in
  stands.

**Standardisation** (:func:`estimate_standardizer`). A stream is standardised as a data file is, from an
estimate: the per-column mean and (population) std of its first batches, read ahead and then trained on
as usual (:meth:`Stream.lookahead`): batches until they hold :data:`STANDARDIZE_ROWS` rows (10,000), or
:data:`STANDARDIZE_BYTES` of data, or the first epoch ends (a one-shot iterator: the data; a map-style
set: its rows, this process's shard of them), whichever comes first; under torchrun the estimate pools
every process's first batches. The run keeps the estimate (checkpoint.json's standardiser, as for a file)
and a resumed run reuses it. Later batches are not fitted again; :func:`drift` tells when one lies far
from the estimate (a sorted or drifting stream).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]
_END = object()  # an exhausted iterator's next()


def split_batch(batch: Any) -> Batch:
    """(x, conditions) of one batch: a tensor, a pair (x, y), or a mapping with ``"x"``."""
    if isinstance(batch, torch.Tensor):
        x, conditions = batch, {}
    elif isinstance(batch, Mapping):
        if "x" not in batch:
            raise FlowmatchError(f"a batch given as a mapping needs its data under 'x'; got keys {', '.join(map(str, batch))}")
        x, conditions = batch["x"], {str(k): v for k, v in batch.items() if k != "x"}
    elif isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2:
        x, conditions = batch[0], ({"y": batch[1]} if len(batch) == 2 else {})
    else:
        raise FlowmatchError(
            f"cannot read a batch of type {type(batch).__name__}: give a tensor x, a pair (x, y) or a mapping {{'x': x, name: condition}}"
        )
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.ndim < 2 or not len(x):
        raise FlowmatchError(f"a batch's data must be a float tensor of shape (B, ...), got {x.dtype} {tuple(x.shape)}")
    conditions = {k: torch.as_tensor(v) for k, v in conditions.items()}
    for name, value in conditions.items():
        if value.shape[:1] != x.shape[:1]:
            raise FlowmatchError(f"condition '{name}' has {value.shape[0] if value.ndim else 0} rows, the batch {len(x)}")
    return x, conditions


def is_stream(data: Any) -> bool:
    """Whether ``data`` is read as a stream: a torch Dataset, a DataLoader or another iterable (not a
    tensor, an array, a mapping of arrays or a name)."""
    if isinstance(data, (str, bytes, torch.Tensor, Mapping)) or hasattr(data, "__array__"):
        return False
    return isinstance(data, (torch.utils.data.Dataset, DataLoader)) or isinstance(data, Iterable)


class _StepBatches(Sampler):
    """Index batches of a map-style data set, step after step: the sizes come from ``size_at(step)``,
    the indices from consecutive epochs of a DistributedSampler (this process's shard)."""

    def __init__(self, dataset, size_at: Callable[[int], int], seed: int, world: int, rank: int, start_step: int):
        self.sampler: DistributedSampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=world > 1
        )
        self.size_at, self.start_step = size_at, start_step
        self.per_epoch = len(self.sampler)
        if self.per_epoch < 1:
            raise FlowmatchError(f"the data set has {len(dataset)} rows: too few for {world} processes")

    def __iter__(self) -> Iterator[list[int]]:
        done = sum(self.size_at(s) for s in range(self.start_step))  # rows this process has read
        epoch, offset = divmod(done, self.per_epoch)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)[offset:]
        step = self.start_step
        while True:
            size = self.size_at(step)
            while len(order) < size:
                epoch += 1
                self.sampler.set_epoch(epoch)
                order += list(self.sampler)
            yield order[:size]
            order = order[size:]
            step += 1

    def __len__(self) -> int:  # endless; DataLoader only asks for it in len(loader)
        raise TypeError("an endless batch sampler has no length")


class Stream:
    """This process's training batches from a torch Dataset, a DataLoader or an iterable (see the module
    docstring), resumable: :meth:`state` goes into a checkpoint and ``state=`` puts a new stream back there.
    """

    def __init__(
        self,
        data: Any,
        *,
        size_at: Callable[[int], int],
        seed: int,
        world: int = 1,
        rank: int = 0,
        start_step: int = 0,
        workers: int = 0,
        state: dict[str, Any] | None = None,
    ):
        self.data = data
        self.once = False
        self.loader: Iterable[Any]
        self.epoch_rows: int | None = None  # the rows of one epoch of this process's shard, where known (a map-style set)
        if isinstance(data, DataLoader):
            self.kind, self.loader = "loader", data
        elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.kind = "map"
            sampler = _StepBatches(data, size_at, seed, world, rank, start_step)
            self.loader = DataLoader(data, batch_sampler=sampler, num_workers=workers)
            self.epoch_rows = sampler.per_epoch
        elif isinstance(data, Iterable):
            self.kind, self.loader = "iterable", data
            self.once = iter(data) is data
        else:
            raise FlowmatchError(f"data of type {type(data).__name__} is neither a data set nor an iterable of batches")
        self.epoch, self.index = 0, 0  # the epoch being read and the batches read from it
        self.epoch_rng: dict[str, torch.Tensor] = {}
        self._iterator: Iterator | None = None
        self._first: Any = None  # an epoch's first batch, read when the epoch starts (or its end, put back)
        self._ahead: deque[Batch] = deque()  # batches read and not yet handed out (peek, lookahead)
        self._resume = state

    @property
    def n_rows(self) -> int | None:
        """The number of training rows where the data know it (a map-style data set, a loader over one)."""
        dataset = self.data if self.kind == "map" else getattr(self.loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else None
        except TypeError:
            return None

    def peek(self) -> Batch:
        """The next batch, without consuming it (for the model's input shape and conditions)."""
        if not self._ahead:
            batch = self._next()
            assert batch is not None
            self._ahead.append(batch)
        return self._ahead[0]

    def next(self) -> Batch:
        if self._ahead:
            return self._ahead.popleft()
        batch = self._next()
        assert batch is not None
        return batch

    def lookahead(self, rows: int, max_bytes: int) -> list[Batch]:
        """The next batches, without consuming them: read until they hold ``rows`` rows or ``max_bytes`` bytes of
        data, or the epoch (a one-shot iterator: the data; a map-style set: one epoch of this process's shard, in
        rows) ends. :meth:`next` hands them out in order."""
        if self.epoch_rows is not None:
            rows = min(rows, self.epoch_rows)

        def held() -> tuple[int, int]:
            return sum(len(x) for x, _ in self._ahead), sum(x.numel() * x.element_size() for x, _ in self._ahead)

        count, size = held()
        while count < rows and size < max_bytes:
            batch = self._next(roll=False)
            if batch is None:
                break
            self._ahead.append(batch)
            count, size = held()
        return list(self._ahead)

    def state(self) -> dict[str, Any]:
        """Where the stream stands, as JSON (epoch, batches read) and tensors (the epoch's start states)."""
        read = self.index - len(self._ahead)  # the batches read ahead are all of this epoch (lookahead stops at its end)
        return {"epoch": self.epoch, "index": read, "rng": dict(self.epoch_rng)}

    # -- reading ------------------------------------------------------------------------------------
    def _generators(self) -> dict[str, torch.Generator]:
        found = {}
        for key, owner in (("loader", self.loader), ("sampler", getattr(self.loader, "sampler", None))):
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator):
                found[key] = g
        return found

    def _start_epoch(self, restore: dict[str, torch.Tensor] | None = None) -> None:
        if self.kind == "map" or self.once:
            if self._iterator is None:
                self._iterator = iter(self.loader)
            return
        generators = self._generators()
        if restore:  # the states of the epoch's start, as the first run had them
            current = torch.get_rng_state()
            torch.set_rng_state(restore["torch"])
            for key, g in generators.items():
                if key in restore:
                    g.set_state(restore[key])
        self.epoch_rng = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
        self._iterator = iter(self.loader)
        # a shuffling sampler draws its order at the first batch, not at iter(): take it now, under the epoch's states
        self._first = next(self._iterator, _END)
        if restore:
            torch.set_rng_state(current)

    def _next(self, roll: bool = True) -> Batch | None:
        """The next batch; at the end of an epoch the next epoch's first, or with ``roll`` False None (the end put
        back, for the next call)."""
        if self._iterator is None:
            state, self._resume = self._resume, None
            if state is not None and self.kind != "map" and not self.once:
                self.epoch = int(state["epoch"])
                self._start_epoch(state.get("rng") or None)
                for _ in range(int(state["index"])):  # the batches this epoch already gave
                    self._take()
                self.index = int(state["index"])
            else:
                self._start_epoch()
        batch = self._take()
        if batch is _END and not roll:
            self._first = _END
            return None
        if batch is _END:
            if self.once:
                raise StopIteration
            if self.index == 0:
                raise FlowmatchError("the training data yielded no batches")
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()
            batch = self._take()
            if batch is _END:
                raise FlowmatchError(f"the training data yielded no batches in epoch {self.epoch}")
        self.index += 1
        return split_batch(batch)

    def _take(self) -> Any:
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        assert self._iterator is not None
        return next(self._iterator, _END)


#: A stream's standardiser is estimated from its first batches: until they hold this many rows (module docstring).
STANDARDIZE_ROWS = 10_000


#: ... or this many bytes of data (images: 10,000 of 3 x 64 x 64 floats would take 480 MiB).
STANDARDIZE_BYTES = 256 << 20


def estimate_standardizer(stream: Stream, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Standardizer:
    """The standardiser of a stream, estimated from its first batches (module docstring): per-column mean and
    population std in float64. A column constant in them gets std 1 about its value (not ``fixed``: later
    batches may vary in it). ``reduce_sum`` sums a tensor over processes (torchrun: every process's first
    batches count, and every process gets the same estimate)."""
    batches = stream.lookahead(STANDARDIZE_ROWS, STANDARDIZE_BYTES)
    x = torch.cat([b.reshape(len(b), -1).to(torch.float64) for b, _ in batches])
    if not torch.isfinite(x).all():
        raise FlowmatchError("the stream's first batches hold NaN or infinite values: they cannot be standardised")
    total = reduce_sum or (lambda v: v)
    count = total(torch.tensor([float(len(x))], dtype=torch.float64))
    mean = total(x.sum(dim=0)) / count
    std = (total(((x - mean) ** 2).sum(dim=0)) / count).sqrt()
    constant = std <= 1e-10 * mean.abs()
    return Standardizer(mean, torch.where(constant, torch.ones_like(std), std))


#: :func:`drift` reads batches of at least this many rows: the mean of 64 standardised rows lies within 1/8
#: of 0 at one standard deviation, their std within about 9% of 1.
DRIFT_MIN_ROWS = 64


def drift(z: torch.Tensor) -> str:
    """Why a batch ``z`` (n, D) in model coordinates lies far from its stream's estimate ("" where it does not,
    or has fewer than :data:`DRIFT_MIN_ROWS` rows): a column whose batch mean is more than one estimated std
    from the estimate's mean (8 standard errors at 64 rows), or whose batch std is over 3x the estimate's.
    Rows drawn from the estimate's own law do neither, bar a heavy tail; a sorted stream, or one whose law
    moves or widens, does."""
    if len(z) < DRIFT_MIN_ROWS:
        return ""
    z = z.detach().to(torch.float64)
    mean, std = z.mean(dim=0), z.std(dim=0, correction=0)
    far = torch.nonzero((mean.abs() > 1) | (std > 3)).flatten()
    if not len(far):
        return ""
    j = int(far[0])
    return f"column {j} has mean {float(mean[j]):.3g} and std {float(std[j]):.3g} in the estimate's units (expected near 0 and 1)"

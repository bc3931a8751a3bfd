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
- a ``DataLoader`` (and any other iterable that can be iterated again): read epoch after epoch, each
  batch as large as the loader gives it, its rows through the shuffle buffer (below); flowmatch calls
  its sampler's ``set_epoch`` where there is one. Under torchrun each process must get its own shard,
  e.g. with a ``DistributedSampler``, and every process must yield the same number of batches per epoch.
  On resume flowmatch restores the random-number states of the epoch's start (torch's global generator,
  the loader's and its sampler's generators), iterates again and replays the batches already trained
  on: exact for a loader whose order depends on those generators (the usual ``shuffle=True``) or on
  nothing (``shuffle=False``).
- an iterator (``iter(data) is data``, e.g. a generator): read once, through the shuffle buffer;
  training ends when it is exhausted. It cannot be rewound, so a resumed run continues from wherever the
  iterator passed in stands (the rows the buffer held at the checkpoint are not trained on).

**Standardisation** (:func:`estimate_standardizer`). A stream is standardised as a data file is, from an
estimate: the per-column mean and (population) std of its first batches, read ahead and then trained on
as usual (:meth:`Stream.lookahead`): batches until they hold :data:`STANDARDIZE_ROWS` rows (10,000), or
:data:`STANDARDIZE_BYTES` of data, or the first epoch ends (a one-shot iterator: the data; a map-style
set: its rows, this process's shard of them), whichever comes first; under torchrun the estimate pools
every process's first batches. The run keeps the estimate (checkpoint.json's standardiser, as for a file)
and a resumed run reuses it. Later batches are not fitted again; :func:`drift` tells when one lies far
from the estimate (a sorted or drifting stream).

**Shuffle buffer** (``shuffle_rows``). flowmatch cannot see the order of a DataLoader's or an iterable's rows
(a map-style set it shuffles itself), and a stream in sorted order (by class, say, or a generator that
walks its modes one after the other) trains on one part of the data at a time and forgets the rest. So a
stream's rows pass through a shuffle buffer of ``shuffle_rows`` rows (at most :data:`BUFFER_BYTES` of
data): it first fills with the stream's first batches; then each step's batch, as large as the batch the
stream gave at that step, is drawn at random from the buffer's rows and the new batch's together, and the
rows not drawn stay in the buffer. Each row is trained on once per epoch, as without a buffer. At the end of
an epoch (or of a one-shot iterator) the buffer empties in random order, in the sizes of the batches it
filled with, so an epoch gives as many batches as the stream does; the next epoch fills it again. The
draws come from a generator seeded with the run's seed, the epoch and the process's rank, so a resumed
run of a re-iterable stream replays the epoch's batches and stands exactly where the first run stood.
``shuffle_rows=0`` trains on the batches as given.
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
    if x.is_meta or any(isinstance(v, torch.Tensor) and v.is_meta for v in conditions.values()):
        raise FlowmatchError("a batch holds tensors on the meta device, which have no values: give them on the CPU or an accelerator")
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
        shuffle_rows: int = 0,
    ):
        if isinstance(shuffle_rows, bool) or not isinstance(shuffle_rows, int) or shuffle_rows < 0:
            raise FlowmatchError(f"shuffle_rows must be an integer >= 0, got {shuffle_rows!r}")
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
        self._raw_ahead: deque[Batch] = deque()  # the stream's own batches read by lookahead, not yet through the buffer
        self._row: tuple | None = None  # the first batch's row shape and its conditions' (every batch must match)
        self._resume = state
        self.seed, self.rank = seed, rank
        # a map-style set is shuffled by its sampler: no buffer; else at most shuffle_rows rows (BUFFER_BYTES: below)
        self.buffer = _ShuffleBuffer(shuffle_rows) if shuffle_rows and self.kind != "map" else None

    @property
    def n_rows(self) -> int | None:
        """The number of training rows where the data know it (a map-style data set, a loader over one)."""
        dataset = self.data if self.kind == "map" else getattr(self.loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else None
        except TypeError:
            return None

    def peek(self) -> Batch:
        """A batch of the stream's rows, not consumed, for their shape and conditions: the next batch the stream
        gives, ahead of the shuffle buffer (where an epoch's rows are all in the buffer: the rows it holds)."""
        batches = self.lookahead(1, 0)
        if batches:
            return batches[0]
        if self.buffer is not None and self.buffer.held:
            return self.buffer.rows_held()
        raise FlowmatchError("the training data yielded no batches")

    def next(self) -> Batch:
        batch = self._next()
        assert batch is not None
        return batch

    def lookahead(self, rows: int, max_bytes: int) -> list[Batch]:
        """The stream's next batches as it gives them (before the shuffle buffer), without consuming them: read until
        they hold ``rows`` rows or ``max_bytes`` bytes of data, or the epoch (a one-shot iterator: the data; a
        map-style set: one epoch of this process's shard, in rows) ends. Training reads them next, in order."""
        if self.epoch_rows is not None:
            rows = min(rows, self.epoch_rows)
        self._begin()

        def held() -> tuple[int, int]:
            return sum(len(x) for x, _ in self._raw_ahead), sum(x.numel() * x.element_size() for x, _ in self._raw_ahead)

        count, size = held()
        while not self._raw_ahead or (count < rows and size < max_bytes):
            batch = self._read()
            if batch is None:
                break
            self._raw_ahead.append(batch)
            count, size = held()
        return list(self._raw_ahead)

    def state(self) -> dict[str, Any]:
        """Where the stream stands, as JSON (epoch, batches read) and tensors (the epoch's start states)."""
        # the batches handed out this epoch (those peek and lookahead read ahead are not: a resumed run reads them again)
        return {"epoch": self.epoch, "index": self.index, "rng": dict(self.epoch_rng)}

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
        """The next batch handed out (through the shuffle buffer where there is one); at the end of an epoch the
        next epoch's first, or with ``roll`` False None (the end put back, for the next call)."""
        self._begin()
        batch = self._raw() if self.buffer is None else self._buffered()
        if batch is None and not roll:
            return None
        if batch is None:
            if self.once:
                raise StopIteration
            if self.index == 0:
                raise FlowmatchError("the training data yielded no batches")
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()
            batch = self._raw() if self.buffer is None else self._buffered()
            if batch is None:
                raise FlowmatchError(f"the training data yielded no batches in epoch {self.epoch}")
        self.index += 1
        return batch

    def _begin(self) -> None:
        """Start reading at the first call: at the start, or for a resumed run where the checkpoint stood."""
        if self._iterator is not None:
            return
        state, self._resume = self._resume, None
        if state is None or self.kind == "map" or self.once:
            self._start_epoch()
            return
        self.epoch = int(state["epoch"])
        self._start_epoch(state.get("rng") or None)
        if self.buffer is None:
            for _ in range(int(state["index"])):  # the batches this epoch already gave
                self._take()
        else:  # the epoch's batches again, through the buffer's draws: where the first run stood
            for _ in range(int(state["index"])):
                if self._buffered() is None:
                    raise FlowmatchError(
                        f"the training data gave fewer batches in epoch {self.epoch} than the checkpoint read from it "
                        f"({state['index']}): a resumed stream must give the same batches"
                    )
        self.index = int(state["index"])

    def _raw(self) -> Batch | None:
        """The stream's own next batch of this epoch (those lookahead read first), or None at its end."""
        if self._raw_ahead:
            return self._raw_ahead.popleft()
        return self._read()

    def _read(self) -> Batch | None:
        """The next batch from the stream itself, or None at the epoch's end (the end put back, for the next call)."""
        batch = self._take()
        if batch is _END:
            self._first = _END
            return None
        x, conditions = split_batch(batch)
        row = (tuple(x.shape[1:]), {k: tuple(v.shape[1:]) for k, v in conditions.items()})
        if self._row is None:
            self._row = row
        elif row != self._row:
            raise FlowmatchError(
                f"the training data changed the shape of their rows: a batch of rows {row[0]}"
                + (f" with conditions {row[1]}" if row[1] or self._row[1] else "")
                + f" after rows {self._row[0]}"
                + (f" with conditions {self._row[1]}" if row[1] or self._row[1] else "")
                + " (every batch must hold rows of one shape)"
            )
        return x, conditions

    def _buffered(self) -> Batch | None:
        """The next batch out of the shuffle buffer (module docstring), or None when the epoch's rows are all out."""
        buffer = self.buffer
        assert buffer is not None
        if buffer.epoch != self.epoch:
            buffer.start(self.seed, self.epoch, self.rank)
        while not buffer.ended and buffer.filling():
            batch = self._raw()
            if batch is None:
                buffer.ended = True
            else:
                buffer.fill(batch)
        if buffer.ended:
            return buffer.drain()
        batch = self._raw()
        if batch is None:
            buffer.ended = True
            return buffer.drain()
        return buffer.swap(batch)

    def _take(self) -> Any:
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        assert self._iterator is not None
        return next(self._iterator, _END)


#: The rows of a stream's shuffle buffer by default (``shuffle_rows``): 10,000 rows hold each of 100 classes ~100 times.
SHUFFLE_ROWS = 10_000

#: A shuffle buffer holds at most this much data (images: 16,384 rows of 1 x 64 x 64 floats, 1,365 of 3 x 128 x 128).
BUFFER_BYTES = 256 << 20


class _ShuffleBuffer:
    """The rows a stream has read and not yet handed out, with their conditions (module docstring)."""

    def __init__(self, rows: int):
        self.rows, self.capacity = rows, rows
        self.epoch = -1
        self.ended = False
        self.x: torch.Tensor | None = None  # (n, ...) the rows held
        self.conditions: dict[str, torch.Tensor] = {}
        self.sizes: deque[int] = deque()  # the sizes of the batches the buffer filled with: the drain's batches
        self.order: torch.Tensor | None = None  # the drain's random order of the rows held
        self.parts: list[Batch] = []  # the batches read while filling, not yet joined
        self.filled = 0  # the rows read while filling
        self.generator = torch.Generator()

    @property
    def held(self) -> int:
        return self.filled if self.x is None else len(self.x)

    def rows_held(self) -> Batch:
        """The rows the buffer took in this epoch, not consumed (for their shape and conditions)."""
        self._join()
        assert self.x is not None
        return self.x, dict(self.conditions)

    def start(self, seed: int, epoch: int, rank: int) -> None:
        """An empty buffer for ``epoch``, its draws seeded by the run's seed, the epoch and the rank."""
        self.epoch, self.ended = epoch, False
        self.x, self.conditions, self.sizes, self.order = None, {}, deque(), None
        self.parts, self.filled = [], 0
        self.generator.manual_seed((seed * 1_000_003 + epoch * 7_919 + rank) % 2**63)

    def filling(self) -> bool:
        return self.x is None and self.filled < self.capacity

    @staticmethod
    def _check(x: torch.Tensor, conditions: dict[str, torch.Tensor], like: Batch) -> None:
        """That a batch's rows and conditions have the shapes and dtypes of the rows held (``like``)."""
        held, held_conditions = like
        if x.shape[1:] != held.shape[1:] or x.dtype != held.dtype:
            raise FlowmatchError(
                f"a batch's rows are {x.dtype} {tuple(x.shape[1:])}, the stream's earlier ones {held.dtype} {tuple(held.shape[1:])}: "
                "every batch must have rows of one shape"
            )
        if set(conditions) != set(held_conditions):
            raise FlowmatchError(
                f"a batch has the conditions {sorted(conditions) or 'none'}, the stream's earlier ones {sorted(held_conditions) or 'none'}"
            )
        for name, value in conditions.items():
            if value.shape[1:] != held_conditions[name].shape[1:] or value.dtype != held_conditions[name].dtype:
                raise FlowmatchError(
                    f"condition '{name}' changed between batches: {value.dtype} {tuple(value.shape[1:])} after "
                    f"{held_conditions[name].dtype} {tuple(held_conditions[name].shape[1:])}"
                )

    def fill(self, batch: Batch) -> None:
        x, conditions = batch
        if not self.parts:
            row_bytes = max(1, x[:1].numel() * x.element_size())
            self.capacity = max(1, min(self.rows, BUFFER_BYTES // row_bytes))
        else:
            self._check(x, conditions, self.parts[0])
        self.parts.append((x, conditions))
        self.filled += len(x)
        self.sizes.append(len(x))

    def _join(self) -> None:
        """The parts read while filling, as one tensor each (joined once: filling costs one copy of the rows)."""
        if self.parts:
            self.x = torch.cat([x for x, _ in self.parts])
            self.conditions = {k: torch.cat([c[k] for _, c in self.parts]) for k in self.parts[0][1]}
            self.parts = []

    def swap(self, batch: Batch) -> Batch:
        """A batch as large as ``batch``, drawn at random from the rows held and ``batch``'s; the rows of ``batch``
        not drawn take the places of the held rows that were."""
        x, conditions = batch
        self._join()
        assert self.x is not None
        self._check(x, conditions, (self.x, self.conditions))
        n, b = len(self.x), len(x)
        chosen = torch.randperm(n + b, generator=self.generator)[:b]
        held, new = chosen[chosen < n], chosen[chosen >= n] - n
        stay = torch.ones(b, dtype=torch.bool)
        stay[new] = False
        out_x = torch.cat([self.x[held], x[new]])
        out_c = {k: torch.cat([v[held], conditions[k][new]]) for k, v in self.conditions.items()}
        self.x[held] = x[stay]
        for k, v in self.conditions.items():
            v[held] = conditions[k][stay]
        return out_x, out_c

    def drain(self) -> Batch | None:
        """The next of the batches that empty the buffer at the end of the epoch (None when it is empty)."""
        self._join()
        if not self.sizes or self.x is None:
            return None
        if self.order is None:
            self.order = torch.randperm(len(self.x), generator=self.generator)
        size = self.sizes.popleft()
        take, self.order = self.order[:size], self.order[size:]
        return self.x[take], {k: v[take] for k, v in self.conditions.items()}


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

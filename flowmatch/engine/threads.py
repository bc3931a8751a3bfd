"""CPU threads: how many intra-op threads torch uses while flowmatch trains and samples.

torch starts with one intra-op thread per physical core of the machine (or ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``), however few cores the process may use and however small the work. Its OpenMP
threads meet at the end of every parallel op; when another process holds one of the cores, each op
waits for a thread that is not running, and the small ops of the 2-D models get many times slower.
On 2 cores beside other work, 200 training steps of the MLP of width 128 took 0.8-1.0 s on one thread
against 11-35 s on two, while on idle cores a second thread gains at most 1.9x, and only for large calls
(the measurements are in :func:`auto_threads`).

So every training and sampling call of flowmatch chooses the count (:func:`choose_threads`), in this
order:

1. ``threads=N`` with N >= 1 (the ``TrainConfig`` field, ``--threads N``): N threads.
2. Else ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: torch's count is left as it is (torch read them).
3. Else a count the program set itself with ``torch.set_num_threads`` before the call: left as it is.
   torch does not say whether ``set_num_threads`` was called, so flowmatch compares the count with the
   one torch starts with, computed as torch computes it (the machine's physical cores, read from
   Linux's ``/sys/devices/system/cpu``). A program that set exactly that number cannot be told apart
   from torch's default and gets the automatic choice; outside Linux this check is not made (there,
   pass ``threads=N`` or set ``OMP_NUM_THREADS`` to keep a count).
4. Else (``threads=0``, the default) :func:`auto_threads` of the cores this process may use and the
   work of one network call.

Where: every trainer once its network is built (``train``, ``train_discrete``, ``train_manifold``; ``fit``
measures and evaluates with the training's count), reflow and distillation before their teacher makes the
pairs, and ``flowmatch sample``, ``eval`` and ``plot`` after loading the run (``--threads``). ``Flow.sample``
called from one's own Python code keeps torch's count. The outermost of these calls (:func:`thread_scope`)
restores torch's previous count when it returns. A run records its choice in ``metrics.json``
(``threads``: the count, what chose it, the usable cores and the work estimate), so runs can be compared.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from flowmatch.errors import FlowmatchError

#: Multiply-adds of one network call (the estimate of :func:`call_work`) per thread: the automatic count is
#: work // WORK_PER_THREAD, between 1 and the usable cores, so a second thread comes at 500 million. The
#: idle crossover lies between the measured 110 million (no gain) and 420 million (1.1-1.9x); the switch
#: is set above it because beside other work a second thread costs far more (see :func:`auto_threads`).
WORK_PER_THREAD = 250_000_000


#: The largest count accepted from ``threads=N`` (a typo such as 10000 would start that many OS threads).
MAX_THREADS = 1024


ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of a call and what chose it: ``threads`` (the config or flag), an
    environment variable, ``torch.set_num_threads`` (the program's own count) or ``auto`` (the rule, from
    ``cores`` and ``work``). ``set`` says whether flowmatch sets the count (False: torch's is kept)."""

    count: int
    chosen_by: str
    set: bool
    cores: int
    work: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores(environ: Mapping[str, str] | None = None) -> int:
    """The cores this process may use: its CPU affinity (``os.sched_getaffinity``; ``os.cpu_count()``
    where the platform has none), at most the CPU quota of its cgroup (``/sys/fs/cgroup/cpu.max``,
    rounded up), and, under torchrun, divided among the processes of this machine (``LOCAL_WORLD_SIZE``)."""
    environ = os.environ if environ is None else environ
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, quota)
    try:
        local = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


def _cgroup_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def torch_default_threads() -> int | None:
    """The count torch starts with when no variable is set: the machine's physical cores (every
    present core, affinity ignored, as torch's cpuinfo counts them), from Linux's /sys topology; None
    where that cannot be read."""
    cores = set()
    try:
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
            topology = cpu / "topology"
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
    except OSError:
        return None
    return len(cores) or None


def call_work(model: Any, rows: int, positions: int = 1) -> float:
    """Multiply-adds of one forward call of ``model`` on ``rows`` rows, estimated as parameters x rows x
    positions (pixels of an image, tokens of a sequence; 1 for a row of numbers). Exact for an MLP up to
    its biases; an upper estimate for a U-Net, whose lower resolutions have fewer positions (the 8x8
    digits U-Net: 10.3 million against 3.8 million counted by torch's FlopCounterMode); 0 for a model
    that is not an ``nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        return 0.0
    return float(sum(p.numel() for p in model.parameters())) * max(1, rows) * max(1, positions)


def auto_threads(work: float, cores: int) -> int:
    """The automatic count: ``work // WORK_PER_THREAD`` threads, at least 1 and at most ``cores``.

    Measured basis (2 cores, AMD EPYC with avx512_bf16, torch 2.13 CPU wheel, each recipe's defaults, bf16
    autocast included; seconds of training time, two runs each, 1 thread against 2; work: forward
    multiply-adds of one network call by :func:`call_work`). "Idle": the timing process ran under
    SCHED_FIFO, so the other work on the shared machine could not take its cores; "busy": beside other
    processes (load average 2 to 5) at normal priority.

    ========================================  ===========  ===========================  =====================
    call                                      work         idle: 1 / 2 threads          busy: 1 / 2 threads
    ========================================  ===========  ===========================  =====================
    MLP 128 x 3, batch 256, 200 steps         15 million   0.67, 0.71 / 0.81, 0.78      0.80, 1.04 / 35, 11
    MLP 256 x 3, batch 512, 200 steps         110 million  1.50, 1.43 / 1.39, 1.39      1.8, 2.1 / 5.6, 32
    sampling 2,000 points, MLP 256, rk4 100   440 million  0.78, 0.71 / 0.36, 0.42      1.0, 0.7 / 8.6, 5.0
    MLP 512 x 3, batch 512, 100 steps         420 million  1.62, 1.58 / 1.42, 1.00      (200 steps) 6.1 / 36
    MLP 1024 x 3, batch 512, 50 steps         1.6 billion  2.75, 2.40 / 1.79, 1.39      (100 steps) 6.6 / 27
    U-Net, 8x8 digits, batch 128, 50 steps    1.3 billion  2.17, 2.21 / 1.90, 1.63      (100 steps) 8.7 / 94
    transformer, 64 x 64 tokens, 20 steps     2.5 billion  5.36, 5.64 / 3.03, 3.53
    ========================================  ===========  ===========================  =====================

    On an idle machine a second thread pays from a few hundred million multiply-adds a call (up to 1.9x),
    and costs up to 1.15x below that; beside other work every call tested was 3 to 40 times slower on two
    threads. The rule puts the second thread at 500 million, above the idle crossover (between 110 and
    420 million), trading the idle gain of calls just above it (up to 1.9x) against their loss beside
    other work: the demo's model trains (110 million) and samples in 2,048-row chunks (440 million) on one
    thread, MLPs from width 560 at batch 512, the 8x8 U-Net (1.3 billion) and the token transformer
    (2.5 billion) on two. On a machine shared with other work ``threads=1`` (``--threads 1``) is faster
    for every model measured. Beyond 2 cores the proportional count is an extrapolation, not a measurement.
    """
    return max(1, min(cores, int(work // WORK_PER_THREAD)))


def choose_threads(
    requested: Any = 0,
    work: float = 0.0,
    *,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
    current: int | None = None,
    torch_default: int | None = -1,
) -> ThreadChoice:
    """The thread count of a call (module docstring: ``threads``, then the variables, then the program's
    own ``torch.set_num_threads``, then :func:`auto_threads`). ``requested`` is ``threads`` (0: choose);
    ``work`` the multiply-adds of one network call (:func:`call_work`). ``environ``, ``cores``, ``current``
    (torch's count before flowmatch's call) and ``torch_default`` (the count torch starts with; None:
    unknown) default to this process's own."""
    if isinstance(requested, bool) or not isinstance(requested, int) or not 0 <= requested <= MAX_THREADS:
        raise FlowmatchError(f"threads must be an integer from 1 to {MAX_THREADS}, or 0 to choose, got {requested!r}")
    environ = os.environ if environ is None else environ
    cores = usable_cores(environ) if cores is None else cores
    current = _entry_threads() if current is None else current
    if requested:
        return ThreadChoice(requested, "threads", True, cores, work)
    for name in ENV_VARS:
        if environ.get(name, "").strip():
            return ThreadChoice(current, name, False, cores, work)
    default = torch_default_threads() if torch_default == -1 else torch_default
    if default is not None and current != default:
        return ThreadChoice(current, "torch.set_num_threads", False, cores, work)
    return ThreadChoice(auto_threads(work, cores), "auto", True, cores, work)


def use_threads(requested: Any, model: Any, rows: int, positions: int = 1) -> ThreadChoice:
    """:func:`choose_threads` for ``model`` called on ``rows`` rows, applied to torch; returns the choice.
    Call it inside a :func:`thread_scope`, which restores torch's count."""
    choice = choose_threads(requested, call_work(model, rows, positions))
    if choice.set and torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    return choice


def positions_of(shape: Any) -> int:
    """Positions a network applies its weights at, for rows of ``shape`` (C, H, W): H x W; else 1."""
    if shape is None or len(shape) < 2:
        return 1
    return int(math.prod(shape[1:]))


_entry: list[int] = []  # torch's count when the outermost thread_scope was entered


def _entry_threads() -> int:
    return _entry[0] if _entry else torch.get_num_threads()


F = TypeVar("F", bound=Callable[..., Any])


def thread_scope(function: F) -> F:
    """Decorate an entry point (``fit``, ``train``, a CLI command): the outermost one records torch's
    thread count on entry, which :func:`choose_threads` compares with torch's default, and restores it on
    return (or on an error). Not thread-safe: torch's count is the process's."""

    @functools.wraps(function)
    def scoped(*args, **kwargs):
        if _entry:
            return function(*args, **kwargs)
        _entry.append(torch.get_num_threads())
        try:
            return function(*args, **kwargs)
        finally:
            before = _entry.pop()
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    return scoped  # type: ignore[return-value]

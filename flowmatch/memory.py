"""Memory: how much a process may still allocate, and a check of a request against it before allocating.

A request far beyond the machine (``flowmatch sample -n 100000000000``, an NFE of 10^11) is refused with one
line saying how much it needs and how much there is, instead of the allocator's error (or the kernel's
out-of-memory killer) midway. The figure is an estimate of what can be allocated without swapping:

- on the CPU, Linux's ``MemAvailable`` (/proc/meminfo), lowered to the room left under this process's cgroup
  memory limit (``memory.max`` minus ``memory.current``, cgroup v2; v1's ``memory.limit_in_bytes`` and
  ``memory.usage_in_bytes``) where there is one; elsewhere the free physical pages (``sysconf``);
- on a CUDA device, its free memory (``torch.cuda.mem_get_info``).

Where no figure can be had, nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowmatch.errors import FlowmatchError

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes this process can still allocate on ``device`` (see the module docstring); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    figures = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                figures.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not figures:
        try:
            figures.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            figures.append(max(limit - usage, 0))
            break
    return min(figures) if figures else None


def gib(nbytes: float) -> str:
    """A byte count for messages: GiB, MiB, KiB or bytes, whichever reads best."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


#: Requests smaller than this are not checked: none can be what a machine lacks, and asking the operating system
#: (/proc/meminfo, the cgroup's files) costs a few hundred microseconds, which a training step's batch draw would pay.
UNCHECKED_BYTES = 16 << 20


def require_memory(nbytes: float, what: str, hint: str = "", device: torch.device | str = "cpu") -> None:
    """Refuse ``what`` (a phrase such as "sampling 10 points of dimension 2") when it needs more than
    :func:`available_bytes`: one :class:`~flowmatch.errors.FlowmatchError` with both figures and ``hint``.
    Requests under :data:`UNCHECKED_BYTES` pass without asking."""
    if nbytes < UNCHECKED_BYTES:
        return
    free = available_bytes(device)
    if free is not None and nbytes > free:
        where = "" if torch.device(device).type == "cpu" else f" on {device}"
        raise FlowmatchError(f"{what} needs about {gib(nbytes)} of memory{where}; {gib(free)} is available" + (f": {hint}" if hint else ""))

"""torchrun data-parallel training: the process's place in the world and a check that every rank ends with the same weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from flowmatch.storage import write_json


@torch.no_grad()
def record_rank_agreement(model: torch.nn.Module, run: Path | None, world: int) -> None:
    """Measure max |theta_rank - theta_rank0| over all processes; rank 0 writes it to distributed.json."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    if run is not None:
        write_json(run / "distributed.json", {"world_size": world, "max_weight_difference_across_ranks": gap.item()})


def distributed_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 when not distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))

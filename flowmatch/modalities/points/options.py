"""The options of points and arrays (images too), beside the engine's (:mod:`flowmatch.engine.options`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flowmatch.data.streams import SHUFFLE_ROWS
from flowmatch.data.toy import BUILTIN_NAMES
from flowmatch.engine.options import option
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import PATHS

KIND = "continuous"


@dataclass
class PointOptions:
    """Affine paths, couplings, teacher pairs, distillation and MeanFlow, the U-Net's shape, and reading files."""

    path: str = option("linear", "probability path", choices=(*PATHS, "python"))
    sigma_min: float = option(0.0, "noise floor of the gaussian path at t = 1", low=0.0, high=0.999)
    bridge_sigma: float = option(0.0, "Brownian-bridge noise of the path (SB-CFM; 0 = none)", low=0.0)
    coupling: str = option("independent", "pairing of (x0, x1) in a batch", choices=("independent", "ot", "sinkhorn"))
    ot_reg: float = option(0.05, "entropic regularisation of the sinkhorn coupling (relative to the mean cost)", low=1e-6)
    pairs: str = option("", "train on fixed (x0, x1) pairs from this .npz (reflow); empty = draw pairs")
    distill_nfe: int = option(1, "student's velocity evaluations (objective distill)", low=1)
    meanflow_equal_share: float = option(
        0.75, "objective meanflow: share of rows trained with r = t (plain flow matching; the rest on intervals r < t)", low=0.0, high=1.0
    )
    meanflow_power: float = option(
        0.5,
        "objective meanflow: power p of the adaptive loss weight 1 / (error + 1e-3)^p (0 = the plain mean square; the paper's 1 did "
        "worse than 0.5 on the 2-D sets, bench/results/fewstep.md)",
        low=0.0,
    )
    meanflow_guidance: float = option(
        1.0, "objective meanflow, conditional: guidance weight omega folded into the target (1 = none); samples guided in one call"
    )
    meanflow_guidance_mix: float = option(0.0, "objective meanflow: the paper's mixing scale kappa of the guided target (0 = none)")
    loss_weight: str = option("none", "weight the loss as a velocity, data (x1) or noise (x0) error", choices=("none", "x1", "x0"))
    channels: int = option(16, "base channels (unet)", low=1)
    channel_mult: str = option("1,2", "channel multiplier per resolution, comma separated (unet)")
    num_res_blocks: int = option(1, "residual blocks per resolution (unet)", low=1)
    attention: bool = option(False, "self-attention at the lowest resolution (unet)")
    standardize: str = option(
        "auto", "standardise data (auto: files, rows and streams yes, a stream from its first batches; built-ins and images no)",
        choices=("auto", "yes", "no"),
    )  # fmt: skip
    workers: int = option(0, "DataLoader worker processes reading a torch Dataset given to train()", low=0)
    shuffle_rows: int = option(
        SHUFFLE_ROWS,
        "rows of the shuffle buffer a DataLoader or iterable given to train() passes through, so that a stream in sorted "
        "order trains as a shuffled one (0: its batches as given; a torch Dataset is shuffled by flowmatch itself)",
        low=0,
    )
    mmap: str = option("auto", "memory-map a .npy file (auto: files over 1 GiB)", choices=("auto", "yes", "no"))
    test_fraction: float = option(
        0.2, "share of a file's or array's rows held out for evaluation (0: every row trains; evaluate with reference=)", low=0.0, high=0.99
    )

    def check_fields(self, source: str) -> None:
        config: Any = self
        try:
            mult = [int(m) for m in self.channel_mult.split(",")]
        except ValueError:
            mult = []
        if not mult or min(mult) < 1:
            raise FlowmatchError(f"{source}: channel_mult must be positive integers separated by commas, got '{self.channel_mult}'")
        if (self.meanflow_guidance != 1.0 or self.meanflow_guidance_mix != 0.0) and not (
            config.objective == "meanflow" and (config.conditional or config.condition_columns)
        ):
            raise FlowmatchError(f"{source}: meanflow_guidance and meanflow_guidance_mix need objective meanflow and conditional")
        if self.test_fraction != 0.2 and config.data in BUILTIN_NAMES:
            raise FlowmatchError(
                f"{source}: test_fraction applies to data files and arrays; the built-in set '{config.data}' draws fresh held-out points"
            )
        if config.objective == "distill" and not self.pairs:
            raise FlowmatchError(f"{source}: objective distill needs teacher pairs (use 'flowmatch distill')")


#: Defaults of a points run under what the user gives: the engine's and these options' own.
DEFAULTS: dict[str, Any] = {}


def defaults_for(given: dict[str, Any]) -> dict[str, Any]:
    return dict(DEFAULTS)


def claims(config: Any, data: Any) -> bool:
    """Points take whatever no other modality claims (kind auto): the fallback."""
    return True


def is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))

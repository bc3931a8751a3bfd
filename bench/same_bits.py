"""Same bits: the final weights of seven short continuous runs, hashed, to check that a restructuring of the
engine leaves what it trains unchanged.

The seven configurations cover the continuous engine's branches: the default (posterior target, batch
warm-up, stratified times), a finite data set (wine: validation split and selection), a data source
(8gaussians -> moons), class labels, an x1-weighted loss with logit-normal times, bridge noise with the
sinkhorn coupling, and bf16 autocast. Each trains 300 steps on one thread with ``--precision fp32``
(the bf16 one in bf16) and hashes the sampling weights (EMA, or the selected step's).

    python -m bench.same_bits                     # print the hashes
    python -m bench.same_bits --save FILE.json    # keep them
    python -m bench.same_bits --against FILE.json # compare with kept ones (exit 1 on a difference)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

CONFIGS: dict[str, dict] = {
    "default": {"data": "two-gaussians"},
    "wine": {"data": "wine"},
    "8gaussians->moons": {"data": "moons", "source": "8gaussians"},
    "conditional": {"data": "8gaussians", "conditional": True},
    "x1-weight, logit-normal": {"data": "moons", "loss_weight": "x1", "time_sampling": "logit-normal"},
    "bridge, sinkhorn": {"data": "moons", "bridge_sigma": 0.1, "coupling": "sinkhorn"},
    "bf16": {"data": "two-gaussians", "precision": "bf16"},
}


def weights_hash(values: dict) -> str:
    """sha256 of the final sampling weights of a 300-step run with ``values``."""
    import flowmatch

    options = {"steps": 300, "precision": "fp32", "threads": 1, "seed": 0, **values}
    result = flowmatch.train(progress=False, **options)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.flow.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", help="write the hashes to this JSON file")
    parser.add_argument("--against", help="compare with the hashes in this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hashes = {name: weights_hash(values) for name, values in CONFIGS.items()}
    kept = json.loads(open(args.against).read()) if args.against else {}
    differ = 0
    for name, value in hashes.items():
        mark = "" if not kept else ("  same" if kept.get(name) == value else f"  DIFFERENT (kept {kept.get(name)})")
        differ += bool(kept) and kept.get(name) != value
        print(f"{name:28s} {value}{mark}")
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(hashes, fh, indent=2)
            fh.write("\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

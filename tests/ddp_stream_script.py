"""Run under torchrun by test_distributed: a user model on a map-style Dataset, each process on its shard."""

import json
import os
import sys

import torch
from user_objects import ResMLP

import flowmatch
from flowmatch.models.registry import from_factory


class Recorded(torch.utils.data.Dataset):
    """Rows of a fixed tensor that remember which indices this process read."""

    def __init__(self, x):
        self.x, self.seen = x, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.x[i]


out = sys.argv[1]
data = Recorded(torch.randn(256, 2, generator=torch.Generator().manual_seed(0)))
torch.manual_seed(0)
flowmatch.train(model=from_factory(ResMLP, width=16), data=data, steps=4, batch_size=32, batch_warmup=0, run_dir=out,
                progress=False, precision="fp32", device="cpu")  # fmt: skip
with open(os.path.join(out, f"seen-{os.environ['RANK']}.json"), "w") as f:
    json.dump(data.seen, f)

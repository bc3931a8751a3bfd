"""A model of one's own for the examples: a residual MLP with its own Fourier time embedding.

It lives in a module of its own (not in the script) so that a run folder can name it
(``models:ResMLP``) and a fresh process can import it to rebuild the model.
"""

import math

import torch
from torch import nn


class ResMLP(nn.Module):
    """x, t -> Linear -> `blocks` x (LayerNorm, Linear, SiLU, Linear, + skip) -> Linear.

    The time enters every block through Fourier features [sin(2 pi k t), cos(2 pi k t)], k = 1..8,
    projected to the width.
    """

    def __init__(self, dim: int = 2, width: int = 128, blocks: int = 3):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.arange(1, 9, dtype=torch.float32))
        self.inp = nn.Linear(dim, width)
        self.time = nn.Linear(16, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(len(x), 1)
        e = self.time(torch.cat([torch.sin(t * self.freqs), torch.cos(t * self.freqs)], dim=1))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)

"""A user's own objects, importable by name (as a run folder records them): a model with its own time
embedding, schedule functions, a source sampler."""

import torch
from torch import nn


class ResMLP(nn.Module):
    """A residual MLP with a Fourier time embedding of its own; takes an optional float condition c."""

    def __init__(self, dim: int = 2, width: int = 32, condition_dim: int = 0):
        super().__init__()
        self.inp = nn.Linear(dim + 16 + condition_dim, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.out = nn.Linear(width, dim)
        self.register_buffer("freqs", torch.arange(1, 9, dtype=torch.float32))
        self.condition_dim = condition_dim

    def forward(self, x, t, c=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(len(x), 1)
        parts = [x, torch.sin(t * self.freqs), torch.cos(t * self.freqs)]
        if self.condition_dim:
            parts.append(torch.zeros(len(x), self.condition_dim) if c is None else torch.nan_to_num(c.reshape(len(x), -1), nan=0.0))
        h = torch.relu(self.inp(torch.cat(parts, 1)))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)


class ConfigNet(nn.Module):
    """A model that describes itself: to_config() and from_config(config)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.dim, self.width = dim, width
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        return self.net(torch.cat([x, t], 1))

    def to_config(self):
        return {"dim": self.dim, "width": self.width}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class ImageNet(nn.Module):
    """Takes rows in their own shape (B, 1, 4, 4) and checks it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, t):
        assert x.shape[1:] == (1, 4, 4), x.shape
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(len(x), 1, 4, 4)
        return self.conv(torch.cat([x, t], 1))


def alpha(t):
    return t**2


def sigma(t):
    return 1 - t**2


def uniform_source(n, generator):
    return torch.rand(n, 2, generator=generator) * 2 - 1


def blob_source(n, generator):
    """x0 from the equal mixture of N((-2, 0), 0.5^2 I) and N((2, 0), 0.5^2 I), which it declares (the posterior
    target's source density: flowmatch.data.sources)."""
    k = torch.randint(2, (n,), generator=generator)
    return torch.stack([4.0 * k - 2.0, torch.zeros(n)], 1) + 0.5 * torch.randn(n, 2, generator=generator)


def _declare_blobs():
    from flowmatch.densities import GaussianMixture

    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor([0.5, 0.5]))


blob_source.gaussian_mixture = _declare_blobs()

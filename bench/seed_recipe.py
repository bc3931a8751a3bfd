"""The seed document's recipe, transcribed as a baseline (see ../shared/seed in the project history).

Its network (input [t, x], 128-128 ReLU), its Gaussian path with sigma_min, Adam 1e-3, batch 128,
10,000 steps on the two-Gaussian target, and its two samplers:

- ``sample_reverse``: the document's own, which starts from noise at t = 1 and integrates -v back
  to t = 0 with torchdiffeq's rk4 (it reads the field at mirrored times);
- ``sample_forward``: noise at t = 0 integrated forward to t = 1, the direction the path trains.

Run ``python -m bench.seed_recipe`` to train it and print W2 of both samplers against held-out data.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from torchdiffeq import odeint


class VectorField(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 1, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, t, x):
        t_input = t.unsqueeze(-1).expand(x.size(0), 1)
        return self.net(torch.cat([t_input, x], dim=1))


def sample_conditional_path(x1, t, sigma_min=0.0):
    t = t.view(-1, 1)
    mu_t = t * x1
    sigma_t = (1 - t) + t * sigma_min
    eps = torch.randn_like(x1)
    x_t = mu_t + sigma_t * eps
    dot_mu_t = x1
    dot_sigma_t = -1.0 + sigma_min
    u_true = (dot_sigma_t / sigma_t) * (x_t - mu_t) + dot_mu_t
    return x_t, u_true


def sample_target_data(batch_size):
    comp = torch.randint(0, 2, (batch_size, 1))
    centers = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
    return centers[comp.view(-1)] + torch.randn(batch_size, 2)


def train_seed(steps: int = 10_000, batch_size: int = 128, seed: int = 42) -> tuple[VectorField, float]:
    """The document's training loop; returns the model and the wall time in seconds."""
    torch.manual_seed(seed)
    model = VectorField()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        t = torch.rand(batch_size)
        x1 = sample_target_data(batch_size)
        x_t, u_true = sample_conditional_path(x1, t)
        loss = ((model(t, x_t) - u_true) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, time.perf_counter() - start


class _Reverse(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, t, x):
        return -self.model(t, x)


@torch.no_grad()
def sample_reverse(model, n: int = 2000, timesteps: int = 100, seed: int = 0) -> torch.Tensor:
    """The document's sampler: t from 1 to 0, integrating -v, from noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return odeint(_Reverse(model), x, torch.linspace(1, 0, timesteps), method="rk4")[-1]


@torch.no_grad()
def sample_forward(model, n: int = 2000, timesteps: int = 100, seed: int = 0) -> torch.Tensor:
    """The right direction for this path: noise at t = 0, integrating v up to t = 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return odeint(model, x, torch.linspace(0, 1, timesteps), method="rk4")[-1]


def main() -> None:
    from flowmatch.data.toy import sample_builtin
    from flowmatch.evaluation.metrics import w2_exact

    model, seconds = train_seed()
    held_a = sample_builtin("two-gaussians", 2000, generator=1)
    held_b = sample_builtin("two-gaussians", 2000, generator=2)
    floor = w2_exact(held_b, held_a)
    print(f"seed recipe trained in {seconds:.1f} s")
    print(f"W2 reverse (document's sampler): {w2_exact(sample_reverse(model), held_a):.3f}")
    print(f"W2 forward:                      {w2_exact(sample_forward(model), held_a):.3f}")
    print(f"W2 floor (two held-out draws):   {floor:.3f}")


if __name__ == "__main__":
    main()

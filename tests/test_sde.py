"""The SDE sampler: the score from the velocity on a Gaussian where both are exact, the ODE back at
noise 0, and the ODE's marginals at noise > 0."""

import math

import pytest
import torch

from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.flows.continuous import Flow
from flowmatch.paths.affine import make_path
from flowmatch.solvers import integrate
from flowmatch.solvers.sde import score_from_velocity, sde_sample

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


def _exact(path):
    """Data N(MEAN, STD^2 I), source N(0, I): x_t ~ N(a MEAN, (a^2 STD^2 + s^2) I), and the posterior means
    E[x1 | x] = MEAN + a STD^2 (x - a MEAN) / var, E[x0 | x] = s (x - a MEAN) / var give v and the score."""

    def coefficients(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        sch = path.schedule
        return sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t)

    def velocity(x, t):
        a, s, da, ds = coefficients(t)
        var = a**2 * STD**2 + s**2
        r = x - a * MEAN
        return da * (MEAN + a * STD**2 * r / var) + ds * (s * r / var)

    def score(x, t):
        a, s, _, _ = coefficients(t)
        return -(x - a * MEAN) / (a**2 * STD**2 + s**2)

    return velocity, score


@pytest.mark.parametrize("name", ["linear", "cosine", "gaussian"])
def test_the_score_from_the_velocity_is_the_gaussian_score(name):
    path = make_path(name, sigma_min=0.01) if name == "gaussian" else make_path(name)
    velocity, score = _exact(path)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for t in (0.0, 0.1, 0.5, 0.9, 0.99):
        got = score_from_velocity(path, velocity(x, t), x, t)
        torch.testing.assert_close(got, score(x, t), rtol=1e-10, atol=1e-10)
    times = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.98
    per_row = score_from_velocity(path, velocity(x, times[:, None]), x, times)
    torch.testing.assert_close(per_row, score(x, times[:, None]), rtol=1e-10, atol=1e-10)


def test_noise_zero_is_the_euler_ode_bit_for_bit():
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    field = lambda x, t: net(torch.cat([x, t.expand(len(x), 1)], 1))  # noqa: E731
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ode = integrate(field, x0, solver="euler", nfe=37)
        sde = sde_sample(field, x0, make_path("linear"), nfe=37, noise=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ode.x, sde.x) and sde.nfe == 37


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_sde_keeps_the_odes_marginals(name):
    """The exact Gaussian field pushed through Euler-Maruyama (noise 1, 400 steps) ends at N(MEAN, STD^2):
    the mean within 5 standard errors of 40,000 draws plus the O(h) step error (measured with 400,000 draws:
    at most 3e-3 at 400 steps, 9e-3 at 100),
    the standard deviation likewise."""
    path = make_path(name)
    velocity, _ = _exact(path)
    calls = []

    def counted(x, t):
        calls.append(1)
        return velocity(x, t)

    n = 40_000
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = sde_sample(counted, x0, path, nfe=400, noise=1.0, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 400 == sol.nfe
    se_mean, se_std = STD / math.sqrt(n), STD / math.sqrt(2 * n)
    assert (sol.x.mean(0) - MEAN).abs().max() < 5 * se_mean + 5e-3
    assert (sol.x.std(0) - STD).abs().max() < 5 * se_std + 5e-3
    # the noise did something: the paths differ from the ODE's
    ode = integrate(velocity, x0, solver="euler", nfe=400)
    assert (sol.x - ode.x).abs().mean() > 0.05


def test_bad_arguments_are_named():
    path = make_path("linear")
    field = lambda x, t: x  # noqa: E731
    x0 = torch.zeros(3, 2)
    for options, needle in [({"nfe": 0}, "nfe"), ({"noise": -1.0}, "noise"), ({"noise": float("nan")}, "noise")]:
        with pytest.raises(FlowmatchError, match=needle):
            sde_sample(field, x0, path, **options)
    with pytest.raises(FlowmatchError, match="bridge"):
        sde_sample(field, x0, make_path("linear", bridge_sigma=0.5))


class _ExactField(torch.nn.Module):
    """The exact velocity of the Gaussian data above on the linear path, as a model."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))  # a parameter gives the flow its dtype
        self.velocity = _exact(make_path("linear"))[0]

    def forward(self, x, t):
        return self.scale * self.velocity(x, t)


def _flow():
    return Flow(
        model=_ExactField(),
        path=make_path("linear"),
        standardizer=Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)),
        config={"data": "x.npy", "source": "gaussian", "seed": 0},
    )


def test_flow_generate_takes_noise():
    flow = _flow()
    ode = flow.generate(300, solver="euler", nfe=50, seed=3)
    assert torch.equal(flow.generate(300, solver="euler", nfe=50, seed=3, noise=0.0).x, ode.x)
    sde = flow.generate(20_000, nfe=200, seed=3, noise=1.0)
    assert sde.nfe == 200
    # 5 standard errors of 20,000 draws plus the step error at 200 steps (measured above: under 1e-2 at 100)
    assert (sde.x.mean(0) - MEAN).abs().max() < 5 * STD / math.sqrt(20_000) + 1e-2
    for options, needle in [({"solver": "rk4"}, "Euler-Maruyama"), ({"grid": "cosine"}, "uniform grid"), ({"noise": -1.0}, "noise")]:
        with pytest.raises(FlowmatchError, match=needle):
            flow.generate(10, noise=options.pop("noise", 1.0), **options)


def test_the_sample_command_takes_noise(tmp_path, capsys):
    import numpy as np
    from cli_checks import one_error_line

    from flowmatch.api import fit
    from flowmatch.cli import main
    from flowmatch.config import TrainConfig

    tiny = TrainConfig(data="two-gaussians", steps=20, width=16, depth=2, batch_size=64, batch_warmup=0, device="cpu")
    fit(tiny, out=tmp_path / "run", progress=False, evaluate=False)
    run = str(tmp_path / "run")
    assert main(["sample", "--run", run, "-n", "64", "--nfe", "20", "--noise", "1", "--out", str(tmp_path / "sde.npy")]) == 0
    assert "the SDE (Euler-Maruyama, noise 1), NFE 20" in capsys.readouterr().out
    args = ["sample", "--run", run, "-n", "64", "--nfe", "20", "--solver", "euler"]
    assert main([*args, "--noise", "0", "--out", str(tmp_path / "zero.npy")]) == 0
    assert main([*args, "--out", str(tmp_path / "ode.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "zero.npy"), np.load(tmp_path / "ode.npy"))  # noise 0 is the ODE
    assert not np.array_equal(np.load(tmp_path / "sde.npy"), np.load(tmp_path / "ode.npy"))
    capsys.readouterr()
    code = main(["sample", "--run", run, "-n", "8", "--noise", "1", "--solver", "rk4", "--out", str(tmp_path / "x.npy")])
    one_error_line(capsys, code, "Euler-Maruyama")
    assert not (tmp_path / "x.npy").exists()

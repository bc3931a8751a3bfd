"""MeanFlow: the identity's target against the exact average velocity of a Gaussian, the jvp against
autograd, the (r, t) sampler, the adaptive weight, guidance in the target, few-step sampling against
the exact flow map, two-time models, and a short training run on two Gaussians."""

import json
import math

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.losses import flow_matching_loss, meanflow_loss, meanflow_target, meanflow_times
from flowmatch.models.mlp import MLP
from flowmatch.models.registry import from_config, to_config
from flowmatch.models.unet import UNet
from flowmatch.paths.affine import make_path
from flowmatch.solvers import instantaneous_velocity, integrate, mean_flow_sample

MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


def _variance(t):
    """Var of x_t = t x1 + (1 - t) x0 per coordinate for data N(MEAN, STD^2 I) and noise N(0, I)."""
    return t**2 * STD**2 + (1 - t) ** 2


class ExactAverage(torch.nn.Module):
    """u*(x, r, t) of the linear path from N(0, I) to N(MEAN, STD^2 I), called as model(x, t, r=r).

    The marginals are N(t MEAN, V_t I), V_t = t^2 STD^2 + (1 - t)^2, and the flow map from r to t is the
    affine map between them, Phi(x) = t MEAN + sqrt(V_t / V_r) (x - r MEAN), so
    u* = (Phi(x) - x) / (t - r) = MEAN + (sqrt(V_t / V_r) - 1) / (t - r) (x - r MEAN), and at t = r the
    marginal velocity MEAN + V'_r / (2 V_r) (x - r MEAN), V'_r = 2 r STD^2 - 2 (1 - r).
    """

    def forward(self, x, t, r=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        r = t if r is None else torch.as_tensor(r, dtype=x.dtype).reshape(-1, 1)
        gap = t - r
        apart = gap > 0
        ratio = torch.sqrt(_variance(t) / _variance(r))
        slope = torch.where(apart, (ratio - 1) / torch.where(apart, gap, 1.0), (r * STD**2 - (1 - r)) / _variance(r))
        return MEAN + slope * (x - r * MEAN)


def _flow_map(x, r, t):
    """Phi_{r -> t}(x) (numbers, or columns of times)."""
    r, t = torch.as_tensor(r, dtype=x.dtype), torch.as_tensor(t, dtype=x.dtype)
    return t * MEAN + torch.sqrt(_variance(t) / _variance(r)) * (x - r * MEAN)


def _intervals(n, seed, dtype=torch.float64):
    both = torch.rand(2, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return both.max(0).values, both.min(0).values  # (t, r), r < t


# -- the identity ----------------------------------------------------------------------------------
def test_the_target_of_the_exact_average_velocity_is_itself():
    """u_tgt = v + (t - r) du/dr with the marginal v and u = u* gives u* back: the identity in our direction."""
    u = ExactAverage()
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(512, 2, generator=g, dtype=torch.float64)
    t, r = _intervals(512, 1)
    target = meanflow_target(u, x, t, r, u(x, r))  # u(x, r) = u*(x, r, r) = v(x, r)
    # float64 round-off through (sqrt(V_t / V_r) - 1) / (t - r) (measured 8.9e-16 max)
    torch.testing.assert_close(target, u(x, t, r=r), rtol=0, atol=1e-12)
    # the paper's sign read in our time direction (u = v - (t - r) du/dr) is off by a lot (measured 8.0 max)
    wrong = u(x, r) - (target - u(x, r))
    assert (wrong - u(x, t, r=r)).abs().max() > 1.0
    # and the exact flow map composes: x_t = x_r + (t - r) u*(x_r, r, t)
    torch.testing.assert_close(x + (t - r)[:, None] * u(x, t, r=r), _flow_map(x, r[:, None], t[:, None]), rtol=0, atol=1e-12)


def test_the_loss_of_the_exact_average_velocity_with_the_marginal_velocity_is_zero():
    u, path = ExactAverage(), make_path("linear")
    g = torch.Generator().manual_seed(2)
    n = 1024
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x1 = MEAN + STD * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t, r = (s.double() for s in meanflow_times(n, g))
    assert bool((t == r).any()) and bool((t > r).any())  # both kinds of rows
    x_r = path.sample(x0, x1, r).x_t
    marginal = u(x_r, r)
    loss = meanflow_loss(u, x0, x1, t, r, velocity=marginal, power=0.0)
    # squares of float64 round-off (measured 3e-33); the conditional velocity x1 - x0 costs O(1) (measured 0.90)
    assert loss.item() < 1e-24
    assert meanflow_loss(u, x0, x1, t, r, power=0.0).item() > 0.1


def test_the_total_derivative_matches_autograd_and_finite_differences():
    """du/dr along the flow by torch.func.jvp (inside meanflow_target) against double-backward and central differences,
    on two-time MLPs and a U-Net in float64; times in runs of equal values, which the MLP's shortcut must skip."""
    torch.manual_seed(0)
    unet = UNet(16, channels=8, channel_mult=(1, 2), times=2).double()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # zero-initialised output: give it a derivative
    models = [MLP(2, width=32, depth=2, activation=a, times=2).double() for a in ("silu", "relu", "gelu")]
    models += [MLP(2, width=32, depth=2, times=2, time_scale=1000.0).double(), unet]  # 1000: large du/dr
    for model in models:
        dim = 16 if model is unet else 2
        g = torch.Generator().manual_seed(1)
        x = torch.randn(12, dim, generator=g, dtype=torch.float64)
        v = torch.randn(12, dim, generator=g, dtype=torch.float64)
        r = torch.tensor([0.1] * 6 + [0.35] * 6, dtype=torch.float64)
        t = r + torch.linspace(0.05, 0.6, 12, dtype=torch.float64)
        du = (meanflow_target(model, x, t, r, v) - v) / (t - r)[:, None]
        _, reference = torch.autograd.functional.jvp(lambda a, b: model(a, t, r=b), (x, r), (v, torch.ones_like(r)))
        torch.testing.assert_close(du, reference, rtol=1e-12, atol=1e-12)  # measured <= 5e-15
        eps = 1e-6
        with torch.no_grad():
            fd = (model(x + eps * v, t, r=r + eps) - model(x - eps * v, t, r=r - eps)) / (2 * eps)
        # central differences: O(eps^2) times the third derivative, plus round-off / eps (measured <= 1.3e-9;
        # 5.3e-7 at time scale 1000, whose third derivative carries 1000^3)
        atol = 1e-5 if model.time_scale == 1000.0 else 1e-8
        torch.testing.assert_close(du, fd, rtol=0, atol=atol)


def test_rows_with_r_equal_t_keep_the_velocity_and_other_rows_match_a_full_batch_jvp():
    torch.manual_seed(0)
    model = MLP(2, width=16, depth=2, times=2).double()
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(40, 2, generator=g, dtype=torch.float64), torch.randn(40, 2, generator=g, dtype=torch.float64)
    t, r = (s.double() for s in meanflow_times(40, g))
    target = meanflow_target(model, x, t, r, v)
    equal = t == r
    assert 0 < int(equal.sum()) < 40
    assert torch.equal(target[equal], v[equal])
    _, du = torch.autograd.functional.jvp(lambda a, b: model(a, t, r=b), (x, r), (v, torch.ones_like(r)))
    torch.testing.assert_close(target, v + (t - r)[:, None] * du, rtol=1e-10, atol=1e-10)


# -- the (r, t) sampler ----------------------------------------------------------------------------
def test_the_interval_sampler():
    n = 200_000
    t, r = meanflow_times(n, torch.Generator().manual_seed(0))
    assert t.shape == r.shape == (n,)
    assert bool((r <= t).all()) and float(r.min()) >= 0.0 and float(t.max()) <= 1.0
    equal = t == r
    # the share of r = t: binomial standard deviation sqrt(0.75 * 0.25 / n) = 0.00097; 5 of them
    assert abs(float(equal.float().mean()) - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)  # measured 0.74979
    # the rows with r < t hold both draws: their pooled median is sigmoid(0.4) = 0.5987 (the paper's
    # sigmoid(-0.4) = 0.4013 of its reversed time); the median's standard error ~1 / (2 f(m) sqrt(N)) = 0.0009
    pooled = torch.cat([t[~equal], r[~equal]])
    assert float(pooled.median()) == pytest.approx(1 / (1 + math.exp(-0.4)), abs=0.005)  # measured 0.59866
    # r, the point's time, is the smaller of two draws: P(r <= m) = 1 - (1 - F(m))^2 = 1/2 at F(m) = 1 - 1/sqrt(2)
    z = torch.special.ndtri(torch.tensor(1 - 1 / math.sqrt(2), dtype=torch.float64)).item()
    assert float(r.median()) == pytest.approx(1 / (1 + math.exp(-(0.4 + z))), abs=0.005)  # 0.4638; measured 0.4626
    # the knobs, and the uniform law
    t, r = meanflow_times(50_000, torch.Generator().manual_seed(1), equal_share=0.0, distribution="uniform")
    assert bool((t > r).all()) and float(r.mean()) == pytest.approx(1 / 3, abs=0.01)  # E[min of 2 uniforms]; measured 0.3341
    t, r = meanflow_times(1000, torch.Generator().manual_seed(2), equal_share=1.0)
    assert torch.equal(t, r)
    with pytest.raises(FlowmatchError, match="equal_share"):
        meanflow_times(10, equal_share=1.5)


# -- the loss: weighting, precision, guidance, errors --------------------------------------------
def _batch(n=64, seed=0, dim=2):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, dim, generator=g)
    x1 = torch.tensor([2.0, -1.0])[:dim] + 0.5 * torch.randn(n, dim, generator=g)
    t, r = meanflow_times(n, g)
    return x0, x1, t, r


def test_power_zero_is_the_mean_square_and_power_one_weights_by_the_detached_error():
    torch.manual_seed(0)
    model = MLP(2, width=32, depth=2, times=2)
    x0, x1, t, r = _batch()
    path = make_path("linear")
    x_r = path.sample(x0, x1, r).x_t
    target = meanflow_target(model, x_r, t, r, x1 - x0)
    error = (model(x_r, t, r=r) - target).pow(2).mean(1)
    plain = meanflow_loss(model, x0, x1, t, r, power=0.0)
    torch.testing.assert_close(plain, error.mean())
    weighted = meanflow_loss(model, x0, x1, t, r)  # p = 1, c = 1e-3
    torch.testing.assert_close(weighted, (error / (error.detach() + 1e-3)).mean())
    # the gradient is sg(w) grad e: compare with the weights as constants
    grads = torch.autograd.grad(weighted, list(model.parameters()))
    constant = (error.detach() + 1e-3).reciprocal()
    expected = torch.autograd.grad((constant * error).mean(), list(model.parameters()))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b)
    # all rows with r = t and p = 0: plain flow matching with the model as v(x, t) = u(x, t, t)
    torch.testing.assert_close(meanflow_loss(model, x0, x1, t, t, power=0.0), flow_matching_loss(model, path, x0, x1, t))


def test_bfloat16_autocast_keeps_the_target_in_float32():
    torch.manual_seed(0)
    model = MLP(2, width=32, depth=2, times=2)
    x0, x1, t, r = _batch(256)
    full = meanflow_loss(model, x0, x1, t, r, power=0.0)
    half = meanflow_loss(model, x0, x1, t, r, power=0.0, autocast=torch.bfloat16)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    # only the prediction is bf16: relative error ~2^-8 per value, averaging out over rows (measured 6e-5)
    assert half.item() == pytest.approx(full.item(), rel=0.01)
    half.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_guidance_folds_the_unconditional_prediction_into_the_target():
    torch.manual_seed(0)
    model = MLP(2, width=32, depth=2, num_classes=3, times=2).double()
    x0, x1, t, r = (a.double() for a in _batch(48, seed=4))
    labels = torch.arange(48) % 4  # label 3 is the null class: those rows were dropped
    path = make_path("linear")
    x_r, v = path.sample(x0, x1, r).x_t, x1 - x0
    omega, kappa = 2.5, 0.3
    with torch.no_grad():
        u_null = model(x_r, r, torch.full_like(labels, 3), r=r)
        u_cond = model(x_r, r, labels, r=r)
    guided = omega * v + kappa * u_cond + (1 - omega - kappa) * u_null
    guided = torch.where((labels == 3)[:, None], v, guided)
    target = meanflow_target(model, x_r, t, r, guided, condition={"y": labels})
    expected = (model(x_r, t, labels, r=r) - target).pow(2).mean(1).mean()
    got = meanflow_loss(model, x0, x1, t, r, labels=labels, guidance=omega, guidance_mix=kappa, null_class=3, power=0.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # omega = 1, kappa = 0 is the unguided loss; guidance on integer labels needs their null class
    unguided = meanflow_loss(model, x0, x1, t, r, labels=labels, power=0.0)
    assert got.item() != pytest.approx(unguided.item(), rel=1e-3)
    with pytest.raises(FlowmatchError, match="null_class"):
        meanflow_loss(model, x0, x1, t, r, labels=labels, guidance=2.0)
    # a float condition's null is a row of NaN (the MLP's learned null vector)
    cmodel = MLP(2, width=16, depth=2, condition_dim=1, times=2).double()
    c = torch.randn(48, 1, dtype=torch.float64)
    c[::5] = math.nan
    with torch.no_grad():
        u_null = cmodel(x_r, r, c=torch.full_like(c, math.nan), r=r)
    guided = torch.where(torch.isnan(c), v, 2.0 * v - u_null)
    target = meanflow_target(cmodel, x_r, t, r, guided, condition={"c": c})
    expected = (cmodel(x_r, t, c=c, r=r) - target).pow(2).mean(1).mean()
    got = meanflow_loss(cmodel, x0, x1, t, r, condition={"c": c}, guidance=2.0, power=0.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    model = MLP(2, width=8, depth=1, times=2)
    x0, x1, t, r = _batch(8)
    with pytest.raises(FlowmatchError, match="r <= t"):
        meanflow_loss(model, x0, x1, r, t + 0.01)
    with pytest.raises(FlowmatchError, match="power"):
        meanflow_loss(model, x0, x1, t, r, power=-1.0)
    with pytest.raises(FlowmatchError, match="guidance needs a condition"):
        meanflow_loss(model, x0, x1, t, r, guidance=2.0)
    with pytest.raises(FlowmatchError, match="one time"):
        meanflow_loss(MLP(2, width=8, depth=1), x0, x1, t, r)


def test_the_loss_under_single_process_ddp_matches_the_plain_module(tmp_path):
    """DDP's forward cannot host torch.func.jvp: the target goes to the wrapped module, the prediction through DDP."""
    import torch.distributed as dist

    torch.manual_seed(0)
    model = MLP(2, width=16, depth=2, times=2)
    x0, x1, t, r = _batch(32)
    plain = meanflow_loss(model, x0, x1, t, r)
    expected = torch.autograd.grad(plain, list(model.parameters()))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = meanflow_loss(ddp, x0, x1, t, r)
        loss.backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss, plain)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


# -- sampling --------------------------------------------------------------------------------------
def test_mean_flow_sampling_of_the_exact_average_velocity_is_the_exact_flow_map():
    u = ExactAverage()
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MEAN + STD * x0  # Phi_{0 -> 1}
    for steps in (1, 2, 5):
        sol = mean_flow_sample(u, x0, steps=steps)
        assert sol.nfe == steps
        torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-12)  # measured 4.4e-16 at 1, 2 and 5 steps
    sol = mean_flow_sample(u, x0, times=[0.0, 0.3, 1.0], return_trajectory=True)
    assert sol.nfe == 2 and sol.times.tolist() == [0.0, 0.3, 1.0]
    torch.testing.assert_close(sol.trajectory[1], _flow_map(x0, 0.0, 0.3), rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-12)
    # from the middle of the path: x_0.4 -> x_1
    x_mid = _flow_map(x0, 0.0, 0.4)
    torch.testing.assert_close(mean_flow_sample(u, x_mid, times=[0.4, 1.0]).x, exact, rtol=0, atol=1e-12)
    with pytest.raises(FlowmatchError):
        mean_flow_sample(u, x0, times=[1.0, 0.0])
    with pytest.raises(FlowmatchError):
        mean_flow_sample(u, x0, steps=0)


def test_with_r_equal_t_a_two_time_model_is_a_velocity_field():
    torch.manual_seed(0)
    for model, dim in ((MLP(3, width=32, depth=2, times=2), 3), (UNet(16, channels=8, times=2), 16)):
        if isinstance(model, UNet):
            torch.nn.init.normal_(model.conv_out.weight, std=0.1)  # zero-initialised output
        x, t = torch.randn(6, dim), torch.rand(6)
        with torch.no_grad():
            one = model(x, t)
            torch.testing.assert_close(model(x, t, r=t), one)  # the same operations on r = t (measured equal)
            torch.testing.assert_close(instantaneous_velocity(model)(x, t), one)
            assert (model(x, t, r=t * 0.5) - one).abs().max() > 1e-4  # r matters elsewhere
            # the ODE solvers take it as is
            sol = integrate(model, x, solver="euler", nfe=4)
            torch.testing.assert_close(sol.x, integrate(instantaneous_velocity(model), x, solver="euler", nfe=4).x)


# -- models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "dim"),
    [
        (lambda: MLP(3, width=16, depth=2, num_classes=2, times=2), 3),
        (lambda: UNet(16, channels=8, num_classes=2, times=2), 16),
        (lambda: MLP(3, width=16, depth=2, times=2, time_scale=30.0), 3),
    ],
)
def test_two_time_models_rebuild_from_their_config(model, dim):
    torch.manual_seed(0)
    model = model()
    config = json.loads(json.dumps(to_config(model)))  # through JSON, as a checkpoint stores it
    assert config["times"] == 2 and "time_scale" in config
    clone = from_config(config, dim)
    clone.load_state_dict(model.state_dict())
    assert to_config(clone) == config
    x, t, r, y = torch.randn(4, dim), torch.rand(4), torch.rand(4) * 0.5, torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(model(x, t, y, r=r * t), clone(x, t, y, r=r * t))


def test_one_time_models_are_unchanged():
    mlp, unet = MLP(2, width=16), UNet(16, channels=8)
    assert "times" not in mlp.config and "time_scale" not in mlp.config
    assert "times" not in unet.config and "time_scale" not in unet.config
    assert not any(name.startswith("dt_in") for name, _ in mlp.named_parameters())
    assert not any(name.startswith("interval_mlp") for name, _ in unet.named_parameters())
    x = torch.randn(3, 2)
    with pytest.raises(FlowmatchError, match="one time"):
        mlp(x, 0.5, r=0.2)
    with pytest.raises(FlowmatchError, match="one time"):
        unet(torch.randn(3, 16), 0.5, r=0.2)
    for bad in (0, 3, True):
        with pytest.raises(FlowmatchError, match="times"):
            MLP(2, times=bad)
        with pytest.raises(FlowmatchError, match="times"):
            UNet(16, times=bad)
    with pytest.raises(FlowmatchError, match="time_scale"):
        MLP(2, times=2, time_scale=0.0)


# -- training --------------------------------------------------------------------------------------
def test_a_short_meanflow_training_samples_two_gaussians_in_one_step():
    """1000 steps of the paper's recipe (p = 1, 75% r = t, logit-normal (0.4, 1)) on two Gaussians at (+-2, 0)
    with std 0.5; one-step samples against the data. Measured over seeds 0-3 (this test is seed 0): means
    within 0.071 of 0, x-variance 4.09-4.15 (data 4.25), share on the right 0.493-0.530, share within 1 of
    a mode 0.894-0.905 (data 0.954; N(0, 4.25) would give 0.48), y-variance 0.107-0.149 (data 0.25: a small
    spread is learned slowly, by plain flow matching too). About 6 s."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])

    def data(n):
        return centers[torch.randint(0, 2, (n,), generator=g)] + 0.5 * torch.randn(n, 2, generator=g)

    model = MLP(2, width=64, depth=3, times=2)
    steps = 1000
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    for _ in range(steps):
        x1, x0 = data(256), torch.randn(256, 2, generator=g)
        t, r = meanflow_times(256, g)
        loss = meanflow_loss(model, x0, x1, t, r)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        x = mean_flow_sample(model, torch.randn(20_000, 2, generator=g)).x
    mean, var = x.mean(0), x.var(0)
    assert mean.abs().max() < 0.15  # data: 0 (+-0.015 sampling error)
    assert var[0].item() == pytest.approx(4.25, rel=0.1)  # two modes 4 apart, each of variance 0.25
    assert 0.45 < (x[:, 0] > 0).float().mean().item() < 0.55
    assert ((x[:, 0].abs() - 2).abs() < 1.0).float().mean() > 0.85  # near a mode, not between them
    assert 0.05 < var[1].item() < 0.4


# -- the training loop, run folders and the CLI ------------------------------------------------------
TINY = {"data": "two-gaussians", "steps": 30, "width": 32, "depth": 2, "batch_size": 64, "batch_warmup": 0, "device": "cpu"}


def test_objective_meanflow_trains_a_two_time_model_that_samples_in_one_jump_by_default(tmp_path, capsys):
    from flowmatch.api import fit
    from flowmatch.cli import main
    from flowmatch.config import TrainConfig
    from flowmatch.runs import load

    result, metrics = fit(TrainConfig(objective="meanflow", **TINY), out=tmp_path / "run", progress=False, evaluate=False)
    assert metrics["sampler"] == {"solver": "meanflow", "nfe": 1}
    flow = load(tmp_path / "run")
    assert flow.model.config["times"] == 2 and flow.resolve_sampler() == ("meanflow", 1)
    one, two = flow.generate(500, seed=1), flow.generate(500, seed=1, nfe=2)
    assert (one.nfe, two.nfe) == (1, 2)
    # one jump is x0 + u(x0, 0, 1), by hand in model coordinates
    x0 = flow.draw_source(500, torch.Generator().manual_seed(1))
    with torch.no_grad():
        by_hand = flow.standardizer.inverse(x0 + flow.model(x0, torch.tensor(1.0), r=torch.tensor(0.0)))
    assert torch.allclose(one.x, by_hand, atol=1e-5)
    assert torch.isfinite(flow.generate(100, solver="rk4", nfe=8, seed=0).x).all()  # u(x, t, t) = v(x, t) for the ODE solvers
    assert main(["sample", "--run", str(tmp_path / "run"), "-n", "50", "--out", str(tmp_path / "x.npy")]) == 0
    assert "solver meanflow, NFE 1" in capsys.readouterr().out


def test_the_loop_regresses_onto_the_posterior_velocity_at_the_intervals_start():
    """meanflow_loss(posterior=) is the loss with the posterior velocity of the point x_r (not x_t) as v."""
    from flowmatch.losses import Posterior

    torch.manual_seed(0)
    model, path = MLP(2, width=16, depth=2, times=2), make_path("linear")
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2) + 3.0
    t, r = _intervals(64, 5, torch.float32)
    over = Posterior(x1[:32], torch.where(torch.arange(64) < 32, torch.arange(64), -1))
    v = path.posterior_velocity(path.sample(x0, x1, r), x1, over.reference, over.own)
    assert torch.equal(meanflow_loss(model, x0, x1, t, r, posterior=over), meanflow_loss(model, x0, x1, t, r, velocity=v))
    assert not torch.allclose(v, path.sample(x0, x1, r).velocity)  # the posterior is not the pair's own velocity
    with pytest.raises(FlowmatchError, match="not both"):
        meanflow_loss(model, x0, x1, t, r, posterior=over, velocity=v)


def test_objective_meanflow_refuses_what_cannot_take_two_times():
    from flowmatch.api import train
    from flowmatch.config import TrainConfig
    from flowmatch.flows.continuous import Flow

    unsized = {k: v for k, v in TINY.items() if k not in ("width", "depth")}  # one's own model has its own sizes
    with pytest.raises(FlowmatchError, match="seed-mlp model takes one time"):
        train(TrainConfig(objective="meanflow", model="seed-mlp", **{k: v for k, v in TINY.items() if k != "depth"}), progress=False)
    with pytest.raises(FlowmatchError, match="depth=2 does not apply to model seed-mlp"):  # a size the seed MLP has not
        train(TrainConfig(objective="meanflow", model="seed-mlp", **TINY), progress=False)
    with pytest.raises(FlowmatchError, match="times=2"):
        train(TrainConfig(objective="meanflow", **unsized), model=MLP(2, width=16), progress=False)

    class OneTime(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 2)

        def forward(self, x, t):
            return self.net(torch.cat([x, torch.as_tensor(t).expand(len(x), 1)], 1))

    with pytest.raises(FlowmatchError, match="takes no argument r"):
        train(TrainConfig(objective="meanflow", **unsized), model=OneTime(), progress=False)
    with pytest.raises(FlowmatchError, match="need objective meanflow and conditional"):
        TrainConfig.from_dict({"objective": "meanflow", "meanflow_guidance": 2.0})
    from flowmatch.data.standardize import Standardizer

    identity = Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    one_time = Flow(model=MLP(2, width=16).eval(), path=make_path("linear"), standardizer=identity, config={"source": "gaussian"})
    with pytest.raises(FlowmatchError, match="two-time model"):
        one_time.generate(10, solver="meanflow")


def test_the_nfe_sweep_of_a_meanflow_run_has_its_jumps_beside_the_ode_solvers():
    from flowmatch.api import train
    from flowmatch.config import TrainConfig
    from flowmatch.evaluation.report import nfe_sweep

    flow = train(TrainConfig(objective="meanflow", **TINY), progress=False).flow
    held = flow.dataset.test
    sweep = nfe_sweep(flow, held[:100], held[100:200], n=100, nfes=(1, 2, 4))
    assert [k for k, _ in sweep["w2"]["solvers"]["meanflow"]] == [1, 2, 4]
    assert [k for k, _ in sweep["w2"]["solvers"]["rk4"]] == [4]  # the ODE solvers on u(x, t, t), as before

"""Discrete flow matching: the mixture path against its closed form, the probability velocity against the
Kolmogorov equation, the losses, and the jump sampler on an exact posterior (flowmatch.discrete)."""

import itertools

import pytest
import torch

from flowmatch.discrete.losses import cross_entropy_loss, generalized_kl_loss
from flowmatch.discrete.paths import MixturePath
from flowmatch.discrete.sampling import jump_sample
from flowmatch.discrete.schedulers import CosineScheduler, LinearScheduler, PolynomialScheduler
from flowmatch.errors import FlowmatchError

SCHEDULERS = [LinearScheduler(), PolynomialScheduler(2.0), CosineScheduler()]
V = 4


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s.name)
def test_scheduler_derivative_is_kappas(scheduler):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(scheduler.kappa(t).sum(), t)
    # float64 autograd of the same closed form: equal to round-off
    torch.testing.assert_close(scheduler.d_kappa(t.detach()), grad, rtol=1e-12, atol=1e-12)
    ends = scheduler.kappa(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s.name)
def test_drawn_x_t_follow_the_closed_form_marginal(scheduler, source):
    path, n = MixturePath(scheduler, V, source), 200_000
    x1 = torch.full((n,), 2)
    t = torch.full((n,), 0.3)
    x_t = path.sample(x1, t, torch.Generator().manual_seed(0))
    freq = torch.bincount(x_t, minlength=path.states).double() / n
    expected = path.marginal(x1[:1], t[:1])[0]
    # a frequency of n draws has standard error sqrt(p (1 - p) / n) <= 0.0011; 5 of them
    assert (freq - expected).abs().max() < 5 * (0.25 / n) ** 0.5


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s.name)
def test_velocity_generates_the_path(scheduler, source):
    """d/dt p_t(x | x1) = sum_z u_t(x, z | x1) p_t(z | x1), with the conditional rates (posterior = delta_{x1})."""
    path = MixturePath(scheduler, V, source)
    x1 = torch.tensor([1])
    for t0 in (0.1, 0.4, 0.8):
        t = torch.tensor([t0], dtype=torch.float64, requires_grad=True)
        p_t = path.marginal(x1, t)[0]
        d_p = torch.stack([torch.autograd.grad(p_t[k], t, retain_graph=True)[0][0] for k in range(path.states)])
        posterior = torch.nn.functional.one_hot(x1, V).to(torch.float64)
        flow = sum(path.velocity(posterior, torch.tensor([z]), t.detach())[0] * p_t[z].detach() for z in range(path.states))
        torch.testing.assert_close(flow, d_p, rtol=1e-10, atol=1e-12)  # float64 closed forms: round-off only


def _exact_logits(path: MixturePath, p: torch.Tensor):
    """The exact posterior p_{1|t}(x1 | x_t) of independent positions with data law p (V,), as logits."""

    def logits(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kappa = path.scheduler.kappa(t.to(torch.float64)).reshape(-1, *[1] * (x_t.ndim - 1), 1)
        like = (1 - kappa) * (1.0 / V if path.source == "uniform" else 0.0) + kappa * torch.nn.functional.one_hot(
            x_t.clamp_max(V - 1), V
        ).to(torch.float64) * (x_t < V).unsqueeze(-1)
        if path.source == "mask":  # a masked position tells nothing: the prior; an unmasked one is its data token
            like = torch.where((x_t == V).unsqueeze(-1), torch.ones_like(like), like)
        return torch.log(p * like + 1e-300)

    return logits


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("nfe", [1, 8])
def test_jump_sampler_on_the_exact_posterior_recovers_the_law(source, nfe):
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(CosineScheduler(), V, source)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    x = jump_sample(_exact_logits(path, p), path.draw_source((n, 3), g), path, nfe=nfe, generator=g)
    assert x.max() < V  # no position left at the mask
    freq = torch.bincount(x.reshape(-1), minlength=V).double() / x.numel()
    # 60,000 independent tokens: standard error sqrt(p (1 - p) / 60,000) <= 0.002; 5 of them
    assert (freq - p).abs().max() < 5 * (0.25 / x.numel()) ** 0.5


def test_temperature_sharpens_and_bad_options_are_refused():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(LinearScheduler(), V, "mask")
    g = torch.Generator().manual_seed(2)
    cold = jump_sample(_exact_logits(path, p), path.draw_source((20_000,), g), path, nfe=4, temperature=0.25, generator=g)
    # p^4 normalised puts 0.71 on the last token against 0.4 at temperature 1
    assert (cold == 3).double().mean() > 0.65
    with pytest.raises(FlowmatchError, match="nfe"):
        jump_sample(_exact_logits(path, p), path.draw_source((2,)), path, nfe=0)
    with pytest.raises(FlowmatchError, match="temperature"):
        jump_sample(_exact_logits(path, p), path.draw_source((2,)), path, temperature=0.0)
    with pytest.raises(FlowmatchError, match="discrete source"):
        MixturePath(LinearScheduler(), V, "gaussian")


def test_cross_entropy_is_the_data_tokens_negative_log_posterior():
    logits = torch.randn(3, 5, V, generator=torch.Generator().manual_seed(0))
    x1 = torch.randint(V, (3, 5), generator=torch.Generator().manual_seed(1))
    expected = -torch.log_softmax(logits, -1).gather(-1, x1.unsqueeze(-1)).mean()
    torch.testing.assert_close(cross_entropy_loss(logits, x1), expected, rtol=1e-6, atol=1e-7)  # float32 sums of 15 terms


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_generalized_kl_is_smallest_at_the_true_posterior(source):
    """E over x1 ~ p and x_t ~ p_t(. | x1) of the loss, exactly (every pair enumerated), is lower for the exact
    posterior's logits than for perturbed ones."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(LinearScheduler(), V, source)
    t = torch.tensor([0.35])
    exact = _exact_logits(path, p)

    def expected_loss(perturb: torch.Tensor) -> float:
        total = 0.0
        for x1, z in itertools.product(range(V), range(path.states)):
            weight = p[x1] * path.marginal(torch.tensor([x1]), t)[0, z]
            if weight == 0:
                continue
            logits = exact(torch.tensor([z]), t) + perturb[z]
            total += float(weight) * float(generalized_kl_loss(logits.reshape(1, V), torch.tensor([x1]), torch.tensor([z]), t, path))
        return total

    base = expected_loss(torch.zeros(path.states, V))
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        # measured: these perturbations raise the expected loss by 0.0015 to 0.046, far above float32 round-off (~1e-7)
        assert expected_loss(0.3 * torch.randn(path.states, V, generator=g, dtype=torch.float64)) > base


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_guidance_samples_the_geometric_mix_of_the_posteriors(w):
    """Masked source, exact posteriors of two laws: guided samples follow p_c^w p_u^(1 - w), renormalised."""
    p_c = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    p_u = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    path = MixturePath(CosineScheduler(), V, "mask")
    g = torch.Generator().manual_seed(4)
    x = jump_sample(
        _exact_logits(path, p_c), path.draw_source((30_000,), g), path, nfe=4, generator=g,
        null_logits_fn=_exact_logits(path, p_u), guidance=w,
    )  # fmt: skip
    law = p_c**w * p_u ** (1 - w)
    law = law / law.sum()
    freq = torch.bincount(x, minlength=V).double() / len(x)
    assert (freq - law).abs().max() < 5 * (0.25 / len(x)) ** 0.5  # 5 standard errors of 30,000 draws
    with pytest.raises(FlowmatchError, match="null_logits_fn"):
        jump_sample(_exact_logits(path, p_c), path.draw_source((2,)), path, guidance=2.0)


def test_a_token_transformer_learns_dependent_positions():
    """Sequences (a, a, b, b), a and b uniform over 3 tokens: a model of independent positions puts 1/9 of
    its samples on such pairs; the transformer trained on the cross-entropy for 1,500 steps puts nearly all."""
    from flowmatch.models.registry import build_model, to_config

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    path = MixturePath(PolynomialScheduler(1.0), 3, "mask")
    model = build_model("transformer", 4, vocab_size=3, width=32, depth=2, heads=2)
    assert to_config(model)["name"] == "transformer" and build_model(
        "transformer", 4, **{k: v for k, v in to_config(model).items() if k != "name"}
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        a, b = torch.randint(3, (128, 1), generator=g), torch.randint(3, (128, 1), generator=g)
        x1 = torch.cat([a, a, b, b], dim=1)
        t = torch.rand(128, generator=g)
        loss = cross_entropy_loss(model(path.sample(x1, t, g), t), x1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x = jump_sample(model, path.draw_source((1000, 4)), path, nfe=64, generator=g)
    paired = ((x[:, 0] == x[:, 1]) & (x[:, 2] == x[:, 3])).double().mean()
    # measured 0.988 on seed 0 (0.45 after 400 steps); independent positions give 0.11
    assert paired > 0.8 and x.max() < 3

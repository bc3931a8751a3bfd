"""Discrete flow matching: the mixture path against its closed form, the probability velocity against the
Kolmogorov equation, the losses, and the jump sampler on an exact posterior (flowmatch.discrete)."""

import itertools
import math

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
    x_t = path.corrupt(x1, t, torch.Generator().manual_seed(0))
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
        loss = cross_entropy_loss(model(path.corrupt(x1, t, g), t), x1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        x = jump_sample(model, path.draw_source((1000, 4)), path, nfe=64, generator=g)
    paired = ((x[:, 0] == x[:, 1]) & (x[:, 2] == x[:, 3])).double().mean()
    # measured 0.988 on seed 0 (0.45 after 400 steps); independent positions give 0.11
    assert paired > 0.8 and x.max() < 3


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_the_corrector_keeps_the_law(source):
    """(1 + alpha) forward + alpha backward rates generate the same marginals: on the exact posterior the
    corrected chain still lands on the data law, and re-masks tokens on the way (it changes the path taken)."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(CosineScheduler(), V, source)
    g = torch.Generator().manual_seed(5)
    n = 20_000
    x = jump_sample(_exact_logits(path, p), path.draw_source((n, 3), g), path, nfe=32, generator=g, corrector=3.0)
    assert x.max() < V
    freq = torch.bincount(x.reshape(-1), minlength=V).double() / x.numel()
    # the exact chain's law up to the Euler step's first-order error in h = 1/32 on the corrected rates
    # (measured 0.004 at nfe 32) and 5 standard errors of 60,000 tokens (0.010)
    assert (freq - p).abs().max() < 5 * (0.25 / x.numel()) ** 0.5 + 0.01


def test_the_corrector_remasks_and_bad_values_are_refused():
    path = MixturePath(LinearScheduler(), V, "mask")
    seen: list[torch.Tensor] = []
    exact = _exact_logits(path, torch.full((V,), 0.25, dtype=torch.float64))

    def logits(x, t):
        seen.append(x.clone())
        return exact(x, t)

    g = torch.Generator().manual_seed(6)
    jump_sample(logits, path.draw_source((4000,), g), path, nfe=20, generator=g, corrector=5.0)
    remasked = sum(int(((a != V) & (b == V)).sum()) for a, b in zip(seen, seen[1:]))
    assert remasked > 100  # unmasked tokens went back to the mask (the plain sampler never does that)
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(FlowmatchError, match="corrector"):
            jump_sample(logits, path.draw_source((2,)), path, corrector=bad)


class _ExactPosterior(torch.nn.Module):
    """The exact posterior of i.i.d. positions with law p, as a module (the flow's model)."""

    def __init__(self, path: MixturePath, p: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.logits = _exact_logits(path, p)

    def forward(self, tokens, t):
        return self.logits(tokens, t).float() + self.weight


def test_the_likelihood_bound_of_the_exact_posterior_is_the_entropy():
    """For the masked chain with the exact posterior the ELBO is tight: its expectation over x1 ~ p is L H(p)."""
    from flowmatch.flows.discrete import DiscreteFlow

    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(LinearScheduler(), V, "mask")
    flow = DiscreteFlow(_ExactPosterior(path, p), path, length=8)
    x1 = torch.multinomial(p, 4000 * 8, replacement=True, generator=torch.Generator().manual_seed(7)).reshape(4000, 8)
    entropy = float(-(p * p.log()).sum())
    bound = flow.nll_bound(x1, times=8, seed=0)
    # Monte Carlo over 4,000 sequences x 8 stratified times; per-token standard deviation measured 1.0 nats,
    # so the standard error is about 1.0 / sqrt(32,000 * 8) = 0.002; 5 of them
    assert abs(bound - entropy) < 0.012
    assert flow.bits_per_token(x1[:10], times=2) == pytest.approx(flow.nll_bound(x1[:10], times=2) / math.log(2))
    with pytest.raises(FlowmatchError, match="shape"):
        flow.nll_bound(x1[:, :3])
    uniform = DiscreteFlow(_ExactPosterior(path, p), MixturePath(LinearScheduler(), V, "uniform"), length=8)
    with pytest.raises(FlowmatchError, match="masked source"):
        uniform.nll_bound(x1)


def test_mixed_sampling_integrates_the_continuous_part_with_the_tokens():
    """x1 ~ N(mu, s^2) beside tokens of law p: with the exact velocity of the straight path from N(0, 1),
    v(x, t) = mu + (t s^2 - (1 - t)) (x - t mu) / (t^2 s^2 + (1 - t)^2), the joint sampler's Euler part lands
    on N(mu, s^2) and its jump part on p, on one time grid."""
    from flowmatch.discrete.sampling import mixed_sample

    mu, s = 2.0, 0.5
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    path = MixturePath(CosineScheduler(), V, "mask")
    logits = _exact_logits(path, p)

    def fn(x, tokens, t):
        tt = t[:, None].to(x.dtype)
        v = mu + (tt * s**2 - (1 - tt)) * (x - tt * mu) / (tt**2 * s**2 + (1 - tt) ** 2)
        return v, logits(tokens, t)

    g = torch.Generator().manual_seed(8)
    n = 20_000
    x, tokens = mixed_sample(
        fn, path.draw_source((n, 2), g), path, x0=torch.randn(n, 1, generator=g, dtype=torch.float64), nfe=200, generator=g
    )
    assert x is not None
    # Euler's error at h = 1/200 (measured 0.003 in the mean, 0.002 in the std) and 5 standard errors of 20,000 draws
    assert abs(float(x.mean()) - mu) < 5 * s / n**0.5 + 0.01
    assert abs(float(x.std()) - s) < 5 * s / (2 * n) ** 0.5 + 0.01
    freq = torch.bincount(tokens.reshape(-1), minlength=V).double() / tokens.numel()
    assert (freq - p).abs().max() < 5 * (0.25 / tokens.numel()) ** 0.5

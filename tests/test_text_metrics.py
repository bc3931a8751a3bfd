"""Text metrics: the Kneser-Ney reference model and the n-gram statistics of generated text.

The model is checked against sources whose entropy is known in closed form: i.i.d. tokens from a
categorical p (entropy H(p)), a deterministic cycle (entropy 0) and a first-order Markov chain with
transition matrix P and stationary distribution pi (entropy rate sum_i pi_i H(P_i), marginal
entropy H(pi)). Held-out log-loss of a consistent estimator approaches these from above, by the
estimation excess (about #free parameters / (2 N ln 2) bits for N training tokens) and the
smoothing's small extra mass.
"""

from __future__ import annotations

import numpy as np
import pytest

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.text import NGramModel, ngram_counts, ngram_report, ngram_statistics

P = np.array(
    [
        [0.7, 0.2, 0.1, 0.0],
        [0.1, 0.6, 0.2, 0.1],
        [0.2, 0.1, 0.1, 0.6],
        [0.5, 0.0, 0.25, 0.25],
    ]
)


def entropy(p) -> float:
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def stationary(P) -> np.ndarray:
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    return pi / pi.sum()


def chain(n: int, rng: np.random.Generator, x0: int = 0) -> np.ndarray:
    cdf = np.cumsum(P, axis=1)
    u = rng.random(n)
    x = np.empty(n, dtype=np.int64)
    x[0] = x0
    for i in range(1, n):
        x[i] = min(int(np.searchsorted(cdf[x[i - 1]], u[i], side="right")), P.shape[0] - 1)
    return x


@pytest.fixture(scope="module")
def markov():
    rng = np.random.default_rng(1)
    return chain(150_000, rng), chain(50_000, rng, x0=2)


def batch_se(x: np.ndarray, batches: int = 50) -> float:
    """Standard error of the mean of a correlated series, by batch means."""
    means = np.array([b.mean() for b in np.array_split(x, batches)])
    return float(means.std(ddof=1) / np.sqrt(batches))


def test_conditionals_sum_to_one(markov):
    train, _ = markov
    model = NGramModel(order=4, vocab_size=6).fit(train)  # tokens 4 and 5 never occur in training
    rng = np.random.default_rng(0)
    contexts = [[], [2], [5], [0, 1], [5, 5, 5], [4, 0, 1, 2, 3, 3]] + [rng.integers(0, 6, k) for k in (1, 2, 3, 3, 3, 7)]
    for context in contexts:
        probs = model.next_token_probs(context)
        assert probs.shape == (6,)
        assert np.all(probs > 0)
        # a sum of 6 terms each exact to a few ulps: float precision
        assert abs(probs.sum() - 1.0) < 1e-12


def test_log2_prob_matches_the_conditionals(markov):
    train, heldout = markov
    model = NGramModel(order=3, vocab_size=4).fit(train)
    text = heldout[:40]
    direct = [np.log2(model.next_token_probs(text[max(0, i - 2) : i])[text[i]]) for i in range(text.size)]
    # the vectorised scorer and the one-context distribution do the same arithmetic: float precision
    np.testing.assert_allclose(model.log2_prob(text), direct, rtol=0, atol=1e-12)
    assert model.bits_per_token(text) == pytest.approx(-np.mean(direct), abs=1e-12)


def test_iid_tokens_reach_the_entropy():
    rng = np.random.default_rng(3)
    p = np.array([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    train, heldout = rng.choice(6, 200_000, p=p), rng.choice(6, 50_000, p=p)
    true_loss = -np.log2(p[heldout])
    se = true_loss.std() / np.sqrt(heldout.size)  # about 0.004 bits
    for order in (1, 2, 3):
        bits = NGramModel(order=order, vocab_size=6).fit(train).bits_per_token(heldout)
        # sampling noise of the held-out mean (4 standard errors) plus the estimation excess: at order 3,
        # 36 contexts x 5 free parameters / (2 * 200,000 * ln 2) ~ 0.0007 bits, about doubled by the discount
        assert abs(bits - entropy(p)) < 4 * se + 0.005
        # the same held-out tokens under the true p: the noise cancels, what remains is the excess >= 0
        assert -0.001 < bits - true_loss.mean() < 0.005


def test_periodic_text_costs_almost_nothing():
    train = np.tile(np.arange(3), 3000)
    heldout = np.tile(np.array([1, 2, 0]), 1000)
    model = NGramModel(order=3, vocab_size=3).fit(train)
    # inside the text each token costs about D / (c ln 2) ~ 0.75 / (3000 ln 2) ~ 4e-4 bits; the first two
    # (shorter contexts) cost at most a few bits, spread over 3000 tokens: ~ 0.001
    assert model.bits_per_token(heldout) < 0.005
    sample = model.sample(300, seed=0)
    # each step leaves the cycle with probability ~ D / c * P_lower ~ 2e-4
    assert np.mean(sample[1:] == (sample[:-1] + 1) % 3) > 0.99


def test_markov_chain_entropy_rate(markov):
    train, heldout = markov
    pi = stationary(P)
    rate = sum(pi[i] * entropy(P[i]) for i in range(4))  # 1.378 bits
    marginal = entropy(pi)  # 1.849 bits
    x, y = heldout[:-1], heldout[1:]
    se_rate = batch_se(-np.log2(P[x, y]))
    se_marginal = batch_se(-np.log2(pi[heldout]))
    bigram = NGramModel(order=2, vocab_size=4).fit(train).bits_per_token(heldout)
    unigram = NGramModel(order=1, vocab_size=4).fit(train).bits_per_token(heldout)
    # 4 standard errors of the held-out mean (batch means, ~0.004) plus the estimation excess
    # (4 contexts x 3 parameters / (2 * 150,000 * ln 2) ~ 6e-5 bits, and the discount's extra mass)
    assert abs(bigram - rate) < 4 * se_rate + 0.005
    assert abs(unigram - marginal) < 4 * se_marginal + 0.005
    # the unigram cannot see the dependence: it stays at the marginal entropy, 0.47 bits above the rate
    assert unigram > bigram + 0.4


def test_order_one_sample_follows_the_unigram():
    rng = np.random.default_rng(5)
    p = np.array([0.5, 0.3, 0.2])
    model = NGramModel(order=1, vocab_size=3).fit(rng.choice(3, 20_000, p=p))
    q = model.next_token_probs([])
    freq = np.bincount(model.sample(20_000, seed=1), minlength=3) / 20_000
    # multinomial frequencies: standard error sqrt(q (1 - q) / n) <= 0.0036; 5 of them
    assert np.all(np.abs(freq - q) < 0.018)
    assert model.sample(0).shape == (0,)


def test_ngram_counts_stay_within_sequences():
    counts = ngram_counts([np.array([1, 2, 1, 2]), np.array([2, 1])], 2)
    assert counts == {(1, 2): 2, (2, 1): 2}  # no (2, 2) across the boundary
    assert ngram_counts(np.array([0, 0, 0]), 3) == {(0, 0, 0): 1}
    assert ngram_counts(np.array([[1, 2], [3, 4]]), 1) == {(1,): 1, (2,): 1, (3,): 1, (4,): 1}


def test_ngram_statistics_extremes():
    rng = np.random.default_rng(0)
    text = rng.integers(0, 5, 2000)
    same = ngram_statistics(text, text)
    assert set(same) == {1, 2, 3, 4}
    for stats in same.values():
        assert stats["tv"] == pytest.approx(0.0, abs=1e-12)
        assert stats["novel"] == 0.0
        assert stats["entropy"] == pytest.approx(stats["reference_entropy"], abs=1e-12)
    disjoint = ngram_statistics(text + 5, text, orders=(1, 3))
    assert set(disjoint) == {1, 3}
    for stats in disjoint.values():
        assert stats["tv"] == pytest.approx(1.0, abs=1e-12)
        assert stats["novel"] == 1.0
    cycle = ngram_statistics(np.tile(np.arange(4), 50), text, orders=(1,))
    assert cycle[1]["entropy"] == pytest.approx(2.0, abs=1e-12)  # uniform over 4 tokens
    cycle = ngram_statistics(np.append(np.tile(np.arange(4), 50), 0), text, orders=(2,))
    assert cycle[2]["entropy"] == pytest.approx(2.0, abs=1e-12)  # 4 bigrams, 50 of each


def test_ngram_report_value_beside_floor(markov):
    _, heldout = markov
    rng = np.random.default_rng(7)
    same = [chain(256, rng, x0=int(rng.integers(4))) for _ in range(40)]
    other = [rng.integers(0, 4, 256) for _ in range(40)]  # i.i.d. uniform: not the chain
    near = ngram_report(same, heldout, seed=0)
    far = ngram_report(other, heldout, seed=0)
    assert near["sample_tokens"] == 40 * 256
    assert near["reference_tokens"] == (heldout.size // 256 - 40) * 256  # the other whole slots of 256 tokens
    for n in (1, 2, 3, 4):
        a, b = near["orders"][n], far["orders"][n]
        # value and floor are the same statistic of two independent samples of the same size from the same
        # process; each token moves an n-gram TV by at most n / 10240, so (bounded differences) its spread is
        # at most n / (2 sqrt(10240)) <= 0.02; seen spread across seeds <= 0.01
        assert abs(a["tv"]["value"] - a["tv"]["floor"]) < 0.05
        assert abs(a["novel"]["value"] - a["novel"]["floor"]) < 0.05
        assert abs(a["entropy"]["value"] - a["entropy"]["floor"]) < 0.1 * n
        # the uniform process differs from the chain by TV 0.2 in unigrams and more in longer n-grams
        assert b["tv"]["value"] > b["tv"]["floor"] + 0.15
        assert b["tv"]["floor"] == a["tv"]["floor"]  # same seed: same floor piece
    # P has zero entries, so the uniform process makes bigrams the chain never does
    assert far["orders"][2]["novel"]["value"] > near["orders"][2]["novel"]["floor"] + 0.1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: NGramModel(order=0, vocab_size=3), "order"),
        (lambda: NGramModel(order=2, vocab_size=3, discount=0.0), "discount"),
        (lambda: NGramModel(order=2, vocab_size=3, discount=1.5), "discount"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([], dtype=np.int64)), "empty"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0, 1, 3])), "outside the vocabulary"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0, -1, 2])), "negative"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0.5, 1.0])), "integer"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.zeros((2, 2), dtype=int)), "1-D"),
        (lambda: NGramModel(order=4, vocab_size=3).fit(np.array([0, 1])), "at least"),
        (lambda: NGramModel(order=2, vocab_size=3).bits_per_token(np.array([0, 1])), "fit"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0, 1, 2])).log2_prob(np.array([1, 5])), "outside"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0, 1, 2])).bits_per_token(np.array([], dtype=int)), "empty"),
        (lambda: NGramModel(order=2, vocab_size=3).fit(np.array([0, 1, 2])).next_token_probs([3]), "outside"),
        (lambda: ngram_statistics(np.array([0, 1]), np.array([0, 1]), orders=(0,)), "order"),
        (lambda: ngram_statistics(np.array([], dtype=int), np.array([0, 1])), "empty"),
        (lambda: ngram_statistics(np.array([0, 1]), np.array([0, 1]), orders=(3,)), "no 3-grams"),
        (lambda: ngram_counts([], 2), "empty"),
        (lambda: ngram_report([np.arange(4)] * 10, np.arange(60) % 4), "at least 80"),
        (lambda: ngram_report([np.arange(4)], np.array([], dtype=int)), "empty"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(FlowmatchError, match=match) as err:
        call()
    assert "\n" not in str(err.value)

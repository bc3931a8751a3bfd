"""Text metrics: a character n-gram reference model, and n-gram statistics of generated text.

Text is a 1-D array of integer token ids 0..V-1 (callers encode characters first); a "sequence" is
one such array, and a set of sequences is a list of them (or a 2-D array, one per row).

**Reference model.** :class:`NGramModel` is an interpolated Kneser-Ney model of order N (Chen &
Goodman 1998, "interpolated KN" with one fixed discount D, 0 < D <= 1; not the modified variant with
three discounts). For a context h of k-1 tokens and its shortening h' (h without its oldest token)

    P_k(w | h) = max(c_k(h w) - D, 0) / c_k(h .)  +  D N_k(h .) / c_k(h .) * P_{k-1}(w | h'),

where c_k(h .) = sum_w c_k(h w) and N_k(h .) = #{w : c_k(h w) > 0}; if c_k(h .) = 0 (context never
seen) then P_k(w | h) = P_{k-1}(w | h'). The recursion ends at P_0(w) = 1 / V, so every token of the
vocabulary has probability > 0, and each P_k sums to 1 over w because every seen count is >= 1 >= D.
At the highest order used (N, or i+1 for the i-th token of a text, whose context is shorter) c_k are
the raw counts of the k-grams in the training text. At the lower orders they are the continuation
counts c_k(h w) = #{distinct tokens u: u h w occurs} (+1 if h w starts the training text, the start
counting as one more distinct predecessor), the KN estimate of how readily w appears in new contexts.

The log-loss of a text t_0..t_{L-1} is the mean of -log2 P(t_i | t_{max(0, i-N+1)}..t_{i-1}) in bits
per token; :meth:`NGramModel.sample` draws from the same conditionals, starting from an empty context.

**N-gram statistics.** For each order n, the n-grams of a set of sequences are the windows of n
consecutive tokens inside one sequence (never across two). With f_S and f_R the n-gram frequency
distributions (counts over total) of samples S and reference R:

- total variation  tv = 1/2 sum_g |f_S(g) - f_R(g)|  (0 for equal distributions, 1 for disjoint);
- novel share  = sum_{g : f_R(g) = 0} f_S(g)  (share of the samples' n-gram occurrences unseen in R);
- entropy  = -sum_g f_S(g) log2 f_S(g)  in bits (the plug-in estimate; ``reference_entropy`` for R).

These are biased by sample size (tv and novel are > 0 even for samples of the reference's own
process), so :func:`ngram_report` puts each beside its floor: a held-out piece B of the same size as
the samples, cut into sequences of the samples' lengths, scored against the same reference piece A.

Example::

    model = NGramModel(order=5, vocab_size=V).fit(train_ids)
    bpc = model.bits_per_token(test_ids)
    report = ngram_report(generated_sequences, test_ids)   # report["orders"][3]["tv"] -> {"value", "floor"}
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import numpy as np

from flowmatch.errors import FlowmatchError

_MAX_CODE = 2**62


def _tokens(x, what: str, vocab_size: int | None = None) -> np.ndarray:
    """A non-empty 1-D int64 array of token ids in [0, vocab_size)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise FlowmatchError(f"{what} must be a 1-D array of token ids, got shape {arr.shape}")
    if arr.size == 0:
        raise FlowmatchError(f"{what} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise FlowmatchError(f"{what} must hold integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise FlowmatchError(f"{what} holds a negative token id ({lo})")
    if vocab_size is not None and hi >= vocab_size:
        raise FlowmatchError(f"{what} holds token id {hi}, outside the vocabulary of {vocab_size} tokens")
    return arr


def _int(value, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise FlowmatchError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _codes(windows: np.ndarray, base: int) -> np.ndarray:
    """Each row of ``windows`` (oldest token first) as one integer in base ``base``."""
    code = np.zeros(windows.shape[0], dtype=np.int64)
    for j in range(windows.shape[1]):
        code = code * base + windows[:, j]
    return code


class NGramModel:
    """Interpolated Kneser-Ney character n-gram model of order ``order`` (module docstring), with the
    lowest order interpolated with the uniform distribution over ``vocab_size`` tokens so that every token
    has probability > 0. ``vocab_size=None`` takes it from the training text (its largest id + 1)."""

    def __init__(self, order: int = 5, vocab_size: int | None = None, discount: float = 0.75):
        self.order = _int(order, "NGramModel order", 1)
        self.vocab_size = None if vocab_size is None else _int(vocab_size, "NGramModel vocab_size", 1)
        if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0.0 < discount <= 1.0:
            raise FlowmatchError(f"NGramModel discount must be in (0, 1], got {discount!r}")
        self.discount = float(discount)
        self.n_train = 0
        # Per level k = 1..order (index k): sorted k-gram codes, their raw and continuation counts, the
        # sorted codes of their (k-1)-token contexts, and per context the totals and the number of types.
        self._grams: list[np.ndarray] = []
        self._counts: list[tuple[np.ndarray, np.ndarray]] = []
        self._contexts: list[np.ndarray] = []
        self._totals: list[tuple[np.ndarray, np.ndarray]] = []
        self._types: list[np.ndarray] = []

    def fit(self, tokens: np.ndarray) -> NGramModel:
        """Count the training text's n-grams of every order 1..order (vectorised: one sort per order)."""
        V = self.vocab_size if self.vocab_size is not None else int(_tokens(tokens, "NGramModel.fit tokens").max()) + 1
        N = self.order
        t = _tokens(tokens, "NGramModel.fit tokens", V)
        if t.size < N:
            raise FlowmatchError(f"NGramModel.fit needs at least order = {N} tokens, got {t.size}")
        if V**N > _MAX_CODE:
            raise FlowmatchError(f"NGramModel: vocab_size**order = {V}**{N} is too large to encode n-grams in 64 bits")
        grams, raw = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for k in range(1, N + 1):
            g, c = np.unique(_codes(np.lib.stride_tricks.sliding_window_view(t, k), V), return_counts=True)
            grams.append(g)
            raw.append(c.astype(np.int64))
        # index 0 is a placeholder so that index k holds level k
        self._grams, self._counts = [grams[0]], [(raw[0], raw[0])]
        self._contexts, self._totals, self._types = [grams[0]], [(raw[0], raw[0])], [raw[0]]
        for k in range(1, N + 1):
            g = grams[k]
            cont = raw[k]
            if k < N:
                # distinct left extensions u h w of each k-gram h w, plus one for the start of the text
                suffixes, left = np.unique(grams[k + 1] % V**k, return_counts=True)
                cont = np.zeros_like(raw[k])
                cont[np.searchsorted(g, suffixes)] = left
                cont[np.searchsorted(g, _codes(t[None, :k], V))] += 1
            ctx, first = np.unique(g // V, return_index=True)
            self._grams.append(g)
            self._counts.append((raw[k], cont))
            self._contexts.append(ctx)
            self._totals.append((np.add.reduceat(raw[k], first), np.add.reduceat(cont, first)))
            self._types.append(np.diff(np.append(first, g.size)))
        self.vocab_size, self.n_train = V, int(t.size)
        return self

    def _check_fitted(self) -> int:
        if not self.n_train or self.vocab_size is None:
            raise FlowmatchError("NGramModel: call fit() before scoring or sampling")
        return self.vocab_size

    def _probs(self, history: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w_j | history_j) for rows of ``history`` (m, top - 1), oldest first, all of one length."""
        V = self.vocab_size
        assert V is not None
        top = history.shape[1] + 1
        D = self.discount
        p = np.full(w.shape[0], 1.0 / V)
        ctx = np.zeros(w.shape[0], dtype=np.int64)
        place = 1
        for k in range(1, top + 1):
            if k > 1:  # the context grows by one older token per level
                ctx = ctx + history[:, top - k] * place
                place *= V
            which = 0 if k == top else 1  # raw counts at the top level, continuation counts below
            contexts = self._contexts[k]
            i = np.minimum(np.searchsorted(contexts, ctx), contexts.size - 1)
            seen = contexts[i] == ctx
            if not seen.any():
                continue
            total = self._totals[k][which][i]
            grams = self._grams[k]
            code = ctx * V + w
            j = np.minimum(np.searchsorted(grams, code), grams.size - 1)
            count = np.where(grams[j] == code, self._counts[k][which][j], 0)
            mixed = (np.maximum(count - D, 0.0) + D * self._types[k][i] * p) / np.maximum(total, 1)
            p = np.where(seen, mixed, p)
        return p

    def next_token_probs(self, context: np.ndarray | Sequence[int]) -> np.ndarray:
        """The distribution over the V tokens of the token after ``context`` (its last order-1 tokens count)."""
        V = self._check_fitted()
        c = np.asarray(context)
        c = _tokens(c, "NGramModel context", V) if c.size else np.zeros(0, dtype=np.int64)
        c = c[c.size - min(c.size, self.order - 1) :]
        return self._probs(np.repeat(c[None, :], V, axis=0), np.arange(V, dtype=np.int64))

    def log2_prob(self, tokens: np.ndarray) -> np.ndarray:
        """Per-token log2 P(t_i | previous order-1 tokens), shorter contexts for the first order-1 tokens."""
        V = self._check_fitted()
        t = _tokens(tokens, "NGramModel tokens", V)
        h = self.order - 1
        out = np.empty(t.size)
        for i in range(min(h, t.size)):
            out[i] = self._probs(t[None, :i], t[i : i + 1])[0]
        if t.size > h:
            out[h:] = self._probs(np.lib.stride_tricks.sliding_window_view(t[:-1], h) if h else np.zeros((t.size, 0), np.int64), t[h:])
        return np.log2(out)

    def bits_per_token(self, tokens: np.ndarray) -> float:
        """Mean of -log2 P(t_i | context): the cross-entropy of the text under the model, in bits per token."""
        return float(-self.log2_prob(tokens).mean())

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """A sequence of ``n`` tokens drawn from the model's conditionals, from an empty context."""
        self._check_fitted()
        n = _int(n, "NGramModel.sample n", 0)
        rng = np.random.default_rng(seed)
        u = rng.random(n)
        out = np.empty(n, dtype=np.int64)
        cache: dict[tuple[int, ...], np.ndarray] = {}
        h = self.order - 1
        for i in range(n):
            key = tuple(out[max(0, i - h) : i].tolist())
            cdf = cache.get(key)
            if cdf is None:
                cdf = cache[key] = np.cumsum(self.next_token_probs(np.asarray(key, dtype=np.int64)))
            out[i] = min(int(np.searchsorted(cdf, u[i] * cdf[-1], side="right")), cdf.size - 1)
        return out


def _sequences(x, what: str) -> list[np.ndarray]:
    """A set of token sequences: a 1-D array (one sequence), a 2-D array (one per row) or a list of 1-D arrays."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        items: Iterable = list(x)
    elif isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]):
        items = x
    else:
        items = [x]
    seqs = [_tokens(s, f"{what} sequence", None) for s in items]
    if not seqs:
        raise FlowmatchError(f"{what} holds no sequences")
    return seqs


def _windows(seqs: list[np.ndarray], n: int) -> np.ndarray:
    """All n-grams (rows of n tokens) within each sequence."""
    parts = [np.lib.stride_tricks.sliding_window_view(s, n) for s in seqs if s.size >= n]
    return np.concatenate(parts) if parts else np.zeros((0, n), dtype=np.int64)


def _orders(orders) -> list[int]:
    out = [_int(n, "n-gram order", 1) for n in (orders if isinstance(orders, Iterable) else [orders])]
    if not out:
        raise FlowmatchError("n-gram orders are empty")
    return out


def ngram_counts(sequences, n: int) -> collections.Counter:
    """Counter of the n-grams (tuples of token ids) within each sequence; n-grams never span two sequences."""
    n = _int(n, "n-gram order", 1)
    rows = _windows(_sequences(sequences, "ngram_counts"), n)
    ids = _row_ids(rows)
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    return collections.Counter({tuple(rows[i].tolist()): int(c) for i, c in zip(first, counts)})


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """An id per row, equal for equal rows (0..distinct rows - 1)."""
    base = int(rows.max()) + 1 if rows.size else 1
    if base ** rows.shape[1] <= _MAX_CODE:  # one integer per row: a much faster sort than rows
        _, ids = np.unique(_codes(rows, base), return_inverse=True)
    else:
        _, ids = np.unique(rows, axis=0, return_inverse=True)
    return ids.reshape(-1)


def _entropy(counts: np.ndarray) -> float:
    f = counts[counts > 0] / counts.sum()
    return float(-(f * np.log2(f)).sum())


def ngram_statistics(samples, reference, orders=(1, 2, 3, 4)) -> dict:
    """Per order n: {"tv", "novel", "entropy", "reference_entropy"} of the samples' n-grams against the
    reference's (module docstring). ``samples`` and ``reference`` are sequences or sets of them."""
    S, R = _sequences(samples, "samples"), _sequences(reference, "reference")
    out: dict[int, dict[str, float]] = {}
    for n in _orders(orders):
        ws, wr = _windows(S, n), _windows(R, n)
        for rows, what in ((ws, "samples"), (wr, "reference")):
            if not rows.shape[0]:
                raise FlowmatchError(f"ngram statistics: the {what} have no {n}-grams (every sequence is shorter than {n})")
        ids = _row_ids(np.concatenate([ws, wr]))
        cs = np.bincount(ids[: ws.shape[0]], minlength=int(ids.max()) + 1)
        cr = np.bincount(ids[ws.shape[0] :], minlength=cs.size)
        fs, fr = cs / cs.sum(), cr / cr.sum()
        out[n] = {
            "tv": float(0.5 * np.abs(fs - fr).sum()),
            "novel": float(fs[cr == 0].sum()),
            "entropy": _entropy(cs),
            "reference_entropy": _entropy(cr),
        }
    return out


def ngram_report(samples, heldout, *, orders=(1, 2, 3, 4), seed: int = 0) -> dict:
    """The n-gram statistics of ``samples`` against held-out text, each beside its floor.

    ``heldout`` (a long 1-D array) is cut into slots of the samples' longest length; as many slots as there
    are samples, at random (``seed``), form piece B (each cut to its sample's length: windows from all over
    the held-out text, as independent as the samples are), and the other slots piece A, the reference.
    Value: samples against A; floor: B against A. A must be at least as long as B.
    Returns {"orders": {n: {"tv": {"value", "floor"}, "novel": {...}, "entropy": {...},
    "reference_entropy": float}}, "sample_tokens": int, "reference_tokens": int}.
    """
    S = _sequences(samples, "samples")
    text = _tokens(heldout, "heldout")
    lengths = [s.size for s in S]
    size, slot = sum(lengths), max(lengths)
    slots = text.size // slot
    if slots < 2 * len(S):
        raise FlowmatchError(
            f"ngram_report: heldout has {text.size} tokens; it needs at least {2 * len(S) * slot} "
            f"(a floor piece of {len(S)} windows of {slot} tokens and a reference piece at least as large)"
        )
    chosen = np.random.default_rng(seed).permutation(slots)
    floor_piece = [text[k * slot : k * slot + m] for k, m in zip(chosen[: len(S)], lengths)]
    reference = [text[k * slot : (k + 1) * slot] for k in np.sort(chosen[len(S) :])]
    value = ngram_statistics(S, reference, orders)
    floor = ngram_statistics(floor_piece, reference, orders)
    report: dict[int, dict] = {}
    for n, stats in value.items():
        report[n] = {key: {"value": stats[key], "floor": floor[n][key]} for key in ("tv", "novel", "entropy")}
        report[n]["reference_entropy"] = stats["reference_entropy"]
    return {"orders": report, "sample_tokens": int(size), "reference_tokens": int(sum(r.size for r in reference))}


__all__ = ["NGramModel", "ngram_counts", "ngram_report", "ngram_statistics"]


# -- memorisation ---------------------------------------------------------------------------------------------
#: The length of the stretches a copy of the training text is told by: the k-grams of :func:`copy_report`.
COPY_GRAM = 16


def _gram_rows(sequences: list[np.ndarray], k: int) -> np.ndarray:
    """Every window of k consecutive tokens inside one sequence, as rows of a (m,) array of k-token byte strings."""
    rows = [np.lib.stride_tricks.sliding_window_view(np.ascontiguousarray(s, dtype=np.int64), k) for s in sequences if len(s) >= k]
    if not rows:
        return np.empty(0, dtype=np.dtype((np.void, 8 * k)))
    grams = np.ascontiguousarray(np.concatenate(rows))
    return grams.view(np.dtype((np.void, 8 * k))).reshape(-1)


def copy_report(samples, train, heldout, *, k: int = COPY_GRAM) -> dict:
    """How much of the samples is copied from the training text: the share of the samples' k-grams (windows of
    k consecutive tokens inside one sequence) found verbatim in ``train`` (a token stream), beside the same
    share of held-out text cut into sequences of the samples' length (``heldout``: a stream), which has the
    common phrases of the text but was never trained on. A model that copies its training text has a share
    near 1; ``warning`` (:func:`copy_warning`) says so when the share is over max(0.10, twice the held-out's).
    ``k`` is at most half the samples' length."""
    sequences = _sequences(samples, "samples")
    length = min(len(s) for s in sequences)
    k = int(min(k, max(2, length // 2)))
    train_grams = np.unique(_gram_rows([np.asarray(train)], k))
    held = np.asarray(heldout, dtype=np.int64).reshape(-1)
    cut = held[: len(held) // length * length].reshape(-1, length)[: len(sequences)]
    if not len(cut):
        raise FlowmatchError(f"the held-out text holds fewer tokens than one sequence ({length})")

    def share(rows: np.ndarray) -> float:
        return float(np.isin(rows, train_grams).mean()) if len(rows) else float("nan")

    report = {"k": k, "copied_share": {"value": share(_gram_rows(sequences, k)), "heldout": share(_gram_rows(list(cut), k))}}
    report["warning"] = copy_warning(report)
    return report


def copy_warning(report: dict) -> str:
    """One line when the samples copy long stretches of the training text ('' otherwise)."""
    from flowmatch.evaluation.memorisation import COPY_WARNING

    share, own = report["copied_share"]["value"], report["copied_share"]["heldout"]
    if not share > max(COPY_WARNING, 2 * own):
        return ""
    return (
        f"warning: {share:.0%} of the samples' {report['k']}-token stretches appear verbatim in the training text (held-out "
        f"text's own share: {own:.0%}): the model copies its training data; try select=val-loss or fewer steps"
    )

"""Property-based tests (hypothesis) of the Python API's argument checks (issue 29): whatever a caller passes, each
entry point either does its work, with a result of the promised shape and range, or raises one
:class:`~flowmatch.errors.FlowmatchError`; never a raw TypeError, IndexError or RuntimeError from deeper down.

The table of CLI cases (tests/test_bad_inputs.py) lists inputs one by one; these strategies explore the spaces
between them: numbers of every type and size, arrays of every dtype and shape, option names and values.
Every property runs derandomized (the same examples on every machine and run: a seeded test), at most
:data:`EXAMPLES` examples each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowmatch.conditions import condition_rows
from flowmatch.data.tables import TableCodec
from flowmatch.errors import FlowmatchError
from flowmatch.flows.discrete import as_tokens
from flowmatch.flows.options import check_sample_options, sample_count
from flowmatch.losses import flow_matching_loss, meanflow_times, sample_times
from flowmatch.paths.affine import make_path

#: Examples per property: together they run in a few seconds on one core.
EXAMPLES = 200

checked = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

#: Anything a caller might pass where a number is wanted.
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.builds(np.int64, st.integers(-(2**40), 2**40)),
    st.builds(np.float32, st.floats(-1e6, 1e6, width=32)),
)


@checked
@given(anything)
def test_a_sample_count_is_a_positive_whole_number_or_refused(n):
    try:
        count = sample_count(n)
    except FlowmatchError as exc:
        assert "number of samples must be a positive integer" in str(exc)
        assert isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1
    else:
        assert type(count) is int and count == n and count >= 1


@checked
@given(st.dictionaries(st.sampled_from(["nfe", "seed", "solver", "noise", "steps", "n", "label", "bogus"]), st.integers(0, 3), max_size=3))
def test_an_unknown_sample_option_is_refused_by_name(options):
    def generate(n, nfe=None, seed=0, *, solver=None, label=None):
        return n

    known = {"nfe", "seed", "solver", "label"}
    try:
        check_sample_options(generate, options, "Flow")
    except FlowmatchError as exc:
        unknown = [k for k in options if k not in known]
        assert unknown and all(repr(k) in str(exc) for k in unknown)
    else:
        assert set(options) <= known


@checked
@given(
    n=anything,
    strata=anything,
    distribution=st.sampled_from(["uniform", "logit-normal", "beta", "", "cosine"]),
    scale=st.one_of(st.floats(allow_nan=True), st.integers(-3, 3)),
)
def test_training_times_lie_in_the_unit_interval_or_are_refused(n, strata, distribution, scale):
    if isinstance(n, int) and not isinstance(n, bool) and n > 10_000:
        n = 10_000  # a valid count too large to draw quickly is still a valid count
    try:
        t = sample_times(n, torch.Generator().manual_seed(0), distribution=distribution, strata=strata, scale=scale)
    except FlowmatchError:
        return
    assert t.shape == (n,) and bool(((t >= 0) & (t <= 1)).all())


@checked
@given(n=st.one_of(st.integers(-3, 300), anything), equal_share=st.one_of(st.floats(allow_nan=True), anything))
def test_meanflow_intervals_are_ordered_or_refused(n, equal_share):
    if isinstance(n, int) and not isinstance(n, bool) and n > 10_000:
        n = 10_000
    try:
        t, r = meanflow_times(n, torch.Generator().manual_seed(0), equal_share=equal_share)
    except FlowmatchError:
        return
    assert t.shape == r.shape == (n,) and bool(((r >= 0) & (r <= t) & (t <= 1)).all())


def _model(x, t):
    return x * t[:, None]


@checked
@given(
    rows=st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6)),
    dims=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    t_value=st.one_of(st.floats(-2, 3), st.just(math.nan)),
)
def test_the_flow_matching_loss_takes_matching_pairs_or_refuses(rows, dims, t_value):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(rows[0], dims[0], generator=g), torch.randn(rows[1], dims[1], generator=g)
    t = torch.full((rows[2],), t_value)
    try:
        loss = flow_matching_loss(_model, make_path("linear"), x0, x1, t)
    except FlowmatchError:
        return
    assert rows[0] == rows[1] == rows[2] >= 1 and dims[0] == dims[1] and 0 <= float(t[0]) <= 1  # as float32 holds it
    assert loss.ndim == 0 and math.isfinite(loss.item())


arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.complex64, np.uint8]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=None,
)


@checked
@given(values=arrays, dim=st.integers(1, 3), n=st.integers(1, 5))
def test_condition_rows_are_n_rows_of_the_condition_or_refused(values, dim, n):
    try:
        rows = condition_rows({"c": {"dim": dim}}, "c", values, n, "cpu")
    except FlowmatchError:
        return
    assert rows.shape == (n, dim) and rows.dtype == torch.float32 and bool(torch.isfinite(rows).all())


@checked
@given(values=arrays, classes=st.integers(2, 6), n=st.integers(1, 5))
def test_class_rows_are_n_whole_classes_or_refused(values, classes, n):
    try:
        rows = condition_rows({"y": {"classes": classes}}, "y", values, n, "cpu")
    except FlowmatchError:
        return
    assert rows.shape == (n,) and rows.dtype == torch.int64


@checked
@given(values=st.one_of(arrays, st.text(max_size=4), st.lists(st.integers(-2, 9), max_size=4)), vocab=st.integers(2, 8))
def test_token_ids_are_whole_numbers_in_the_vocabulary_or_refused(values, vocab):
    try:
        tokens = as_tokens(values, vocab)
    except FlowmatchError:
        return
    assert tokens.dtype == torch.int64 and (tokens.numel() == 0 or (0 <= int(tokens.min()) and int(tokens.max()) < vocab))
    assert np.array_equal(tokens.numpy(), np.asarray(values).astype(np.int64))  # the ids given, never rounded


finite = st.floats(-1e6, 1e6)


@checked
@given(
    mean=st.one_of(finite, st.floats()),
    std=st.one_of(st.floats(0, 1e6), st.floats()),
    low=finite,
    span=st.floats(0, 1e6),
    kind=st.sampled_from(["float", "int", "category", "text"]),
)
def test_a_table_codec_decodes_to_finite_values_or_is_refused(mean, std, low, span, kind):
    column = {"name": "v", "kind": kind, "missing": False, "categories": None, "mean": mean, "std": std, "low": low, "high": low + span}
    try:
        codec = TableCodec.from_dict({"format": "flowmatch.table_codec", "version": 1, "columns": [column]})
    except FlowmatchError:
        return
    frame = codec.decode(np.linspace(-5, 5, 11)[:, None], np.zeros((11, 0), dtype=np.int64))
    assert np.isfinite(frame["v"].to_numpy(dtype=np.float64)).all()


def test_the_properties_run_derandomized_with_a_bounded_number_of_examples():
    """What `make test` runs: EXAMPLES examples of each property above, the same on every run."""
    assert checked.derandomize and checked.max_examples == EXAMPLES
    assert len([name for name in globals() if name.startswith("test_")]) == 10


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])

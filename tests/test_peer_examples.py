"""bench.peer_examples: its score tells a wrong shape from a right one, and every example runs end to end at
its quickest settings. An example whose peer package is not installed (CI has no bench extras) is skipped,
naming the package; the ported rectified-flow recipe needs none, and the tables run flowmatch's side
without ForestFlow."""

import math

import numpy as np
import pytest
import torch

from bench import peer_examples as pe


def checkerboard_reference(n=400, k=2):
    torch.manual_seed(0)
    pool = pe.meta_checkerboard_draw(2 * n * k)
    return pe.Reference.chunks(pool, n, k, pe.meta_checkerboard_labels, np.full(8, 1 / 8))


def test_fresh_data_scores_near_the_floor_and_a_wrong_shape_does_not():
    ref = checkerboard_reference()
    torch.manual_seed(1)
    fresh = pe.meta_checkerboard_draw(ref.n * ref.k)
    good = pe.score(fresh, ref)
    assert 0.7 < good["w2"] < 1.4
    assert 0.6 < good["shape"] < 1.3
    # every square shrunk to 0.3 of its side about its centre: the right mode shares, the wrong shape in every mode
    centres = pe.META_SQUARES[pe.meta_checkerboard_labels(fresh)]
    squeezed = pe.score(centres + 0.3 * (fresh - centres), ref)
    assert squeezed["shape"] > 1.5 * good["shape"]
    assert squeezed["shares"] == pytest.approx(good["shares"])


def test_a_sample_count_that_does_not_fill_the_sets_is_refused():
    ref = checkerboard_reference()
    with pytest.raises(ValueError, match="samples"):
        pe.score(torch.zeros(ref.n * ref.k - 1, 2), ref)


def test_the_equal_time_run_is_made_only_where_the_times_differ():
    assert pe.equal_time_steps(1000, 10.0, 11.0) is None
    assert pe.equal_time_steps(1000, 10.0, 20.0) == 500
    assert pe.equal_time_steps(1000, 100.0, 1.0) == 4000  # at most EQUAL_TIME_MAX times the steps


@pytest.mark.parametrize("example", list(pe.EXAMPLES))
def test_each_example_runs_at_its_quickest_settings(example, tmp_path, monkeypatch):
    package = pe.missing_package(example)
    if package is not None and not pe.EXAMPLES[example].get("peer_optional"):
        pytest.skip(f"the peer of {example} needs the package {package} (the bench extra)")
    monkeypatch.setattr(pe, "RESULTS", tmp_path)
    out = pe.main(["--quick", "--examples", example, "--seeds", "0", "--jobs", "1", "--out", "quick"])
    assert (tmp_path / "quick.md").is_file() and (tmp_path / "quick.json").is_file()
    rows = out["runs"][0]["rows"]
    if example == "forestflow-tables":
        assert any(name.endswith("flowmatch defaults") for name in rows)
        assert all(math.isfinite(r["score"]["w_test"]) for r in rows.values())
        return
    assert set(rows) == {"peer", "flowmatch, equal steps", "flowmatch, equal time"}
    for r in rows.values():
        assert math.isfinite(r["score"]["w2"]) and r["train_s"] > 0
    assert rows["peer"]["probes"] and rows["flowmatch, equal steps"]["probes"]
    assert example in (tmp_path / "quick.md").read_text()

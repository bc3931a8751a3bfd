"""train / fit / load on a user's own objects: models, tensors, torch Datasets, DataLoaders, iterables,
paths, sources and conditions (flowmatch.modalities.points.inputs, flowmatch.data.streams, flowmatch.runs)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from user_objects import ConfigNet, ImageNet, ResMLP, alpha, sigma, uniform_source

import flowmatch
from flowmatch.data.streams import split_batch
from flowmatch.data.toy import sample_builtin
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.models.registry import from_factory
from flowmatch.paths.schedules import CustomSchedule

HERE = Path(__file__).parent
SMALL = dict(steps=30, progress=False, precision="fp32", batch_warmup=0)


def _points(n=1024, seed=0):
    return sample_builtin("two-gaussians", n, seed)


def _weights(flow):
    return {k: v.clone() for k, v in flow.model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_model_on_a_dataloader_is_saved_and_loaded_in_a_fresh_process(tmp_path):
    loader = DataLoader(TensorDataset(_points()), batch_size=128, shuffle=True)
    model = from_factory(ResMLP, dim=2, width=32)
    result, metrics = flowmatch.fit(out=tmp_path / "run", model=model, data=loader, reference=_points(1000, 1), steps=60, progress=False)
    assert metrics["w2"] > 0 and (tmp_path / "run" / "samples.png").is_file()
    expected = result.flow.sample(5, seed=3)
    code = f"import flowmatch, torch; f = flowmatch.load({str(tmp_path / 'run')!r}); print(type(f.model).__name__); torch.save(f.sample(5, seed=3), {str(tmp_path / 'x.pt')!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE)}, check=True
    )
    assert out.stdout.strip() == "ResMLP"
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True), expected)


def test_a_model_the_run_cannot_rebuild_loads_into_an_instance(tmp_path):
    flowmatch.train(model=ResMLP(width=16), data=_points(), run_dir=tmp_path / "run", **SMALL)
    with pytest.raises(FlowmatchError, match=r"load\(run, model="):
        flowmatch.load(tmp_path / "run")
    with pytest.warns(FlowmatchWarning, match="no checkpoint.safetensors"):  # train() writes training checkpoints only
        flow = flowmatch.load(tmp_path / "run", model=ResMLP(width=16))
    assert flow.sample(4).shape == (4, 2)
    with pytest.raises(FlowmatchError, match="weights do not match"):
        flowmatch.load(tmp_path / "run", model=ResMLP(width=8))


def test_a_model_with_to_config_and_from_config_is_rebuilt(tmp_path):
    result = flowmatch.train(model=ConfigNet(2, 24), data=_points(), run_dir=tmp_path / "run", **SMALL)
    result.flow.save_checkpoint(tmp_path / "run")
    flow = flowmatch.load(tmp_path / "run")
    assert isinstance(flow.model, ConfigNet) and flow.model.width == 24
    assert _same(_weights(flow), _weights(result.flow))


@pytest.mark.parametrize("kind", ["loader", "map"])
def test_resume_of_streamed_data_is_exact(tmp_path, kind):
    """15 steps, then resumed to 30, give the weights of 30 steps in one go (constant rate, no warm-up)."""
    x = _points(600)

    def data():
        if kind == "map":
            return TensorDataset(x)
        return DataLoader(TensorDataset(x), batch_size=64, shuffle=True)  # shuffles with torch's global generator

    options = dict(
        lr_schedule="constant", batch_size=64, checkpoint_every=5, evaluate=False, progress=False, precision="fp32", batch_warmup=0
    )
    torch.manual_seed(123)
    straight, _ = flowmatch.fit(out=tmp_path / "a", model=from_factory(ResMLP, width=16), data=data(), steps=30, **options)
    torch.manual_seed(123)
    flowmatch.fit(out=tmp_path / "b", model=from_factory(ResMLP, width=16), data=data(), steps=15, **options)
    torch.manual_seed(999)  # a fresh process's generator: the checkpoint's states take over
    resumed, _ = flowmatch.fit(out=tmp_path / "b", data=data(), steps=30, resume=True, **options)
    assert resumed.step == 30 and _same(_weights(straight.flow), _weights(resumed.flow))


def test_an_iterator_is_read_once_and_training_ends_with_it():
    x = _points(1000)
    result = flowmatch.train(data=(x[i : i + 100] for i in range(0, 1000, 100)), **{**SMALL, "steps": 50})
    assert result.step == 10 and result.data_exhausted


def test_batches_as_tensors_pairs_and_mappings():
    x, y = torch.randn(8, 3), torch.arange(8)
    assert split_batch(x)[1] == {}
    assert torch.equal(split_batch((x, y))[1]["y"], y)
    got, condition = split_batch({"x": x, "c": y.float()})
    assert torch.equal(got, x) and set(condition) == {"c"}
    for bad, message in [({"c": y}, "under 'x'"), ((x, y[:3]), "has 3 rows"), (y, "float tensor"), ((x, y, y), "cannot read")]:
        with pytest.raises(FlowmatchError, match=message):
            split_batch(bad)


def test_rows_keep_their_shape_for_the_model(tmp_path):
    images = torch.rand(200, 1, 4, 4) * 2 - 1
    result = flowmatch.train(model=ImageNet(), data=images, run_dir=tmp_path / "run", **SMALL)
    assert result.flow.shape == (1, 4, 4) and result.flow.sample(6).shape == (6, 16)
    result.flow.save_checkpoint(tmp_path / "run")
    assert flowmatch.load(tmp_path / "run", model=ImageNet()).shape == (1, 4, 4)


def test_a_custom_schedule_of_importable_functions_is_saved(tmp_path):
    result = flowmatch.train(
        data=TensorDataset(_points()), path=CustomSchedule(alpha, sigma), run_dir=tmp_path / "run", batch_size=64, **SMALL
    )
    result.flow.save_checkpoint(tmp_path / "run")
    flow = flowmatch.load(tmp_path / "run")
    t = torch.linspace(0, 1, 5)
    assert torch.equal(flow.path.schedule.alpha(t), t**2) and torch.equal(flow.path.schedule.d_sigma(t), -2 * t)
    assert torch.equal(flow.sample(8, seed=1), result.flow.sample(8, seed=1))


def test_a_schedule_that_cannot_be_named_is_refused_before_any_file(tmp_path):
    with pytest.raises(FlowmatchError, match="lambda"):
        flowmatch.train(data=_points(), path=CustomSchedule(lambda t: t, lambda t: 1 - t), run_dir=tmp_path / "run", **SMALL)
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())
    flowmatch.train(data=_points(), path=CustomSchedule(lambda t: t, lambda t: 1 - t), **SMALL)  # without a run folder it trains


@pytest.mark.parametrize("source", ["rows", "sampler"])
def test_a_source_given_in_python_is_saved_with_the_run(tmp_path, source):
    given = torch.rand(500, 2) * 2 - 1 if source == "rows" else uniform_source
    result = flowmatch.train(data=_points(), source=given, run_dir=tmp_path / "run", **SMALL)
    result.flow.save_checkpoint(tmp_path / "run")
    flow = flowmatch.load(tmp_path / "run")
    x0 = flow.draw_source(1000, torch.Generator().manual_seed(0))
    assert x0.abs().max() <= 1.0 and torch.equal(flow.sample(6, seed=2), result.flow.sample(6, seed=2))
    assert result.target == "conditional"  # the posterior needs a Gaussian (mixture) source


def test_float_conditions_drop_to_a_null_and_guide():
    c = torch.rand(1024, 1) * 2 - 1
    result = flowmatch.train(data={"x": _points() + torch.cat([3 * c, 0 * c], 1), "conditions": c}, **{**SMALL, "steps": 60})
    flow = result.flow
    assert flow.conditions == {"c": {"dim": 1}} and result.target == "conditional"
    plain = flow.sample(200, condition=torch.tensor([[0.5]]), seed=0)
    guided = flow.sample(200, condition=torch.tensor([[0.5]]), guidance=2.0, seed=0)
    assert plain.shape == guided.shape == (200, 2) and not torch.equal(plain, guided)
    with pytest.raises(FlowmatchError, match="rows of 1 values"):
        flow.sample(4, condition=torch.zeros(4, 2))
    with pytest.raises(FlowmatchError, match="no condition 'z'"):
        flow.sample(4, condition={"z": torch.zeros(4)})
    for bad in ([[math.inf]], [[math.nan]]):  # the CLI refuses them too; a NaN is the dropped condition's own marker
        with pytest.raises(FlowmatchError, match="condition 'c' holds NaN or infinite values"):
            flow.sample(4, condition=bad)
    with pytest.raises(FlowmatchError, match="condition 'c' takes numbers, got torch.bool"):
        flow.sample(4, condition=torch.ones(4, 1, dtype=torch.bool))


def test_a_model_that_cannot_take_a_dropped_condition_is_told_so():
    class Naive(torch.nn.Module):  # uses c as it comes, NaN included
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, t, c):
            t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
            return self.lin(torch.cat([x, t, c], 1))

    x = _points(256)
    batches = [{"x": x[i : i + 64], "c": torch.rand(64, 1)} for i in range(0, 256, 64)]
    with pytest.raises(FlowmatchError, match="learned null"):
        flowmatch.train(model=Naive(), data=batches, **SMALL)
    flowmatch.train(model=Naive(), data=batches, cond_dropout=0.0, **SMALL)


def test_bad_objects_get_one_clear_error():
    with pytest.raises(FlowmatchError, match="torch.nn.Module"):
        flowmatch.train(model=object(), **SMALL)
    with pytest.raises(FlowmatchError, match="pass model="):
        flowmatch.train(model="python", **SMALL)
    with pytest.raises(FlowmatchError, match="AffinePath"):
        flowmatch.train(path=3.0, **SMALL)
    with pytest.raises(FlowmatchError, match="keys x, labels and conditions"):
        flowmatch.train(data={"points": _points()}, **SMALL)
    with pytest.raises(FlowmatchError, match="conditions have 3 rows"):
        flowmatch.train(data={"x": _points(), "conditions": torch.zeros(3)}, **SMALL)
    with pytest.raises(FlowmatchError, match="yielded no batches"):
        flowmatch.train(data=[], **SMALL)


class ThreeOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 3)

    def forward(self, x, t):
        return self.layer(x)


class _Tuple(ThreeOut):
    def forward(self, x, t):
        return (x,)


class _Integer(ThreeOut):
    def forward(self, x, t):
        return x.long()


class _NoTime(ThreeOut):
    def forward(self, x):
        return x


class _OneRow(torch.nn.Module):
    """(1, D): it broadcasts against the batch, and would train without an error."""

    def __init__(self):
        super().__init__()
        self.v = torch.nn.Parameter(torch.zeros(1, 2))

    def forward(self, x, t):
        return self.v


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))

    def forward(self, x, t):
        return self.net(x)


@pytest.mark.parametrize(
    "model, words",
    [
        (
            ThreeOut(),
            r"the model \(ThreeOut\) must return velocities of the rows' shape \(2, 2\); model\(x of shape \(2, 2\), t of shape \(2,\)\) returned \(2, 3\)",
        ),
        (_Tuple(), r"the model \(_Tuple\) must return a tensor of velocities; .* returned a tuple"),
        (_Integer(), r"the model \(_Integer\) must return floating-point velocities; .* returned torch.int64"),
        (_NoTime(), r"the model \(_NoTime\) fails on a batch of the data, .*: TypeError: .*forward\(\) takes 2 positional arguments"),
        (_OneRow(), r"the model \(_OneRow\) must return velocities of the rows' shape \(2, 2\); .* returned \(1, 2\)"),
    ],
)
def test_a_user_model_that_does_not_fit_the_data_is_named_before_training(tmp_path, model, words):
    with pytest.raises(FlowmatchError, match=words):
        flowmatch.fit(out=tmp_path / "run", model=model, data=_points(), **SMALL)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_probe_of_a_user_model_leaves_it_as_it_was():
    model = _Counting().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flowmatch.train(model=model, data=_points(), **{**SMALL, "steps": 1})  # trains the model given, in place
    # one training step moved the weights and the running statistics once; the probe itself moved nothing:
    # the BatchNorm's counter counts the training step alone
    assert int(model.state_dict()["net.1.num_batches_tracked"]) == int(before["net.1.num_batches_tracked"]) + 1


def test_csv_condition_columns_train_and_sample_from_the_cli(tmp_path, capsys):
    import numpy as np
    from cli_checks import one_error_line

    from flowmatch.cli import main

    g = np.random.default_rng(0)
    c = g.uniform(-1, 1, 600)
    x = np.stack([3 * c + g.normal(size=600), g.normal(size=600)], 1)
    table = tmp_path / "table.csv"
    np.savetxt(table, np.column_stack([c, x]), delimiter=",", header="shift,a,b", comments="", fmt="%.6f")
    (tmp_path / "rows.csv").write_text("shift\n-1\n1\n")
    run = tmp_path / "run"
    common = ["--steps", "200", "--width", "32", "--depth", "2", "--quiet", "--no-eval", "--precision", "fp32"]
    assert main(["train", "--data", str(table), "--condition-columns", "shift", "--out", str(run), *common]) == 0
    flow = flowmatch.load(run)
    assert flow.dim == 2 and flow.conditions == {"c": {"dim": 1}} and flow.model.config["condition_dim"] == 1
    assert (
        main(["sample", "--run", str(run), "--condition", str(tmp_path / "rows.csv"), "-n", "500", "--out", str(tmp_path / "s.npy")]) == 0
    )
    low, high = np.load(tmp_path / "s.npy").reshape(2, 500, 2).mean(1)[:, 0]
    # closed form: E[a | c] = 3 c, so -3 and 3; 200 steps on 480 rows get within 1 (a model ignoring c: 0 and 0)
    assert abs(low + 3) < 1.0 and abs(high - 3) < 1.0
    one_error_line(
        capsys, main(["train", "--data", str(table), "--condition-columns", "dose", "--out", str(tmp_path / "r2"), *common]), "dose"
    )
    assert not (tmp_path / "r2").exists()
    (tmp_path / "bad.csv").write_text("shift\nx\n")
    one_error_line(
        capsys, main(["sample", "--run", str(run), "--condition", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "t.npy")]), "bad.csv"
    )


def test_several_named_conditions_reach_the_model_and_guide():
    class TwoConditions(torch.nn.Module):  # a user's model taking a float c and an integer label d
        num_classes = 3  # so that flowmatch may drop d to the null class 3

        def __init__(self):
            super().__init__()
            self.lin, self.emb = torch.nn.Linear(4, 2), torch.nn.Embedding(4, 2)
            self.null_c = torch.nn.Parameter(torch.zeros(1))
            self.seen: set = set()

        def forward(self, x, t, c, d):
            self.seen.add((c.shape[1:], d.dtype))
            c = torch.where(torch.isnan(c), self.null_c, c)
            t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
            return self.lin(torch.cat([x, t, c], 1)) + self.emb(d)

    x = _points(512)
    g = torch.Generator().manual_seed(0)
    batches = [
        {"x": x[i : i + 64], "c": torch.rand(64, 1, generator=g), "d": torch.randint(3, (64,), generator=g)} for i in range(0, 512, 64)
    ]
    model = TwoConditions()
    flow = flowmatch.train(model=model, data=batches, **SMALL).flow
    assert flow.conditions == {"c": {"dim": 1}, "d": {"classes": 3}} and model.seen == {((1,), torch.int64)}
    both = {"c": torch.tensor([[0.3]]), "d": torch.tensor([2])}
    plain, guided = flow.sample(50, condition=both, seed=0), flow.sample(50, condition=both, guidance=3.0, seed=0)
    assert torch.isfinite(guided).all() and not torch.equal(plain, guided)


def test_a_sorted_stream_trains_as_well_as_a_shuffled_one():
    """The training times come in strata of consecutive rows: a stream's rows are shuffled first, so that a row's
    time does not tell where it lies in the data. Moons in scikit-learn's unshuffled order (by moon, then angle),
    as TorchCFM's tutorial draws them: without the shuffle the sorted stream scores W2 0.48 against the
    shuffled one's 0.21 after 300 steps (seeds 0 and 1), with it 0.206 against 0.209 (0.209 against 0.206)."""
    from sklearn.datasets import make_moons

    from flowmatch.evaluation.metrics import w2_exact

    def moons(shuffle: bool):
        for k in range(10**6):
            yield torch.as_tensor(make_moons(256, shuffle=shuffle, noise=0.05, random_state=k)[0], dtype=torch.float32)

    held_out = torch.as_tensor(make_moons(2000, noise=0.05, random_state=10**7)[0], dtype=torch.float32)
    w2 = {}
    for shuffle in (False, True):
        flow = flowmatch.train(data=moons(shuffle), steps=300, progress=False, seed=0, threads=1).flow
        w2[shuffle] = w2_exact(flow.sample(2000, seed=1), held_out)
    assert w2[False] < 1.15 * w2[True], w2


def test_a_flow_made_by_hand_takes_a_path_name_and_a_source_as_a_callable_or_rows():
    from flowmatch import Flow
    from flowmatch.models.mlp import SeedMLP

    model = SeedMLP(2, width=16)
    torch.manual_seed(0)
    rows = torch.randn(64, 2) * 0.1 + 3.0
    by_dim = Flow(model, "linear", dim=2)
    by_callable = Flow(model, "cosine", source=lambda n, g: torch.randn(n, 2, generator=g) * 0.1 + 3.0)
    by_rows = Flow(model, source=rows)
    assert by_dim.source is None and by_callable.dim == by_rows.dim == 2
    # a flow whose model outputs zero moves nothing: the samples are the source's draws
    zero = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)

    class Still(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = zero

        def forward(self, x, t):
            return self.layer(x)

    still = Flow(Still(), "linear", source=rows)
    x = still.sample(200, solver="euler", nfe=4, seed=0)
    assert torch.equal(x, still.draw_source(200, torch.Generator().manual_seed(0)))  # rows of the source, untouched
    assert set(map(tuple, x.tolist())) <= set(map(tuple, rows.tolist()))
    for x in (by_dim.sample(5, seed=0), by_callable.sample(5, seed=0), by_rows.sample(5, seed=0)):
        assert x.shape == (5, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({}, "needs dim="),
        ({"dim": 0}, "needs dim="),
        ({"dim": 2, "path": "nope"}, "unknown path 'nope'"),
        ({"dim": 2, "path": 3}, "path must be a path name or an AffinePath"),
        ({"source": lambda n, g: torch.randn(n, 3, generator=g)}, r"the model fails on rows of 3 values"),
        ({"dim": 2, "source": torch.randn(10, 3)}, "the source has dimension 3, the data 2"),
    ],
)
def test_a_flow_made_by_hand_refuses_what_does_not_fit(kwargs, words):
    from flowmatch import Flow
    from flowmatch.models.mlp import SeedMLP

    with pytest.raises(FlowmatchError, match=words):
        Flow(SeedMLP(2, width=16), **kwargs)


def test_a_flow_made_by_hand_tries_its_model_once():
    from flowmatch import Flow

    with pytest.raises(FlowmatchError, match=r"must return velocities of the rows' shape \(2, 2\), got \(2, 3\)"):
        Flow(ThreeOut(), dim=2)
    with pytest.raises(FlowmatchError, match="Flow needs a torch.nn.Module"):
        Flow(lambda x, t: x, dim=2)


def test_test_fraction_zero_trains_on_every_row_and_is_measured_against_a_reference(tmp_path):
    """test_fraction=0 (with val_fraction=0) gives every row of an array to training; the run's measurements
    take reference= points, and an evaluation without them names what to pass. The option is refused
    where it cannot take effect: a built-in set (fresh held-out draws), a stream, a table run."""
    import flowmatch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g) * torch.tensor([2.0, 0.5])
    result, metrics = flowmatch.fit(data=x, steps=20, test_fraction=0, val_fraction=0, progress=False, out=tmp_path / "all")
    dataset = result.flow.dataset
    assert dataset.n_train == 300 and len(dataset.test) == 0 and metrics["w2"] is None and "reference=" in metrics["note"]
    assert flowmatch.load(tmp_path / "all").config["test_fraction"] == 0
    with pytest.raises(FlowmatchError, match="test_fraction 0.*pass reference="):
        flowmatch.evaluate(result.flow, quick=True)
    reference = torch.randn(400, 2, generator=g) * torch.tensor([2.0, 0.5])
    _, measured = flowmatch.fit(data=x, steps=20, test_fraction=0, progress=False, reference=reference)
    assert measured["w2"] is not None and measured["shape"]["kind"] == "energy" and measured["shape"]["sets"] == 3
    for bad, why in [
        ({"data": "moons"}, "built-in set 'moons' draws fresh held-out points"),
        ({"data": "iris", "kind": "table"}, "does not apply to a table run"),
        ({"data": iter([x[:64]] * 3)}, "a stream holds no rows out"),
    ]:
        with pytest.raises(FlowmatchError, match=why):
            flowmatch.train(steps=1, progress=False, test_fraction=0.0, **bad)
    with pytest.raises(FlowmatchError, match="test_fraction"):
        flowmatch.train(data=x, steps=1, progress=False, test_fraction=1.0)


def test_a_test_fraction_holds_that_share_of_a_files_rows_out(tmp_path):
    path = tmp_path / "rows.npy"
    np.save(path, np.random.default_rng(0).standard_normal((500, 3)))
    from flowmatch.data.dataset import load_dataset

    assert len(load_dataset(str(path), test_fraction=0.5).test) == 250
    assert len(load_dataset(str(path), test_fraction=0).test) == 0 and load_dataset(str(path), test_fraction=0).n_train == 500

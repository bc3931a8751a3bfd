"""Every feature of the engine, for every modality: one test per feature, parametrised over the registry
(flowmatch.config.MODALITIES), so that a modality that registers gets every test, and one without a spec here
fails the first. Tiny runs on small files of each kind: points (a CSV of numbers), a mixed table, a text, points
on the sphere (a latitude/longitude CSV)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import flowmatch
from flowmatch.cli import main
from flowmatch.config import MODALITIES
from flowmatch.engine.checkpoints import list_states
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.storage import read_json

KINDS = list(MODALITIES)

#: Each modality's tiny run: its sizes (the network's and the batch's) beside the engine's options.
SIZES = {
    "continuous": {"width": 16, "depth": 1, "batch_size": 32, "batch_warmup": 0},
    "table": {"width": 16, "depth": 1, "batch_size": 32},
    "tokens": {"width": 16, "depth": 1, "batch_size": 16, "seq_len": 16, "heads": 2, "warmup": 0},
    "manifold": {"width": 16, "depth": 1, "batch_size": 32, "warmup": 0},
}

WORDS = ["flow", "matching", "moves", "noise", "to", "data", "along", "straight", "paths", "."]


def _points_csv(path, n=300, labels=False, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    x = np.stack([g.normal(size=n) + 4 * y, g.normal(size=n)], 1)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], **({"cls": np.where(y, "right", "left")} if labels else {})})
    frame.to_csv(path, index=False)
    return path


def _table_csv(path, n=300, labels=False, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "size": g.normal(size=n) + 3 * y,
            "colour": np.where(g.random(n) < 0.8, np.where(y, "red", "blue"), "green"),
            **({"cls": np.where(y, "big", "small")} if labels else {}),
        }
    )
    frame.to_csv(path, index=False)
    return path


def _text(path, n=1500, seed=0):
    g = np.random.default_rng(seed)
    path.write_text(" ".join(g.choice(WORDS, n)))
    return path


def _texts_csv(path, seed=0):
    """Texts of two classes that share no letter: class 'ab' uses a and b, class 'xy' x and y."""
    g = np.random.default_rng(seed)
    rows = [("".join(g.choice(list("ab ") if k % 2 else list("xy "), 200)), "ab" if k % 2 else "xy") for k in range(40)]
    pd.DataFrame(rows, columns=["text", "cls"]).to_csv(path, index=False)
    return path


def _places_csv(path, n=300, labels=False, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    lat = np.clip(np.where(y, 50.0, -30.0) + 8 * g.normal(size=n), -89, 89)
    lon = np.where(y, 10.0, 120.0) + 8 * g.normal(size=n)
    frame = pd.DataFrame({"lat": lat, "lon": lon, **({"cls": np.where(y, "north", "south")} if labels else {})})
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix-data")
    return {
        "continuous": str(_points_csv(folder / "points.csv")),
        "table": str(_table_csv(folder / "table.csv")),
        "tokens": str(_text(folder / "text.txt")),
        "manifold": str(_places_csv(folder / "places.csv")),
        "continuous-labelled": str(_points_csv(folder / "points-l.csv", labels=True)),
        "table-labelled": str(_table_csv(folder / "table-l.csv", labels=True)),
        "tokens-labelled": str(_texts_csv(folder / "texts-l.csv")),
        "manifold-labelled": str(_places_csv(folder / "places-l.csv", labels=True)),
    }


def options(kind, files, **more):
    """A tiny run of ``kind`` on its small file, in fp32 (same bits on every machine) without the quick evaluation's cost."""
    return {"data": files[kind], "kind": kind, "precision": "fp32", "device": "cpu", **SIZES[kind], **more}


def weights(flow):
    return {k: v.clone() for k, v in flow.model.state_dict().items()}


def test_every_registered_modality_has_a_tiny_run_here():
    assert set(SIZES) == set(MODALITIES)


# -- checkpoints, resume, kills -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_periodic_checkpoints_are_written_and_the_newest_loads(kind, files, tmp_path):
    run = tmp_path / "run"
    flowmatch.fit(out=run, steps=20, checkpoint_every=5, keep_checkpoints=10, progress=False, evaluate=False, **options(kind, files))
    assert [p.name for p in list_states(run)] == [f"step-{s:08d}" for s in (0, 5, 10, 15, 20)]
    assert read_json(run / "config.json")["kind"] == kind
    (run / "checkpoint.safetensors").unlink()
    with pytest.warns(FlowmatchWarning, match="training checkpoint step 20"):
        assert flowmatch.load(run).kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_run_resumes_to_the_same_bits(kind, files, tmp_path):
    """SIGINT at step 12 (sent from a callback, in this process), then fit(resume=True): the final weights are
    bitwise those of an uninterrupted run."""
    common = {"steps": 24, "checkpoint_every": 4, **options(kind, files)}
    straight = flowmatch.fit(out=tmp_path / "a", progress=False, evaluate=False, **common)[0]

    def interrupt(step, flow, seconds):
        os.kill(os.getpid(), signal.SIGINT)

    stopped = flowmatch.train(run_dir=tmp_path / "b", progress=False, callback=interrupt, callback_steps=[12], **common)
    assert stopped.interrupted and stopped.step == 12
    resumed = flowmatch.fit(out=tmp_path / "b", resume=True, progress=False, evaluate=False)[0]
    assert resumed.step == 24
    a, b = weights(flowmatch.load(tmp_path / "a")), weights(flowmatch.load(tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(weights(straight.flow).values(), a.values()))


def _wait_for(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_after_a_checkpoint_leaves_a_run_that_loads_and_resumes(kind, files, tmp_path):
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options(kind, files).items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowmatch", "train", "--out", str(run), "--steps", "60", "--checkpoint-every", "2", "--keep-checkpoints",
         "100", "--quiet", "--no-eval", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(run / "checkpoints" / "step-00000010")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    with pytest.warns(FlowmatchWarning, match="no checkpoint.safetensors"):
        assert flowmatch.load(run).kind == kind
    result, metrics = flowmatch.fit(out=run, resume=True, progress=False, evaluate=False)
    assert result.step == 60 and metrics["steps_run"] == 60 and (run / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_torchrun_trains_data_parallel_as_one_process_with_the_doubled_batch(kind, files, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    run = tmp_path / "ddp"
    sizes = options(kind, files)
    batch = sizes.pop("batch_size")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--standalone", "-m", "flowmatch", "train", "--out", str(run), "--steps", "16",
         "--batch-size", str(batch // 2), "--no-eval", "--quiet", *flags],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1  # one writer
    assert json.loads((run / "distributed.json").read_text()) == {"world_size": 2, "max_weight_difference_across_ranks": 0.0}
    single = flowmatch.fit(out=tmp_path / "one", steps=16, batch_size=batch, progress=False, evaluate=False, **sizes)[0]
    a, b = weights(flowmatch.load(run)), weights(single.flow)
    for name in a:  # attention's key bias shifts every score of a query alike: its gradient is 0 but for rounding, which Adam
        if name.endswith("in_proj_bias"):  # scales up to steps of lr; it has no effect, so the query and value thirds are compared
            third = len(a[name]) // 3
            a[name], b[name] = torch.cat([a[name][:third], a[name][2 * third :]]), torch.cat([b[name][:third], b[name][2 * third :]])
    # the same global batches; only the order of floating-point sums differs (measured at most 1.2e-7 over 16 steps)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    if (run / "validation.csv").is_file() and (tmp_path / "one" / "validation.csv").is_file():  # the same held-out loss
        ours, theirs = (np.loadtxt(f / "validation.csv", delimiter=",", skiprows=1, ndmin=2) for f in (run, tmp_path / "one"))
        np.testing.assert_allclose(ours[-1, 1], theirs[-1, 1], rtol=1e-4)


# -- precision, EMA, validation, logging ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_takes_effect_and_is_recorded(kind, files):
    fp32 = flowmatch.train(steps=6, progress=False, **options(kind, files))
    bf16 = flowmatch.train(steps=6, progress=False, **{**options(kind, files), "precision": "bf16"})
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    a, b = weights(fp32.flow), weights(bf16.flow)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the network's matmuls ran in bfloat16


@pytest.mark.parametrize("kind", KINDS)
def test_ema_validation_selection_and_early_stop_share_their_keys(kind, files, tmp_path):
    run = tmp_path / "run"
    _, metrics = flowmatch.fit(
        out=run, steps=400, val_every=5, early_stop=20, lr=0.05, progress=False, evaluate=False, **options(kind, files)
    )
    v = metrics["validation"]
    assert set(v) == {"best_step", "best_loss", "select", "stopped_early"} and v["select"] == "val-loss"
    assert v["stopped_early"] and metrics["steps_run"] == v["best_step"] + 20 < 400
    log = np.loadtxt(run / "validation.csv", delimiter=",", skiprows=1)
    assert int(log[np.argmin(log[:, 1]), 0]) == v["best_step"]
    plain = flowmatch.train(steps=10, ema=0.0, progress=False, **options(kind, files))
    averaged = flowmatch.train(steps=10, ema=0.9, progress=False, **options(kind, files))
    assert any(not torch.equal(x, y) for x, y in zip(weights(plain.flow).values(), weights(averaged.flow).values()))


@pytest.mark.parametrize("kind", KINDS)
def test_log_every_and_sample_every_write_as_asked(kind, files, tmp_path):
    run = tmp_path / "run"
    flowmatch.fit(out=run, steps=12, log_every=4, sample_every=6, progress=False, evaluate=False, **options(kind, files))
    steps = np.loadtxt(run / "metrics.csv", delimiter=",", skiprows=1)[:, 0].astype(int).tolist()
    assert steps == [4, 8, 12]
    pictures = sorted(p.name for p in (run / "progress").iterdir())
    assert [name.split(".")[0] for name in pictures] == ["step-00000006", "step-00000012"]
    assert all((run / "progress" / name).stat().st_size > 100 for name in pictures)


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_loss_keeps_the_last_good_checkpoint(kind, files, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FlowmatchError, match="the loss is (nan|inf).*checkpoint") as caught:
        flowmatch.fit(
            out=run, steps=200, lr=1e12, grad_clip=0.0, checkpoint_every=1, progress=False, evaluate=False, **options(kind, files)
        )
    assert "keeps" in str(caught.value)
    with pytest.warns(FlowmatchWarning):
        flow = flowmatch.load(run)
    assert all(torch.isfinite(v).all() for v in flow.model.state_dict().values() if v.is_floating_point())


# -- one's own model and data ----------------------------------------------------------------------------------
class OwnTable(torch.nn.Module):
    """model(x, tokens, t) -> (velocity, logits) for the small table's 1 number and 1 column of 3 categories."""

    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(4, 8)
        self.net = torch.nn.Sequential(torch.nn.Linear(1 + 8 + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1 + 3))

    def forward(self, x, tokens, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        out = self.net(torch.cat([x, self.tokens(tokens[:, 0]), t], 1))
        return out[:, :1], out[:, None, 1:]


class OwnTokens(torch.nn.Module):
    """model(tokens, t) -> logits over V tokens at every position."""

    def __init__(self, states, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(states, 16)
        self.out = torch.nn.Linear(17, vocab)

    def forward(self, tokens, t):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1).expand(len(tokens), tokens.shape[1], 1)
        return self.out(torch.cat([self.embed(tokens), t], -1))


class OwnSphere(torch.nn.Module):
    """A velocity tangent to the sphere: the ambient output projected at x."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.SiLU(), torch.nn.Linear(32, 3))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)
        v = self.net(torch.cat([x, t], 1))
        return v - (v * x).sum(1, keepdim=True) * x


def _own(kind):
    """(data given in Python, the model, the kind's options): what a user brings for each modality."""
    g = np.random.default_rng(0)
    if kind == "continuous":
        return torch.randn(300, 2), flowmatch.models.MLP(2, width=16), {}
    if kind == "table":
        frame = pd.DataFrame({"size": g.normal(size=300), "colour": g.choice(["red", "green", "blue"], 300)})
        return frame, OwnTable(), {}
    if kind == "tokens":
        texts = [" ".join(g.choice(WORDS, 200)) for _ in range(10)]
        return texts, OwnTokens(states=len(set("".join(texts))) + 2, vocab=len(set("".join(texts)) | {"\n"})), {"seq_len": 16}
    x = g.normal(size=(300, 3)) + [0, 0, 2]
    return x / np.linalg.norm(x, axis=1, keepdims=True), OwnSphere(), {"manifold": "sphere"}


@pytest.mark.parametrize("kind", KINDS)
def test_your_own_data_object_and_model_train_by_kind(kind, tmp_path):
    data, model, more = _own(kind)
    run = tmp_path / "run"
    result, metrics = flowmatch.fit(
        data=data, model=model, kind=kind, steps=10, batch_size=16, out=run, progress=False, evaluate=False, precision="fp32", **more
    )
    assert result.config.kind == kind and result.config.data == "python" and result.config.model == "python"
    assert metrics["kind"] == kind and result.flow.kind == kind
    again = flowmatch.load(run, model=_own(kind)[1])  # one's own class, filled with the run's weights
    assert all(torch.equal(a, b) for a, b in zip(weights(again).values(), weights(result.flow).values()))


@pytest.mark.parametrize("kind", KINDS)
def test_data_objects_are_routed_by_kind(kind):
    """kind auto on objects: a DataFrame is a table, a list of strings is text, the rest points; with ``kind`` (and a
    manifold, for points on one) any kind takes its own objects."""
    data, _, more = _own(kind)
    if kind in ("continuous", "table", "tokens"):
        assert flowmatch.train(data=data, steps=2, batch_size=16, progress=False, **more).config.kind == kind
    assert flowmatch.train(data=data, kind=kind, steps=2, batch_size=16, progress=False, **more).flow.kind == kind


# -- memorisation, conditions, commands ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_finite_data_report_memorisation_with_its_warning(kind, files):
    _, metrics = flowmatch.fit(steps=20, progress=False, **options(kind, files))
    memo = metrics["memorisation"]
    assert isinstance(memo["warning"], str)
    assert memo["warning"] == ""  # 20 steps learn too little to copy anything


CONDITION = {
    "continuous": lambda s: float(np.mean(s[:, 0])),  # the class's mode: left or right
    "table": lambda frame: float(frame["size"].mean()),
    "tokens": lambda texts: sum("a" in t or "b" in t for t in texts) / len(texts),
    "manifold": lambda x: float(np.mean(x[:, 2])),  # north or south
}


def _read(kind, path):
    if kind == "table":
        return pd.read_csv(path)
    if kind == "tokens":
        return [t for t in path.read_text().split("--- sample") if t.strip()]
    return np.load(path)


@pytest.mark.parametrize("kind", KINDS)
def test_class_labels_condition_what_is_generated_and_guidance_applies(kind, files, tmp_path, capsys):
    """Train on labelled data from the CLI, sample each class with guidance: what is generated follows the label."""
    run = tmp_path / "run"
    sizes = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES[kind].items()]
    more = ["--lr", "0.01"] if kind != "tokens" else ["--lr", "0.005"]
    argv = ["train", "--data", files[f"{kind}-labelled"], "--kind", kind, "--conditional", "--label-column", "cls", "--out", str(run),
            "--steps", "300", "--quiet", "--no-eval", "--precision", "fp32", *sizes, *more]  # fmt: skip
    assert main(argv) == 0
    suffix = {"table": ".csv", "tokens": ".txt"}.get(kind, ".npy")
    figures = []
    for label in (0, 1):
        out = tmp_path / f"s{label}{suffix}"
        assert main(["sample", "--run", str(run), "-n", "60", "--label", str(label), "--guidance", "2", "--out", str(out)]) == 0
        figures.append(CONDITION[kind](_read(kind, out)))
    if kind == "table":
        frame = _read(kind, tmp_path / "s1.csv")
        assert set(frame["cls"]) == {"small"}  # the label column holds the requested class
    # class 0 and class 1 differ: classes sorted left < right, small < big, ab < xy, north < south
    assert abs(figures[0] - figures[1]) > {"continuous": 2.0, "table": 1.5, "tokens": 0.5, "manifold": 0.5}[kind], figures


@pytest.mark.parametrize("kind", KINDS)
def test_reflow_and_distill_work_or_are_refused_by_name(kind, files, tmp_path, capsys):
    run = tmp_path / "run"
    flowmatch.fit(out=run, steps=10, progress=False, evaluate=False, **options(kind, files))
    code = main(["distill", "--run", str(run), "--out", str(tmp_path / "student"), "--pairs", "64", "--steps", "5", "--quiet"])
    err = capsys.readouterr().err
    if kind == "continuous":
        assert code == 0
    else:
        assert code == 2 and "distill does not apply to" in err and err.count("\n") == 1


#: An option each modality does not read (another modality's, or one it cannot honour), with the words refusing it.
FOREIGN = {
    "continuous": ({"seq_len": 32}, "seq_len=32 does not apply to a continuous run"),
    "table": ({"coupling": "ot"}, "coupling='ot' does not apply to a table run"),
    "tokens": ({"path": "cosine"}, "path='cosine' does not apply to a tokens run"),
    "manifold": ({"missing": "refuse"}, "missing='refuse' does not apply to a manifold run"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_an_option_the_run_would_not_use_is_refused_before_any_work(kind, files, tmp_path):
    extra, words = FOREIGN[kind]
    with pytest.raises(FlowmatchError, match=words.replace("(", r"\(")):
        flowmatch.fit(out=tmp_path / "run", steps=5, progress=False, **options(kind, files), **extra)
    assert not (tmp_path / "run").exists()


def test_an_option_of_another_objective_is_refused(files, tmp_path):
    with pytest.raises(FlowmatchError, match="meanflow_power=0.25 applies to objective meanflow, not flow-matching"):
        flowmatch.fit(out=tmp_path / "run", steps=5, meanflow_power=0.25, progress=False, **options("continuous", files))
    with pytest.raises(FlowmatchError, match="distill_nfe=2 applies to objective distill"):
        flowmatch.train(steps=5, distill_nfe=2, progress=False, **options("continuous", files))

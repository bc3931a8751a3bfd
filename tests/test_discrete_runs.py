"""Discrete and mixed runs as users meet them: token data, the mixed network, and a mixed CSV and a text
file through train, sample, load and eval (flowmatch.data.tokens, flowmatch.models.mixed,
flowmatch.flows.discrete and .training, the CLI)."""

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line

import flowmatch
from flowmatch.cli import main
from flowmatch.config import TrainConfig, resolve_kind
from flowmatch.data.tokens import Vocabulary, load_tokens
from flowmatch.errors import FlowmatchError
from flowmatch.flows.discrete import DiscreteFlow
from flowmatch.models.mixed import NO_CATEGORY, MixedMLP
from flowmatch.models.registry import build_model, from_config, to_config
from flowmatch.storage import read_json


# -- token data ------------------------------------------------------------------------------------
def test_text_and_token_arrays_load_into_train_val_test(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 100
    (tmp_path / "a.txt").write_text(text)
    data = load_tokens(str(tmp_path / "a.txt"))
    assert data.vocab.size == len(set(text))
    assert len(data.train) + len(data.val) + len(data.test) == len(text)
    assert len(data.val) == len(data.test) == int(0.05 * len(text))
    assert data.vocab.decode(torch.cat([data.train, data.val, data.test])) == text  # contiguous, in order
    w = data.windows(5, 16, torch.Generator().manual_seed(0))
    assert w.shape == (5, 16) and w.max() < data.vocab.size
    assert data.chunks(16, "test").shape == (len(data.test) // 16, 16)
    ids = np.arange(3000) % 7
    np.save(tmp_path / "ids.npy", ids.reshape(30, 100))  # rows of sequences join into one stream
    arr = load_tokens(str(tmp_path / "ids.npy"))
    assert arr.vocab.size == 7 and arr.vocab.chars is None
    assert torch.equal(torch.cat([arr.train, arr.val, arr.test]), torch.from_numpy(ids))
    corpus = load_tokens("pydoc")
    assert len(corpus.train) > 400_000 and corpus.vocab.size > 90


@pytest.mark.parametrize(
    "write, needle",
    [
        (lambda p: p.with_suffix(".txt").write_bytes(b"fine line\n" * 500 + b"bad \xff byte\n"), "line 501 is not UTF-8"),
        (lambda p: p.with_suffix(".txt").write_text("aaaa" * 100), "distinct characters"),
        (lambda p: p.with_suffix(".txt").write_text("ab" * 100), "too few"),
        (lambda p: np.save(p.with_suffix(".npy"), -np.arange(5000)), ">= 0"),
        (lambda p: np.save(p.with_suffix(".npy"), np.ones(5000) * 0.5), "integer array"),
    ],
)
def test_bad_token_data_is_one_clear_error(tmp_path, write, needle):
    write(tmp_path / "data")
    name = next(str(p) for p in tmp_path.iterdir())
    with pytest.raises(FlowmatchError, match=needle):
        load_tokens(name)


def test_vocabulary_round_trip_and_unknown_characters():
    vocab = Vocabulary(3, list("abc"))
    assert vocab.decode(vocab.encode("cab")) == "cab"
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(FlowmatchError, match="outside the vocabulary"):
        vocab.encode("abz")


def test_kind_follows_the_data(tmp_path):
    (tmp_path / "t.txt").write_text("abc")
    np.savetxt(tmp_path / "n.csv", np.random.default_rng(0).normal(size=(10, 2)), delimiter=",", header="a,b", comments="")
    (tmp_path / "m.csv").write_text("a,b\n1.5,x\n2.5,y\n3.5,x\n4.5,y\n")
    (tmp_path / "e.csv").write_text("a,b\n1.5,2\n2.5,\n3.5,1\n4.5,0\n")
    kinds = {name: resolve_kind(TrainConfig(data=str(tmp_path / name))) for name in ("t.txt", "n.csv", "m.csv", "e.csv")}
    assert kinds == {"t.txt": "tokens", "n.csv": "continuous", "m.csv": "table", "e.csv": "table"}
    assert resolve_kind(TrainConfig(data="pydoc")) == "tokens"
    assert resolve_kind(TrainConfig(data="moons")) == "continuous"
    assert resolve_kind(TrainConfig(data=str(tmp_path / "m.csv"), kind="continuous")) == "continuous"


# -- the mixed network -----------------------------------------------------------------------------
def test_mixed_mlp_gives_a_velocity_and_per_column_logits():
    model = MixedMLP(3, [2, 5, 3], width=32, depth=2)
    x, tokens = torch.randn(7, 3), torch.tensor([[0, 4, 2], [5, 5, 5]] * 3 + [[1, 0, 0]])  # 5: the mask
    with torch.no_grad():
        v, logits = model(x, tokens, torch.rand(7))
    assert v.shape == (7, 3) and logits.shape == (7, 3, 5)
    assert (logits[:, 0, 2:] == NO_CATEGORY).all() and (logits[:, 2, 3:] == NO_CATEGORY).all()
    assert (logits[:, 1] > NO_CATEGORY).all()
    probs = torch.softmax(logits, -1)
    assert float(probs[:, 0, 2:].max()) == 0.0  # a category a column lacks has no probability at all
    rebuilt = from_config(to_config(model), 3)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x, tokens, 0.5)[1], model(x, tokens, 0.5)[1], rtol=0, atol=0)
    with pytest.raises(FlowmatchError, match="mixed-mlp sizes"):
        build_model("mixed-mlp", 2, vocab_sizes=[])


# -- a mixed CSV through the CLI and Python ------------------------------------------------------
def _mixed_csv(path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])
    x = np.where(colour == "red", 1.0, np.where(colour == "green", -1.0, 3.0)) + 0.3 * rng.standard_normal(n)
    frame = pd.DataFrame({"x": x.round(3), "count": rng.poisson(np.where(colour == "blue", 6, 2)), "colour": colour})
    frame.loc[rng.random(n) < 0.05, "x"] = np.nan
    frame["colour"] = frame["colour"].where(rng.random(n) > 0.05, None)
    frame.to_csv(path, index=False)
    return frame


def test_a_mixed_csv_trains_samples_loads_and_evaluates(tmp_path, capsys):
    data, run = tmp_path / "mixed.csv", tmp_path / "run"
    _mixed_csv(data)
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "150", "--quiet"]) == 0
    assert "mean W1" in capsys.readouterr().out
    for name in ("config.json", "checkpoint.safetensors", "checkpoint.json", "metrics.json", "report.json", "samples.csv", "samples.png"):
        assert (run / name).is_file(), name
    flow = flowmatch.load(run)
    assert isinstance(flow, DiscreteFlow) and flow.kind == "table" and flow.config["kind"] == "table"
    rows = flow.sample(300, seed=1)
    assert list(rows.columns) == ["x", "count", "colour"]
    assert rows["count"].dtype == np.int64 and rows["x"].dtype == np.float64
    assert set(rows["colour"].dropna()) <= {"red", "green", "blue"}
    assert rows["x"].isna().any() and rows["colour"].isna().any()  # missing cells modelled: some come back missing
    out = tmp_path / "rows.csv"
    assert main(["sample", "--run", str(run), "-n", "50", "--out", str(out), "--seed", "2"]) == 0
    back = pd.read_csv(out)
    assert list(back.columns) == ["x", "count", "colour"] and len(back) == 50
    assert main(["eval", "--run", str(run), "--quick", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "TSTR" in printed and "copy share" in printed
    report = read_json(run / "report.json")
    assert report["kind"] == "table" and set(report["marginals"]["columns"]) == {"x", "count", "colour"}
    assert main(["plot", "--run", str(run), "--what", "samples", "-n", "200", "--out", str(tmp_path / "cols.png"), "--quiet"]) == 0
    assert (tmp_path / "cols.png").stat().st_size > 1000
    one_error_line(
        capsys, main(["plot", "--run", str(run), "--what", "density", "--out", str(tmp_path / "d.png")]), "draws samples, not density"
    )
    assert flowmatch.evaluate(flow, quick=True)["kind"] == "table"
    for bad, needle in (
        (["--out", str(tmp_path / "r.npy")], "writes .csv"),
        (["--out", str(out), "--solver", "rk4", "--force"], "--solver rk4 does not apply to a table run"),
    ):
        code = main(["sample", "--run", str(run), *bad])
        one_error_line(capsys, code, needle)


def test_missing_cells_can_be_refused_and_bad_tables_are_one_line(tmp_path, capsys):
    data = tmp_path / "mixed.csv"
    _mixed_csv(data)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--missing", "refuse", "--steps", "5", "--quiet"])
    one_error_line(capsys, code, "column 'x'", "missing cells")
    (tmp_path / "ids.csv").write_text("id,v\n" + "".join(f"user{i},{i % 3}\n" for i in range(10_000)))
    code = main(["train", "--data", str(tmp_path / "ids.csv"), "--out", str(tmp_path / "r"), "--steps", "5", "--quiet"])
    one_error_line(capsys, code, "column 'id'", "10000 distinct values")
    (tmp_path / "short.csv").write_text("a,b\nx,1\ny,2\nz\nx,3\ny,4\n")
    code = main(["train", "--data", str(tmp_path / "short.csv"), "--out", str(tmp_path / "r"), "--steps", "5", "--quiet"])
    one_error_line(capsys, code, "line 4 has 1 fields")
    (tmp_path / "empty.csv").write_text("a,b,c\nx,1,\ny,2,\nz,3,\nx,4,\n")
    code = main(["train", "--data", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "r"), "--steps", "5", "--quiet"])
    one_error_line(capsys, code, "column 'c' is empty")
    (tmp_path / "latin.csv").write_bytes(b"a,b\nx,1\ny,2\nz,3\nca\xe9,4\n")
    code = main(["train", "--data", str(tmp_path / "latin.csv"), "--out", str(tmp_path / "r"), "--steps", "5", "--quiet"])
    one_error_line(capsys, code, "line 5 is not UTF-8")
    assert not (tmp_path / "r").exists()


def test_fit_in_python_takes_a_table_and_picks_its_network(tmp_path):
    data = tmp_path / "mixed.csv"
    _mixed_csv(data)
    result, metrics = flowmatch.fit(data=str(data), steps=40, out=tmp_path / "run", progress=False)
    assert metrics["kind"] == "table" and result.config.model == "mixed-mlp" and result.step == 40
    assert flowmatch.load(tmp_path / "run").model.config["vocab_sizes"] == result.flow.model.config["vocab_sizes"]


# -- text through the CLI --------------------------------------------------------------------------
def test_a_text_file_trains_samples_text_and_reports_bits_per_character(tmp_path, capsys):
    words = ["flow", "matching", "moves", "noise", "to", "data", "along", "paths", "."]
    rng = np.random.default_rng(0)
    (tmp_path / "text.txt").write_text(" ".join(rng.choice(words, 3000)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "text.txt"), "--out", str(run), "--steps", "60", "--seq-len", "32", "--width", "32",
                 "--depth", "1", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "bits per token (bound)" in printed and "5-gram" in printed
    flow = flowmatch.load(run)
    assert flow.kind == "tokens" and flow.length == 32
    out = tmp_path / "samples.txt"
    assert main(["sample", "--run", str(run), "-n", "4", "--out", str(out), "--nfe", "8", "--corrector", "1.0"]) == 0
    written = out.read_text()
    assert written.count("--- sample") == 4 and set(written) <= set("".join(words) + " \n-0123456789")
    assert main(["sample", "--run", str(run), "-n", "3", "--out", str(tmp_path / "ids.npy"), "--nfe", "8"]) == 0
    assert np.load(tmp_path / "ids.npy").shape == (3, 32)
    assert main(["eval", "--run", str(run), "--quick", "--quiet", "--nfe", "8"]) == 0
    report = read_json(run / "report.json")
    # a character model is at most log2(V) bits from the start; the 5-gram model of this text is far below it
    assert 0 < report["bits_per_token"]["ngram_model"] < np.log2(flow.path.vocab_size)
    assert set(report["ngram"]["orders"]) == {"1", "2", "3", "4"}
    assert main(["train", "--resume", str(run), "--steps", "80", "--quiet"]) == 0  # the one engine resumes every kind
    assert read_json(run / "metrics.json")["steps_run"] == 80 and flowmatch.load(run).kind == "tokens"

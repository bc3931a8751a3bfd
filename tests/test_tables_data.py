"""Mixed-type tables: reading and checking CSV files, and the codec to (features, tokens) and back."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from flowmatch.data.tables import Column, TableCodec, read_table, write_table
from flowmatch.errors import FlowmatchError


def mixed_frame(n: int = 50, seed: int = 0) -> pd.DataFrame:
    """A table with a float, an int, a category column, and missing cells in some of them."""
    rng = np.random.default_rng(seed)
    height = rng.normal(170.0, 10.0, n)
    height[[3, 7]] = np.nan
    count = rng.integers(-5, 20, n)
    age_missing = np.zeros(n, dtype=bool)
    age_missing[[1, 4]] = True
    colours = rng.choice(["red", "green", "blue, dark"], n).tolist()
    colours[2] = None
    return pd.DataFrame(
        {
            "height": height,
            "count": count,
            "age": pd.arrays.IntegerArray(rng.integers(18, 90, n), age_missing),
            "colour": pd.Series(colours),
            "city": pd.Series(rng.choice(["Oslo", "Lima"], n).tolist()),
        }
    )


def write(tmp_path, text: str | bytes, name: str = "t.csv") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        assert a[name].dtype == b[name].dtype, name
        assert (a[name].isna().to_numpy() == b[name].isna().to_numpy()).all(), name
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)


# --- reading ---------------------------------------------------------------------------------------


def test_read_table_kinds_and_missing_cells(tmp_path):
    path = write(tmp_path, 'x,n,c,flag\n1.5,1,a,True\n,2,"b, c",False\n2.5,,a,True\n3,4,,False\n')
    frame = read_table(path)
    assert frame["x"].dtype == np.float64 and np.isnan(frame["x"][1])
    assert str(frame["n"].dtype) == "Int64" and frame["n"].isna().tolist() == [False, False, True, False]
    assert frame["c"].tolist()[:3] == ["a", "b, c", "a"] and frame["c"].isna().tolist() == [False, False, False, True]
    assert frame["flag"].tolist() == ["True", "False", "True", "False"]  # kept as the strings in the file
    codec = TableCodec.fit(frame)
    assert [c.kind for c in codec.columns] == ["float", "int", "category", "category"]
    assert codec.numeric_columns == ["x", "n"]
    assert codec.token_columns == ["x (missing)", "n (missing)", "c", "flag"]
    assert codec.vocab_sizes == [2, 2, 3, 2]
    assert codec.dim == 2


def test_read_table_without_missing_cells_gives_int64(tmp_path):
    frame = read_table(write(tmp_path, "a,b\n1,x\n2,y\n3,x\n4,y\n\n"))  # a blank last line is skipped
    assert frame["a"].dtype == np.int64 and frame["a"].tolist() == [1, 2, 3, 4]
    assert len(frame) == 4


def test_write_and_read_round_trip(tmp_path):
    frame = mixed_frame()
    path = str(tmp_path / "sub" / "out.csv")
    write_table(frame, path)
    text = (tmp_path / "sub" / "out.csv").read_text(encoding="utf-8")
    assert ".0," not in text.splitlines()[1].split(",", 2)[2]  # ints are written without ".0"
    assert_same_table(read_table(path), frame)


@pytest.mark.parametrize(
    "text, words",
    [
        ("a,b\n1,2\n3,4,5\n5,6\n7,8\n", ["line 3", "3 fields", "header has 2"]),
        ("a,b\n1,2\n3\n5,6\n7,8\n", ["line 3", "1 fields", "header has 2"]),
        ("a,b\n1,\n3,\n5,\n7,\n", ["column 'b'", "empty"]),
        ("a,a\n1,2\n3,4\n5,6\n7,8\n", ["'a'", "twice"]),
        ("a,\n1,2\n3,4\n5,6\n7,8\n", ["column 2", "no name"]),
        ("a,b\n1,2\n3,4\n5,6\n", ["3 data rows", "at least 4"]),
        ("", ["no columns"]),
        ("a,b\n1,2\n3,inf\n5,6\n7,8\n", ["column 'b'", "line 3", "inf"]),
    ],
)
def test_read_table_refuses_bad_files(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(FlowmatchError) as info:
        read_table(path)
    message = str(info.value)
    assert path in message and "\n" not in message
    for word in words:
        assert word in message


def test_read_table_refuses_non_utf8(tmp_path):
    path = write(tmp_path, b"a,b\n1,2\n3,x\xff\n5,6\n7,8\n")
    with pytest.raises(FlowmatchError, match=r"line 3 is not UTF-8 \(byte 0xff at column 4\)"):
        read_table(path)


def test_read_table_refuses_unreadable_paths(tmp_path):
    with pytest.raises(FlowmatchError, match="cannot read"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(FlowmatchError, match="cannot read"):
        read_table(tmp_path)  # a folder
    if os.name == "posix" and os.geteuid() != 0:
        path = write(tmp_path, "a\n1\n2\n3\n4\n")
        os.chmod(path, 0)
        with pytest.raises(FlowmatchError, match="cannot read"):
            read_table(path)


def test_read_table_refuses_too_many_categories(tmp_path):
    rng = np.random.default_rng(1)
    lines = [f"id{i},{x:.3f}" for i, x in enumerate(rng.normal(size=10_000))]
    path = write(tmp_path, "user,x\n" + "\n".join(lines) + "\n")
    with pytest.raises(FlowmatchError, match=r"column 'user' has 10000 distinct values; .* at most 1000"):
        read_table(path)
    assert len(read_table(path, max_categories=10_000)) == 10_000


def test_read_table_missing_refuse(tmp_path):
    path = write(tmp_path, "a,b\n1,x\n2,y\n3,\n4,\n")
    assert read_table(path)["b"].isna().sum() == 2
    with pytest.raises(FlowmatchError, match=r"column 'b' has 2 missing cells \(first at line 4\)"):
        read_table(path, missing="refuse")
    with pytest.raises(FlowmatchError, match="missing="):
        read_table(path, missing="drop")


def test_na_words_are_missing_in_numeric_columns_only(tmp_path):
    frame = read_table(write(tmp_path, "a,b\n1,NA\n2,y\nNaN,z\n4,w\n"))
    assert str(frame["a"].dtype) == "Int64" and frame["a"].isna().tolist() == [False, False, True, False]
    assert frame["b"].tolist()[0] == "NA"


# --- the codec -------------------------------------------------------------------------------------


def test_codec_round_trip():
    frame = mixed_frame()
    codec = TableCodec.fit(frame)
    x, tokens = codec.encode(frame)
    assert x.dtype == np.float32 and x.shape == (50, 3)
    assert tokens.dtype == np.int64 and tokens.shape == (50, len(codec.vocab_sizes))
    assert codec.token_columns == ["height (missing)", "age (missing)", "colour", "city"]
    assert codec.vocab_sizes == [2, 2, 4, 2]
    assert np.allclose(x.mean(axis=0), 0, atol=1e-5)  # missing cells sit at the mean
    assert tokens[2, 2] == 3  # colour's missing category is the last one
    assert_same_table(codec.decode(x, tokens), frame)


def test_codec_round_trip_through_a_file(tmp_path):
    path = str(tmp_path / "t.csv")
    write_table(mixed_frame(seed=3), path)
    frame = read_table(path)
    codec = TableCodec.fit(frame)
    assert_same_table(codec.decode(*codec.encode(frame)), frame)


def test_codec_to_dict_from_dict_round_trip():
    frame = mixed_frame()
    codec = TableCodec.fit(frame)
    again = TableCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    assert again.columns == codec.columns
    x, tokens = codec.encode(frame)
    assert np.array_equal(again.encode(frame)[0], x)
    assert_same_table(again.decode(x, tokens), frame)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(columns=[]),
        lambda d: d["columns"][0].update(kind="text"),
        lambda d: d["columns"][0].update(std=0.0),
        lambda d: d["columns"][0].pop("mean"),
        lambda d: d["columns"][3].update(categories=["z", "a"]),
        lambda d: d["columns"][1].update(name="height"),
    ],
)
def test_from_dict_refuses_malformed(edit):
    d = TableCodec.fit(mixed_frame()).to_dict()
    edit(d)
    with pytest.raises(FlowmatchError):
        TableCodec.from_dict(d)


def test_decode_clips_ints_and_marks_missing():
    frame = pd.DataFrame({"n": [1, 5, 3, 2], "f": [0.0, 1.0, 2.0, 3.0]})
    codec = TableCodec.fit(frame)
    x = np.array([[100.0, 100.0], [-100.0, -100.0], [0.1, 0.0], [0.0, 0.0]], dtype=np.float32)
    out = codec.decode(x, np.zeros((4, 0), dtype=np.int64))
    assert out["n"].dtype == np.int64 and out["n"].tolist()[:2] == [5, 1]
    assert out["f"][0] > 3.0 and out["f"][1] < 0.0  # floats are not clipped
    masked = TableCodec.fit(pd.DataFrame({"n": pd.array([1, None, 3, 4], dtype="Int64")}))
    out = masked.decode(np.zeros((2, 1)), np.array([[0], [1]]))
    assert str(out["n"].dtype) == "Int64" and out["n"].isna().tolist() == [False, True]


def test_bool_columns_are_categories():
    frame = pd.DataFrame({"b": [True, False, True, True]})
    codec = TableCodec.fit(frame)
    assert codec.columns[0] == Column("b", "category", categories=["False", "True"])
    assert codec.decode(*codec.encode(frame))["b"].tolist() == ["True", "False", "True", "True"]


def test_encode_refuses_bad_frames():
    codec = TableCodec.fit(mixed_frame())
    frame = mixed_frame(seed=1)
    frame.loc[5, "city"] = "Paris"
    with pytest.raises(FlowmatchError, match=r"column 'city' has the value 'Paris' at row 5"):
        codec.encode(frame)
    frame = mixed_frame(seed=1)
    frame.loc[6, "count"] = np.nan
    with pytest.raises(FlowmatchError, match=r"column 'count' has a missing cell at row 6"):
        codec.encode(frame)
    with pytest.raises(FlowmatchError, match=r"lacks the column\(s\) 'city'"):
        codec.encode(mixed_frame().drop(columns="city"))


def test_fit_refuses_empty_column():
    with pytest.raises(FlowmatchError, match="column 'a' is empty"):
        TableCodec.fit(pd.DataFrame({"a": [np.nan] * 4, "b": [1.0, 2.0, 3.0, 4.0]}))

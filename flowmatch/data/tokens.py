"""Token sequences: text files (characters), tokenised integer arrays (.npy) and the built-in corpus.

A token data set is one long stream of integer tokens in {0, ..., V - 1}, cut into a training part
(the first 90%), a validation part (the next 5%) and a test part (the last 5%): contiguous pieces, so
held-out text is text the model never saw, not shuffled windows of it. Training draws windows of
``length`` tokens at random positions of the training part.

- **Text** (``.txt`` or the built-in ``pydoc``): characters are the tokens; the vocabulary is the
  sorted set of characters of the whole file (so held-out text has no unknown character).
- **Tokenised arrays** (``.npy``): a 1-D stream of non-negative integers, or a 2-D array of
  sequences (rows), which are joined into one stream in row order (a window may then span two rows).
  The vocabulary is {0, ..., max + 1 - 1}.
- **pydoc**: Python's own help topics (``pydoc_data.topics``, shipped with CPython, about 465,000
  characters of English prose and code), the topics in sorted order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowmatch.data.files import read_utf8
from flowmatch.errors import FlowmatchError

#: Built-in corpora by name.
CORPORA = ("pydoc",)


#: Shares of the stream kept for validation and test (each), at its end.
HELD_OUT = 0.05


@dataclass
class Vocabulary:
    """Tokens <-> text: ``chars[i]`` is token i (None: integer tokens with no text)."""

    size: int
    chars: list[str] | None = None

    def encode(self, text: str) -> np.ndarray:
        if self.chars is None:
            raise FlowmatchError("this vocabulary has integer tokens only; give token ids, not text")
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise FlowmatchError(f"text has characters outside the vocabulary: {''.join(unknown[:10])!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, tokens) -> str:
        tokens = np.asarray(tokens).reshape(-1)
        if self.chars is None:
            return " ".join(str(int(t)) for t in tokens)
        return "".join(self.chars[int(t)] for t in tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "chars": None if self.chars is None else "".join(self.chars)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Vocabulary:
        chars = values.get("chars")
        size = int(values["size"])
        if chars is not None and len(chars) != size:
            raise FlowmatchError(f"vocabulary of {size} tokens lists {len(chars)} characters")
        return cls(size, None if chars is None else list(chars))


@dataclass
class TokenData:
    """A token stream split into train / validation / test, with its vocabulary.

    Labelled text (texts of K classes) is one stream per class, each split alike, the splits' streams joined
    class after class: ``labels[split]`` holds each token's class and ``classes`` the class values; a window
    never spans two classes."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: Vocabulary
    labels: dict[str, torch.Tensor] | None = None
    classes: list[Any] | None = None

    def windows(self, n: int, length: int, generator: torch.Generator, split: str = "train") -> torch.Tensor:
        """n windows of ``length`` tokens at random positions of a split: (n, length) int64."""
        return self.labelled_windows(n, length, generator, split)[0]

    def labelled_windows(
        self, n: int, length: int, generator: torch.Generator, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n windows of ``length`` tokens at random positions of a split, (n, length) int64, and each one's class
        (n,) (None for text without labels)."""
        stream = getattr(self, split)
        if self.labels is None:
            if len(stream) < length:
                raise FlowmatchError(f"{self.name}: the {split} part has {len(stream)} tokens, fewer than the length {length}")
            start = torch.randint(len(stream) - length + 1, (n,), generator=generator)
            return stream[start[:, None] + torch.arange(length)], None
        starts = self._starts(split, length)
        start = starts[torch.randint(len(starts), (n,), generator=generator)]
        return stream[start[:, None] + torch.arange(length)], self.labels[split][start]

    def _starts(self, split: str, length: int) -> torch.Tensor:
        """The positions of a labelled split where a window of ``length`` tokens lies within one class."""
        cache = self.__dict__.setdefault("_window_starts", {})
        if (split, length) not in cache:
            assert self.labels is not None
            labels = self.labels[split]
            same = torch.ones(max(len(labels) - length + 1, 0), dtype=torch.bool)
            if len(same):
                same &= labels[: len(same)] == labels[length - 1 :]  # classes are contiguous blocks: both ends suffice
            starts = same.nonzero().squeeze(1)
            if not len(starts):
                raise FlowmatchError(f"{self.name}: no class's {split} part holds {length} tokens")
            cache[(split, length)] = starts
        return cache[(split, length)]

    def chunks(self, length: int, split: str = "test") -> torch.Tensor:
        """A split cut into consecutive windows of ``length`` tokens (the remainder dropped; labelled text: within each class)."""
        return self.labelled_chunks(length, split)[0]

    def labelled_chunks(self, length: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`chunks` and each one's class (None for text without labels)."""
        stream = getattr(self, split)
        if self.labels is None:
            k = len(stream) // length
            return stream[: k * length].reshape(k, length), None
        labels = self.labels[split]
        pieces, classes = [], []
        for c in labels.unique().tolist():
            part = stream[labels == c]
            k = len(part) // length
            pieces.append(part[: k * length].reshape(k, length))
            classes.append(torch.full((k,), c, dtype=torch.long))
        return torch.cat(pieces), torch.cat(classes)


def is_token_data(name: str) -> bool:
    """Whether ``name`` names token data by itself: a built-in corpus or a .txt file (a .csv of texts is a
    tokens run when asked for: ``kind="tokens"``)."""
    return name in CORPORA or os.fspath(name).lower().endswith(".txt")


def load_tokens(name: str, label_column: str = "") -> TokenData:
    """The token data set ``name``: a built-in corpus, a .txt file or a .npy array of token ids; or a .csv file of
    texts (one column, or one besides ``label_column``, whose values are the texts' classes)."""
    if name == "pydoc":
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        return _from_text(name, "\n".join(topics[k] for k in sorted(topics)))
    if not os.path.exists(name):
        raise FlowmatchError(f"{name}: no such file (token data are a .txt file, a .npy array of token ids, or: {', '.join(CORPORA)})")
    ext = os.path.splitext(name)[1].lower()
    if ext == ".txt":
        return _from_text(name, read_utf8(name))
    if ext == ".npy":
        return _from_ids(name, _read_ids(name))
    if ext == ".csv":
        return _csv_texts(name, label_column)
    raise FlowmatchError(f"{name}: token data must be a .txt file or a .npy array of token ids, not '{ext}'")


def tokens_from_python(data: Any) -> TokenData:
    """Token data given in Python: texts (a list of strings, joined by newlines into one stream of characters)
    or token ids (an integer tensor or array: a 1-D stream, or 2-D rows joined in row order); or a mapping
    ``{"x": texts, "labels": one class per text}`` (each class's texts one stream: :func:`labelled_texts`)."""
    name = "data from Python"
    if isinstance(data, dict):
        if set(data) != {"x", "labels"}:
            raise FlowmatchError(f"tokens given as a mapping take keys x (texts) and labels; got {', '.join(map(str, data))}")
        return labelled_texts(name, data["x"], data["labels"])
    if isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data):
        return _from_text(name, "\n".join(data))
    try:
        ids = np.asarray(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    except (TypeError, ValueError, RuntimeError):
        ids = np.asarray([], dtype=object)
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
        raise FlowmatchError(
            f"tokens given in Python are a list of strings or an integer array of token ids (1-D or 2-D), got "
            f"{type(data).__name__} of {ids.dtype} {ids.shape}"
        )
    if ids.size and ids.min() < 0:
        raise FlowmatchError(f"token ids must be >= 0, found {int(ids.min())}")
    return _from_ids(name, ids.reshape(-1).astype(np.int64))


def labelled_texts(name: str, texts: Any, labels: Any) -> TokenData:
    """Texts of classes: ``texts`` a list of strings, ``labels`` one class value per text (numbers or words). Each
    class's texts, joined by newlines, are one stream split as a text is (the first 90% for training, 5% for
    validation, 5% for testing); the vocabulary is every text's characters."""
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise FlowmatchError(f"{name}: labelled texts are a list of strings, got {type(texts).__name__}")
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(labels) != len(texts):
        raise FlowmatchError(f"{name}: {len(labels)} labels for {len(texts)} texts")
    if any(v is None or (isinstance(v, float) and v != v) for v in labels):
        raise FlowmatchError(f"{name}: a text has no label")
    classes = sorted(set(labels), key=lambda c: (isinstance(c, str), c if not isinstance(c, str) else 0, str(c)))
    if len(classes) < 2:
        raise FlowmatchError(f"{name}: labelled texts need at least 2 classes, got {len(classes)}")
    chars = sorted(set("".join(texts)) | {"\n"})
    vocab = Vocabulary(len(chars), chars)
    streams = [vocab.encode("\n".join(t for t, v in zip(texts, labels) if v == c)) for c in classes]
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    marks: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for k, (c, stream) in enumerate(zip(classes, streams)):
        held = int(len(stream) * HELD_OUT)
        if held < 64:
            raise FlowmatchError(
                f"{name}: class {c!r} has {len(stream)} characters; each class needs at least {int(np.ceil(64 / HELD_OUT))}"
            )
        ids = torch.from_numpy(stream)
        cut = len(stream) - 2 * held
        for split, piece in (("train", ids[:cut]), ("val", ids[cut : cut + held]), ("test", ids[cut + held :])):
            parts[split].append(piece)
            marks[split].append(torch.full((len(piece),), k, dtype=torch.long))
    joined = {split: torch.cat(pieces) for split, pieces in parts.items()}
    labels_of = {split: torch.cat(m) for split, m in marks.items()}
    values = [c.item() if hasattr(c, "item") else c for c in classes]
    return TokenData(name, joined["train"], joined["val"], joined["test"], vocab, labels=labels_of, classes=values)


def _read_ids(path: str) -> np.ndarray:
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FlowmatchError(f"{path}: cannot read a token array ({exc})") from None
    if not isinstance(ids, np.ndarray):  # a zip archive (an .npz, a torch.save file) under a .npy name
        ids.close()
        raise FlowmatchError(f"{path}: not a .npy array of token ids (the file is a zip archive)")
    if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
        raise FlowmatchError(f"{path}: token ids must be a 1-D or 2-D integer array, got {ids.dtype} of shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise FlowmatchError(f"{path}: token ids must be >= 0, found {int(ids.min())}")
    return ids.reshape(-1).astype(np.int64)


def _csv_texts(path: str, label_column: str) -> TokenData:
    """The texts of a CSV file: its one column of text (besides the label column, whose values are their classes)."""
    from flowmatch.data.tables import read_table, table_conditions

    frame = read_table(path, max_categories=2**62)
    rest, rows, given = table_conditions(path, frame, label_column, "")
    if rest.shape[1] != 1:
        raise FlowmatchError(
            f"{path}: a tokens run reads one column of texts{' besides the label column' if label_column else ''}; "
            f"the file has {rest.shape[1]} ({', '.join(map(str, rest.columns))})"
        )
    texts = ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in rest.iloc[:, 0].tolist()]
    if not label_column:
        return _from_text(path, "\n".join(texts))
    return labelled_texts(path, texts, [given["classes"][k] for k in rows["y"]])


def _from_text(name: str, text: str) -> TokenData:
    chars = sorted(set(text))
    if len(chars) < 2:
        raise FlowmatchError(f"{name}: needs at least 2 distinct characters, found {len(chars)}")
    vocab = Vocabulary(len(chars), chars)
    return _split(name, vocab.encode(text), vocab)


#: The largest vocabulary of token ids (max id + 1): its embedding and output layer are allocated whole.
MAX_VOCAB = 1_000_000


def _from_ids(name: str, ids: np.ndarray) -> TokenData:
    size = int(ids.max()) + 1 if ids.size else 0
    if size > MAX_VOCAB:
        raise FlowmatchError(
            f"{name}: token ids go up to {size - 1}, a vocabulary of {size:,} (at most {MAX_VOCAB:,}); number the ids used "
            "from 0 (numpy.unique(ids, return_inverse=True)[1])"
        )
    if size < 2:
        raise FlowmatchError(f"{name}: needs at least 2 distinct token ids")
    return _split(name, ids, Vocabulary(size))


def _split(name: str, stream: np.ndarray, vocab: Vocabulary) -> TokenData:
    held = int(len(stream) * HELD_OUT)
    if held < 64:
        raise FlowmatchError(f"{name}: {len(stream)} tokens are too few; need at least {int(np.ceil(64 / HELD_OUT))} for held-out parts")
    ids = torch.from_numpy(stream)
    cut = len(stream) - 2 * held
    return TokenData(name, ids[:cut], ids[cut : cut + held], ids[cut + held :], vocab)

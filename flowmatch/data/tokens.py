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
    """A token stream split into train / validation / test, with its vocabulary."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab: Vocabulary

    def windows(self, n: int, length: int, generator: torch.Generator, split: str = "train") -> torch.Tensor:
        """n windows of ``length`` tokens at random positions of a split: (n, length) int64."""
        stream = getattr(self, split)
        if len(stream) < length:
            raise FlowmatchError(f"{self.name}: the {split} part has {len(stream)} tokens, fewer than the length {length}")
        start = torch.randint(len(stream) - length + 1, (n,), generator=generator)
        return stream[start[:, None] + torch.arange(length)]

    def chunks(self, length: int, split: str = "test") -> torch.Tensor:
        """A split cut into consecutive windows of ``length`` tokens (the remainder dropped)."""
        stream = getattr(self, split)
        k = len(stream) // length
        return stream[: k * length].reshape(k, length)


def is_token_data(name: str) -> bool:
    """Whether ``name`` names token data by itself: a built-in corpus or a .txt file."""
    return name in CORPORA or os.fspath(name).lower().endswith(".txt")


def load_tokens(name: str) -> TokenData:
    """The token data set ``name``: a built-in corpus, a .txt file or a .npy array of token ids."""
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
    raise FlowmatchError(f"{name}: token data must be a .txt file or a .npy array of token ids, not '{ext}'")


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


def _from_text(name: str, text: str) -> TokenData:
    chars = sorted(set(text))
    if len(chars) < 2:
        raise FlowmatchError(f"{name}: needs at least 2 distinct characters, found {len(chars)}")
    vocab = Vocabulary(len(chars), chars)
    return _split(name, vocab.encode(text), vocab)


def _from_ids(name: str, ids: np.ndarray) -> TokenData:
    size = int(ids.max()) + 1 if ids.size else 0
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

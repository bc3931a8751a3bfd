"""What every flow's ``sample`` checks of its arguments before any work: the number of samples, and options its
``generate`` does not take (a ``noise=`` given to a flow on a manifold, a ``solver=`` given to a token flow), each
refused with one :class:`~flowmatch.errors.FlowmatchError` that names it and what the flow takes instead."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any

from flowmatch.errors import FlowmatchError


def sample_count(n: Any) -> int:
    """``n`` as a Python int when it is a positive whole number (a numpy integer too); refused otherwise."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise FlowmatchError(f"number of samples must be a positive integer, got {n!r}")
    return int(n)


def check_sample_options(generate: Callable[..., Any], options: dict[str, Any], flow: str) -> None:
    """Refuse keyword ``options`` that ``generate`` (a flow's bound method) does not take, naming them and the
    options it does take."""
    parameters = inspect.signature(generate).parameters
    unknown = [key for key in options if key not in parameters or key == "n"]
    if unknown:
        taken = [k for k, p in parameters.items() if k != "n" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise FlowmatchError(f"{flow}.sample() takes no option {', '.join(map(repr, unknown))}; its options are {', '.join(taken)}")

"""Importable references: how a run folder names a user's code (a model factory, a schedule's
functions, a source sampler) without pickling it.

A reference is ``"package.module:qualified.name"``. Saving one needs an object that a fresh process
can import by that name: a module-level function or class, not a lambda, a local function or
anything defined in the script being run (``__main__``). Loading imports the module, which runs its
code, as any import does; the weights themselves are read with safetensors and are never executed.
"""

from __future__ import annotations

import importlib
from typing import Any

from flowmatch.errors import FlowmatchError


def reference(obj: Any, what: str) -> str:
    """``"module:qualname"`` of ``obj``, checked to import back to the same object; ``what`` names it
    in the error raised when it cannot (a lambda, a local function, ``__main__``)."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not name or "<" in name:
        kind = (
            "a lambda"
            if name and name.endswith("<lambda>")
            else "a local function or object"
            if name
            else f"a {type(obj).__name__} instance"
        )
        raise FlowmatchError(f"{what} is {kind}, which a run folder cannot name: define it at the top level of an importable module")
    if module == "__main__":
        raise FlowmatchError(
            f"{what} {name} is defined in the script being run (__main__), which another process cannot import: "
            "move it to a module of its own and import it from there"
        )
    ref = f"{module}:{name}"
    try:
        found = resolve(ref, what)
    except FlowmatchError:
        found = None
    if found is not obj:
        raise FlowmatchError(f"{what} {ref} does not import back as itself: define it at the top level of module {module}")
    return ref


def resolve(ref: str, what: str) -> Any:
    """The object a :func:`reference` names (imports its module)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise FlowmatchError(f"{what}: {ref!r} is not a 'module:name' reference")
    module_name, qualname = ref.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FlowmatchError(f"{what} {ref}: cannot import module {module_name!r} ({exc}); is it on the Python path?") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FlowmatchError(f"{what} {ref}: module {module_name!r} has no {qualname!r}") from None
    return obj

"""Built-in models by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.models.mixed import MixedMLP
from flowmatch.models.mlp import MLP, SeedMLP
from flowmatch.models.tangent import TangentMLP
from flowmatch.models.transformer import TokenTransformer
from flowmatch.models.unet import UNet

MODELS = {
    "mlp": MLP,
    "seed-mlp": SeedMLP,
    "unet": UNet,
    "transformer": TokenTransformer,
    "mixed-mlp": MixedMLP,
    "tangent-mlp": TangentMLP,  # a velocity tangent to a manifold (kind manifold); dim = the points' coordinates
}


#: The config fields each built-in model reads (a run's own model, ``python``, reads none: its options are its
#: constructor's). Any other of them, set for a run, is refused (:func:`flowmatch.engine.seam.check_applicable`).
MODEL_OPTIONS: dict[str, frozenset[str]] = {
    "mlp": frozenset({"width", "depth", "activation", "dropout"}),
    "seed-mlp": frozenset({"width"}),
    "unet": frozenset({"channels", "channel_mult", "num_res_blocks", "attention", "dropout"}),
    "transformer": frozenset({"width", "depth", "heads"}),
    "mixed-mlp": frozenset({"width", "depth", "activation", "dropout"}),
    "tangent-mlp": frozenset({"width", "depth", "activation"}),
    "python": frozenset(),
}


def build_model(name: str, dim: int, **options) -> nn.Module:
    """A velocity model by name for data of dimension ``dim``; options are the class's arguments. Its size is
    counted first (:func:`parameter_count`, nothing allocated) and refused when it is more than the memory left."""
    if name not in MODELS:
        raise FlowmatchError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    count = parameter_count(name, dim, **options)
    if count is not None:
        from flowmatch.memory import require_memory

        require_memory(4 * count, f"a {name} model of {count:,} parameters", "choose a smaller width or depth")
    try:
        return MODELS[name](dim, **options)
    except TypeError as exc:
        raise FlowmatchError(f"bad options for model '{name}': {exc}") from None


#: Options that repeat a block: each one more adds the same number of parameters.
REPEATED = ("depth", "num_res_blocks")


def parameter_count(name: str, dim: int, **options) -> int | None:
    """The number of values (parameters and buffers) of built-in model ``name``, counted on the meta device, where
    nothing is allocated; a depth (or a UNet's blocks per level) past 2 is counted from depths 1 and 2, which the
    count grows by linearly, so that a depth of 10^9 is never looped over. None where it cannot be counted (bad
    options: building the model names them)."""
    import torch

    def count(**values) -> int:
        with torch.device("meta"):
            return sum(v.numel() for v in MODELS[name](dim, **{**options, **values}).state_dict().values())

    try:
        for key in REPEATED:
            depth = options.get(key)
            if isinstance(depth, int) and not isinstance(depth, bool) and depth > 2:
                one, two = count(**{key: 1}), count(**{key: 2})
                return one + (depth - 1) * (two - one)
        return count()
    except Exception:  # noqa: BLE001 bad options are named by the build itself
        return None


# -- any model: how a run folder rebuilds it -------------------------------------------------------
def from_factory(factory, /, **args) -> nn.Module:
    """``factory(**args)``, remembering both, so that a run trained on it records how to rebuild it:
    an importable factory (a class or a function, as an object or a ``"module:name"`` reference) and
    JSON arguments. ``flowmatch.load`` then calls the factory again and fills in the weights."""
    import json

    from flowmatch.imports import reference, resolve

    if isinstance(factory, str):
        factory = resolve(factory, "model factory")
    ref = reference(factory, "the model factory")
    try:
        args = json.loads(json.dumps(args))
    except (TypeError, ValueError) as exc:
        raise FlowmatchError(f"model factory {ref}: its arguments must be plain JSON values ({exc})") from None
    model = factory(**args)
    if not isinstance(model, nn.Module):
        raise FlowmatchError(f"model factory {ref} returned a {type(model).__name__}, not a torch.nn.Module")
    model._flowmatch_factory = {"factory": ref, "args": args}  # type: ignore[assignment]
    return model


def to_config(model: nn.Module) -> dict:
    """The JSON that rebuilds ``model`` (see :func:`from_config`):

    - a built-in model: its ``config`` ({"name": ..., options});
    - one made by :func:`from_factory`: {"factory": "module:name", "args": {...}};
    - a model whose class has ``to_config()`` and a classmethod ``from_config(config)``:
      {"factory": "module:Class.from_config", "args": {"config": model.to_config()}}.

    Any other model raises a :class:`FlowmatchError` that says so; its runs still save the weights,
    and ``flowmatch.load(run, model=instance)`` fills an instance of one's own.
    """
    from flowmatch.imports import reference

    recorded = getattr(model, "_flowmatch_factory", None)
    if recorded is not None:
        return dict(recorded)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("name") in MODELS and type(model) is MODELS[config["name"]]:
        return dict(config)
    if callable(getattr(model, "to_config", None)) and callable(getattr(type(model), "from_config", None)):
        ref = reference(type(model), "the model class")
        return {"factory": f"{ref}.from_config", "args": {"config": model.to_config()}}  # type: ignore[operator]
    raise FlowmatchError(
        f"flowmatch cannot rebuild a {type(model).__qualname__} by itself: build it with "
        "flowmatch.models.from_factory(YourClass, **args), or give the class to_config() and a classmethod from_config(config); "
        "or load the run with flowmatch.load(run, model=YourClass(...))"
    )


def model_record(model: nn.Module) -> dict:
    """What a checkpoint records of ``model``: :func:`to_config`, or for a model flowmatch cannot rebuild its
    class (``"rebuild": False``: loading it needs an instance, ``flowmatch.load(run, model=...)``)."""
    try:
        return to_config(model)
    except FlowmatchError:
        return {"class": f"{type(model).__module__}:{type(model).__qualname__}", "rebuild": False}


def check_rebuildable(spec: Any, model: nn.Module | None, where: Any) -> None:
    """Refuse to load a run whose model :func:`model_record` could only name (``"rebuild": False``) without an
    instance to fill (``model``)."""
    if model is None and isinstance(spec, dict) and spec.get("rebuild") is False:
        raise FlowmatchError(
            f"{where}: the run's model is a {spec.get('class')}, which flowmatch cannot rebuild by itself; "
            "pass one: flowmatch.load(run, model=YourModel(...))"
        )


def from_config(config: dict, dim: int) -> nn.Module:
    """The model :func:`to_config` describes (a built-in by name for data of dimension ``dim``)."""
    from flowmatch.imports import resolve

    config = dict(config)
    if "factory" in config:
        factory = resolve(config["factory"], "model factory")
        args = config.get("args") or {}
        model = factory(**args)
        if not isinstance(model, nn.Module):
            raise FlowmatchError(f"model factory {config['factory']} returned a {type(model).__name__}, not a torch.nn.Module")
        model._flowmatch_factory = {"factory": config["factory"], "args": args}  # type: ignore[assignment]
        return model
    return build_model(config.pop("name"), dim, **config)

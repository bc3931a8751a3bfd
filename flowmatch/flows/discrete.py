"""A trained discrete flow over token sequences, or a mixed one over table rows (continuous features and
categorical columns at one time t).

The network is the posterior model: ``model(tokens, t) -> logits`` (B, L, V) for token sequences
(``dim`` 0), or ``model(x, tokens, t) -> (velocity (B, D), logits (B, L, V))`` for mixed rows. The tokens
follow the mixture path of :class:`~flowmatch.discrete.paths.MixturePath`, the continuous features the
straight path x_t = t x1 + (1 - t) x0 from x0 ~ N(0, I) (velocity x1 - x0); both are sampled on one time
grid (:func:`~flowmatch.discrete.sampling.mixed_sample`).

**Likelihood bound** (masked source). For a sequence x1 of L tokens,

    -log p(x1) <= int_0^1 kappa'_t / (1 - kappa_t) E_{x_t ~ p_t(. | x1)} [ sum_{i: x_t^i = mask} -log p_{1|t}(x1^i | x_t) ] dt,

the continuous-time ELBO of the masked chain (Shi et al. 2024; Sahoo et al. 2024; it is the generalized
KL of :mod:`flowmatch.discrete.losses` integrated over t). :meth:`DiscreteFlow.nll_bound` estimates the
integral by Monte Carlo over stratified times, one x_t draw a time; in bits per token it is an upper
bound on the model's cross-entropy, comparable with an n-gram model's bits per character.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from flowmatch import conditions as conditions_module
from flowmatch.discrete.paths import MixturePath
from flowmatch.discrete.sampling import mixed_sample
from flowmatch.errors import FlowmatchError
from flowmatch.saving import load_weights
from flowmatch.solvers.integration import require_finite


class DiscreteFlow:
    """A posterior model with its mixture path, the sequence length (or number of token columns) and the
    codec between tokens and the user's data (a :class:`~flowmatch.data.tokens.Vocabulary` or a
    :class:`~flowmatch.data.tables.TableCodec`)."""

    def __init__(
        self, model: torch.nn.Module, path: MixturePath, *, length: int, dim: int = 0, codec: Any = None,
        config: dict[str, Any] | None = None, conditions: dict[str, dict[str, int]] | None = None, given: dict[str, Any] | None = None,
    ):  # fmt: skip
        if not isinstance(model, torch.nn.Module):
            raise FlowmatchError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(length, int) or length < 1 or not isinstance(dim, int) or dim < 0:
            raise FlowmatchError(f"length must be a positive integer and dim >= 0, got length={length!r}, dim={dim!r}")
        self.model, self.path, self.length, self.dim, self.codec = model, path, length, dim, codec
        self.config = dict(config or {})
        #: the conditions the model takes, by name: {"classes": K} for labels, {"dim": k} for float vectors
        self.conditions = dict(conditions) if conditions is not None else conditions_module.conditions_of(model)
        #: what the conditions are in the user's terms: a table's label column (its name and class values) and
        #: condition columns (names), which samples carry as columns; a text's class names
        self.given = dict(given or {})

    #: The jump steps of sampling unless told (tokens and tables alike).
    DEFAULT_NFE = 64

    @property
    def kind(self) -> str:
        """ "tokens" for sequences, "table" for mixed rows."""
        return "tokens" if self.dim == 0 and not hasattr(self.codec, "columns") else "table"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def positions(self) -> int:
        """Positions a network call handles per row: a sequence's length (a table's row is one)."""
        return self.length if self.kind == "tokens" else 1

    @property
    def num_classes(self) -> int:
        """Classes the model was trained to condition on (0: no class labels)."""
        return int(self.conditions.get("y", {}).get("classes", 0))

    def predict(
        self, x: torch.Tensor | None, tokens: torch.Tensor, t: torch.Tensor, **condition
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(velocity of x or None, posterior logits) at times t (batch,), under the model's ``condition``."""
        if self.kind == "tokens":
            return None, self.model(tokens, t, **condition)
        if x is None:  # a table of categorical columns only: no continuous features
            x = torch.zeros(len(tokens), 0, device=tokens.device)
        return self.model(x, tokens, t, **condition)

    def generate(
        self, n: int, *, nfe: int = DEFAULT_NFE, temperature: float = 1.0, corrector: float = 0.0, seed: int | None = None,
        progress: bool = False, batch_size: int = 1024, label=None, condition=None, guidance: float = 1.0, precision: str = "fp32",
    ) -> tuple[torch.Tensor | None, torch.Tensor]:  # fmt: skip
        """n draws at t = 1: (continuous features in model coordinates or None, tokens (n, length)), from the
        source (N(0, I) and the mixture path's source tokens) through ``nfe`` jump steps.

        ``label`` (one class or n) and ``condition`` (rows of the float condition ``c``: one or n) sample a
        conditional model; with classifier-free ``guidance`` weight w the posterior's logits are
        w l_cond + (1 - w) l_null and the velocity v_null + w (v_cond - v_null) (:func:`mixed_sample`).
        ``precision="bf16"`` runs the network under bfloat16 autocast (the jumps stay float64); ``"auto"`` in
        the precision the run trained in, as recorded (:func:`flowmatch.saving.recorded_precision`)."""
        from flowmatch.flows.options import sample_count

        n = sample_count(n)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FlowmatchError(f"batch_size must be a positive integer, got {batch_size!r}")
        from flowmatch.memory import require_memory

        # the samples (tokens int64 and features float32, twice: the parts and their concatenation) and the time grid
        require_memory(2 * n * (8 * self.length + 4 * self.dim), f"sampling {n} rows of {self.length} tokens", "ask for fewer")
        require_memory(16 * (nfe + 1), f"a time grid of {nfe} jump steps", "ask for fewer steps (nfe)")
        if precision == "auto":
            from flowmatch.saving import recorded_precision

            precision = recorded_precision(self.config)
        if precision not in ("fp32", "bf16"):
            raise FlowmatchError(f"unknown precision {precision!r}; choose from fp32, bf16, auto")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise FlowmatchError(f"guidance must be a finite number, got {guidance!r}")
        given = conditions_module.condition_for(self.conditions, n, label, condition, "cpu") or {}
        null = conditions_module.null_condition(self.conditions, given) if given and guidance != 1.0 else None
        if guidance != 1.0 and not given:
            raise FlowmatchError("guidance needs a condition to guide by: give label= or condition=")
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        xs: list[torch.Tensor] = []
        ts: list[torch.Tensor] = []
        device = self.device
        with torch.no_grad():
            for start in range(0, n, batch_size):
                m = min(batch_size, n - start)
                tokens0 = self.path.draw_source((m, self.length), generator)
                x0 = torch.randn(m, self.dim, generator=generator) if self.dim else None
                own = {k: v[start : start + m].to(device) for k, v in given.items()}

                def fn(x, tokens, t, chosen=own):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        v, logits = self.predict(None if x is None else x.to(device), tokens.to(device), t.to(device), **chosen)
                    return (None if v is None else v.float().cpu()), logits.float().cpu()

                null_fn = None
                if null is not None:
                    dropped = {k: v[start : start + m].to(device) for k, v in null.items()}
                    null_fn = lambda x, tokens, t, chosen=dropped: fn(x, tokens, t, chosen)  # noqa: E731
                x, tokens = mixed_sample(
                    fn, tokens0, self.path, x0=x0, nfe=nfe, temperature=temperature, generator=generator,
                    corrector=corrector, progress=progress, null_fn=null_fn, guidance=float(guidance),
                )  # fmt: skip
                if x is not None:
                    xs.append(x)
                ts.append(tokens)
        x_all, tokens_all = (None if self.dim == 0 else torch.cat(xs)), torch.cat(ts)
        if x_all is not None:
            require_finite(x_all, "the jump sampler", nfe)
        self._last_given = given  # what decode() writes as the samples' label and condition columns
        return x_all, tokens_all

    def sample(self, n: int, **options):
        """n samples in the user's terms: a list of strings (text), an (n, length) array (token ids) or a
        pandas DataFrame (a table, with its label and condition columns as asked); options as for :meth:`generate`."""
        from flowmatch.flows.options import check_sample_options

        check_sample_options(self.generate, options, type(self).__name__)
        x, tokens = self.generate(n, **options)
        return self.decode(x, tokens, getattr(self, "_last_given", None))

    def decode(self, x: torch.Tensor | None, tokens: torch.Tensor, given: dict[str, torch.Tensor] | None = None):
        """Samples in the user's terms (see :meth:`sample`); ``given``: the conditions they were drawn under
        (a table writes them as its label and condition columns)."""
        if self.kind == "table":  # x is None for a table of categorical columns only
            frame = self.codec.decode(np.zeros((len(tokens), 0)) if x is None else x.numpy(), tokens.numpy())
            return self._with_condition_columns(frame, given or {})
        if self.codec is not None and getattr(self.codec, "chars", None) is not None:
            return [self.codec.decode(row) for row in tokens.numpy()]
        return tokens.numpy()

    def _with_condition_columns(self, frame, given: dict[str, torch.Tensor]):
        """A table's samples with its label column (the class value of each row's label; missing where
        unconditional) and condition columns (the given values), in the table's own column order."""
        label = self.given.get("label_column")
        if label:
            values = self.given["classes"]
            y = given.get("y")
            frame[label] = [None] * len(frame) if y is None else [values[int(k)] for k in y.cpu()]
        names = self.given.get("condition_columns") or []
        c = given.get("c")
        for j, name in enumerate(names):
            frame[name] = np.nan if c is None else c[:, j].cpu().numpy().astype(np.float64)
        order = self.given.get("columns")
        return frame[[k for k in order if k in frame.columns]] if order else frame

    def nll_bound(self, tokens: torch.Tensor, *, times: int = 16, seed: int = 0, batch_size: int = 256, label=None) -> float:
        """The likelihood bound of the module docstring in nats per token, averaged over sequences
        ``tokens`` (n, length); ``times`` stratified Monte Carlo times per sequence. ``label`` (one class or
        one per sequence) scores a class-conditional model under those classes (None: unconditionally)."""
        if self.path.source != "mask":
            raise FlowmatchError("the likelihood bound is computed for the masked source; this flow has the uniform source")
        if self.dim:
            raise FlowmatchError("the likelihood bound applies to token sequences, not to mixed rows")
        tokens = as_tokens(tokens, self.path.vocab_size)  # whole numbers in the vocabulary, never cast
        if tokens.ndim != 2 or tokens.shape[1] != self.length or not len(tokens):
            raise FlowmatchError(f"tokens must have shape (n, {self.length}), got {tuple(tokens.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FlowmatchError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise FlowmatchError(f"times must be a positive integer, got {times!r}")
        given = conditions_module.condition_for(self.conditions, len(tokens), label, None, "cpu") or {}
        generator = torch.Generator().manual_seed(seed)
        total, device = 0.0, self.device
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                x1 = tokens[start : start + batch_size]
                own = {k: v[start : start + batch_size].to(device) for k, v in given.items()}
                for k in range(times):  # stratum k of [0, 1): one time per sequence in it
                    t = ((k + torch.rand(len(x1), generator=generator, dtype=torch.float64)) / times).clamp(max=1 - 1e-6)
                    x_t = self.path.corrupt(x1, t, generator)
                    logits = self.predict(None, x_t.to(device), t.float().to(device), **own)[1].float().cpu()
                    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x1, reduction="none")  # (n, L)
                    masked = x_t.eq(self.path.vocab_size).to(torch.float64)  # at the mask
                    weight = self.path.jump_rate(t)
                    total += float((weight * (masked * nll.double()).sum(1)).sum()) / times
        return total / tokens.numel()

    def bits_per_token(self, tokens: torch.Tensor, **options) -> float:
        """:meth:`nll_bound` in bits."""
        return self.nll_bound(tokens, **options) / math.log(2)

    def to(self, device) -> DiscreteFlow:
        self.model.to(device)
        return self

    # -- saving ------------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict[str, Any]:
        """What rebuilds this flow around its weights, as JSON (kind, model, path, length, dim, codec)."""
        from flowmatch.models.registry import model_record
        from flowmatch.saving import FORMAT_VERSION

        model = model_record(self.model)
        return {
            "format": "flowmatch-checkpoint",
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "model": model,
            "discrete_path": path_to_config(self.path),
            "length": self.length,
            "dim": self.dim,
            "codec": None if self.codec is None else self.codec.to_dict(),
            **({"conditions": self.conditions} if self.conditions != conditions_module.conditions_of(self.model) else {}),
            **({"given": self.given} if self.given else {}),
        }

    def save_checkpoint(self, folder) -> None:
        """Weights and metadata into ``folder`` (:func:`flowmatch.saving.save_flow`)."""
        from flowmatch.saving import save_flow

        save_flow(self, folder)


def path_to_config(path: MixturePath) -> dict[str, Any]:
    scheduler = path.scheduler
    out: dict[str, Any] = {"scheduler": scheduler.name, "vocab_size": path.vocab_size, "source": path.source}
    if hasattr(scheduler, "exponent"):
        out["exponent"] = scheduler.exponent
    return out


def path_from_config(values: dict[str, Any]) -> MixturePath:
    from flowmatch.discrete.schedulers import make_scheduler

    options = {"exponent": float(values["exponent"])} if "exponent" in values else {}
    return MixturePath(make_scheduler(values["scheduler"], **options), int(values["vocab_size"]), values["source"])


def codec_from_config(kind: str, values: dict[str, Any] | None):
    if values is None:
        return None
    if kind == "table":
        from flowmatch.data.tables import TableCodec

        return TableCodec.from_dict(values)
    from flowmatch.data.tokens import Vocabulary

    return Vocabulary.from_dict(values)


def build_discrete_flow(
    meta: dict[str, Any], state: dict[str, torch.Tensor], config: dict[str, Any], where, *, model: torch.nn.Module | None = None
) -> DiscreteFlow:
    """A DiscreteFlow from :meth:`DiscreteFlow.checkpoint_meta` and its weights, in ``model`` where given
    (needed for a model the run folder only names)."""
    from flowmatch.models.registry import check_rebuildable
    from flowmatch.saving import build_model_for, named

    check_rebuildable(meta.get("model"), model, where)
    try:
        kind = meta["kind"]
        if model is None:
            size = "length" if kind == "tokens" else "dim"
            model = build_model_for(dict(meta["model"]), int(meta[size]), state, where, size)
        path = path_from_config(meta["discrete_path"])
        codec = codec_from_config(kind, meta.get("codec"))
        _check_vocabulary(kind, dict(meta["model"]), path, codec)
        flow = DiscreteFlow(
            model,
            path,
            length=int(meta["length"]),
            dim=int(meta["dim"]),
            codec=codec,
            config=config,
            conditions=meta.get("conditions"),
            given=meta.get("given"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FlowmatchError):  # named once: the checkpoint's own checks already name it
            raise FlowmatchError(named(str(exc), where)) from None
        raise FlowmatchError(f"{where}: malformed checkpoint metadata ({exc!r})") from None
    load_weights(model, state, where)
    return flow


def _check_vocabulary(kind: str, spec: dict[str, Any], path: Any, codec: Any) -> None:
    """checkpoint metadata whose vocabularies agree: the path's, the codec's and the model's (a token id past
    one of them would index outside the network's embedding)."""
    sizes: dict[str, Any] = {"discrete_path.vocab_size": path.vocab_size}
    if kind == "tokens":
        if codec is not None:
            sizes["codec.size"] = codec.size
        if "vocab_size" in spec:
            sizes["model.vocab_size"] = spec["vocab_size"]
    elif codec is not None:
        if path.source != "mask":
            raise FlowmatchError(f"checkpoint metadata's discrete_path.source is {path.source!r}; a table's is 'mask'")
        sizes["the largest of codec's category counts (at least 2)"] = max(max(codec.vocab_sizes, default=0), 2)
        if "vocab_sizes" in spec and spec["vocab_sizes"] != codec.vocab_sizes:
            sizes["model.vocab_sizes"], sizes["the codec's category counts"] = spec["vocab_sizes"], codec.vocab_sizes
    if "states" in spec:
        sizes["model.states - 1 (the mask)" if path.source == "mask" else "model.states"] = spec["states"] - (path.source == "mask")
    if any(value != path.vocab_size for value in sizes.values()):
        raise FlowmatchError("checkpoint metadata's vocabularies disagree: " + ", ".join(f"{key} {value}" for key, value in sizes.items()))


def as_tokens(values, vocab_size: int, what: str = "tokens") -> torch.Tensor:
    """An int64 tensor of token ids in 0..vocab_size - 1 from a tensor or array, checked."""
    if isinstance(values, (str, bytes)):
        raise FlowmatchError(f"{what} must be an array of token ids, got a {type(values).__name__} (encode text with the flow's codec)")
    try:
        tokens = torch.as_tensor(np.asarray(values)) if not isinstance(values, torch.Tensor) else values
    except (TypeError, ValueError) as exc:
        raise FlowmatchError(f"{what} must be an array of token ids ({exc})") from None
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise FlowmatchError(f"{what} must be integers, got {tokens.dtype}")
    tokens = tokens.long()
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise FlowmatchError(f"{what} must lie in 0..{vocab_size - 1}")
    return tokens

"""Training discrete and mixed flows: token sequences, and tables with numeric and categorical columns.

Each step draws a batch of data (windows of ``seq_len`` tokens, or table rows), one time t per row
(uniform on [0, 1)), the tokens' x_t from the mixture path p_t(x | x1) and, for a table, the numeric
features' x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I). The loss is

    L = E || v_theta(x_t, tokens_t, t) - (x1 - x0) ||^2  +  L_discrete(logits_theta(x_t, tokens_t, t), x1 tokens)

with L_discrete the cross-entropy or the generalized KL (:mod:`flowmatch.discrete.losses`); one network,
one time. Adam(W) with warm-up and cosine decay, gradient clipping, an EMA of the weights, and a
validation loss on held-out data every ``val_every`` steps that keeps the best EMA weights
(``select``). SIGINT or SIGTERM stops after the current step and still writes the run.

The run folder (written whole at the end, atomically: :func:`flowmatch.storage.atomic_folder`) holds
config.json, checkpoint.safetensors with checkpoint.json (kind, model, path, codec), metrics.csv,
metrics.json, and samples: samples.txt for text, samples.csv and samples.png for a table.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowmatch.discrete.flow import DiscreteFlow
from flowmatch.discrete.losses import cross_entropy_loss, generalized_kl_loss
from flowmatch.discrete.paths import MixturePath
from flowmatch.discrete.schedulers import make_scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.training.config import TrainConfig
from flowmatch.training.ema import EMA
from flowmatch.training.loop import _descend, _optimizer, _progress_bar, _StopSignal
from flowmatch.training.schedules import learning_rate
from flowmatch.training.threads import thread_scope, use_threads

#: Held-out windows (tokens) or rows (tables) the validation loss is computed on.
VAL_ITEMS = 256


#: Share of a table's rows held out as its test split (and of the rest, ``val_fraction`` for validation).
TABLE_TEST_FRACTION = 0.2


@dataclass
class DiscreteResult:
    """What :func:`train_discrete` returns."""

    flow: DiscreteFlow
    config: TrainConfig
    data: Any  # TokenData or TableData
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step: int = 0
    interrupted: bool = False
    validation: dict[str, Any] | None = None
    threads: dict[str, Any] | None = None  # torch's intra-op thread count and what chose it (training.threads)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else float("nan")


@dataclass
class TableData:
    """A table split into train / validation / test rows (pandas DataFrames) with its codec."""

    name: str
    frame: Any
    train: Any
    val: Any
    test: Any
    codec: Any

    def batch(self, n: int, generator: torch.Generator, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        x, tokens = self.encoded(split)
        rows = torch.randint(len(tokens), (n,), generator=generator)
        return x[rows], tokens[rows]

    def encoded(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_encoded", {})
        if split not in cache:
            x, tokens = self.codec.encode(getattr(self, split))
            cache[split] = (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(tokens, dtype=torch.long))
        return cache[split]


#: The fewest test rows a table's evaluation scores (:data:`flowmatch.evaluation.tables.MIN_ROWS`).
TABLE_MIN_TEST = 4


def load_table_data(path: str, *, missing: str, seed: int, val_fraction: float) -> TableData:
    """A CSV table read and checked (:func:`flowmatch.data.tables.read_table`), its rows shuffled with
    ``seed`` and split: 20% test, then ``val_fraction`` of the rest for validation; the codec is fitted on
    the whole table's columns (its categories and ranges; the numbers' scaling on the training rows)."""
    from flowmatch.data.tables import TableCodec, read_table

    frame = read_table(path, missing=missing)
    n = len(frame)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_test = max(2, round(TABLE_TEST_FRACTION * n))
    if n_test < TABLE_MIN_TEST:  # checked before training: the evaluation would fail after it
        fewest = next(k for k in range(n, 100 * TABLE_MIN_TEST) if round(TABLE_TEST_FRACTION * k) >= TABLE_MIN_TEST)
        raise FlowmatchError(
            f"{path}: {n} rows are too few: a table run's evaluation scores a test split of at least {TABLE_MIN_TEST} rows "
            f"({TABLE_TEST_FRACTION:.0%} of the rows), so the table needs at least {fewest} rows"
        )
    n_val = max(2, round(val_fraction * (n - n_test))) if val_fraction > 0 else 0
    if n - n_test - n_val < 2:
        raise FlowmatchError(f"{path}: {n} rows are too few to split into train, validation and test")
    test, val, train = (
        frame.iloc[order[a:b]].reset_index(drop=True) for a, b in ((0, n_test), (n_test, n_test + n_val), (n_test + n_val, n))
    )
    codec = TableCodec.fit(frame)
    return TableData(path, frame, train, val if n_val else None, test, codec)


def resolve_kind(config: TrainConfig) -> str:
    """``kind = auto``: tokens for a corpus, a .txt or (never guessed) a token array; table for a CSV with
    text columns or empty cells (and no label or condition columns, which the continuous runs read);
    else continuous."""
    from flowmatch.data.tokens import is_token_data

    if config.kind != "auto":
        return config.kind
    if is_token_data(config.data):
        return "tokens"
    if config.data.lower().endswith(".csv") and not config.label_column and not config.condition_columns and os.path.isfile(config.data):
        from flowmatch.data.tables import looks_mixed

        if looks_mixed(config.data):
            return "table"
    return "continuous"


@thread_scope
def train_discrete(config: TrainConfig, *, data: Any = None, model: torch.nn.Module | None = None, progress: bool = True) -> DiscreteResult:
    """Train a discrete (kind tokens) or mixed (kind table) flow on ``config.data`` (or ``data``: a
    TokenData or TableData); ``model`` replaces the built-in network (same call signature)."""
    kind = resolve_kind(config)
    if kind not in ("tokens", "table"):
        raise FlowmatchError(f"train_discrete trains kind tokens or table, not {kind}")
    torch.manual_seed(config.seed)
    data = data if data is not None else _load(config, kind)
    path, length, dim = _path_and_shape(config, kind, data)
    sizes = [] if kind == "tokens" else [int(v) for v in data.codec.vocab_sizes]
    model = model if model is not None else _model(config, kind, path, length, dim, sizes)
    threads = use_threads(config.threads, model, config.batch_size, length if kind == "tokens" else 1)
    flow = DiscreteFlow(model, path, length=length, dim=dim, codec=data.vocab if kind == "tokens" else data.codec, config=config.to_dict())
    ema = EMA(model, config.ema, config.ema_warmup)
    optimizer = _optimizer(config, model)
    generator = torch.Generator().manual_seed(config.seed)
    val = _validation_set(data, kind, config, torch.Generator().manual_seed(config.seed + 1))
    best: dict[str, Any] = {"loss": float("inf"), "step": 0, "weights": None}
    log: list[tuple[int, float, float, float]] = []
    losses: list[float] = []
    stop = _StopSignal()
    bar = _progress_bar(config.steps, 0, progress)
    started, done = time.perf_counter(), 0
    model.train()
    with stop:
        for step in range(config.steps):
            loss = _loss(flow, data, kind, config, config.batch_size, generator)
            if not torch.isfinite(loss):
                raise FlowmatchError(f"training stopped: the loss is {loss.item()} at step {step}; try a smaller lr")
            _descend(optimizer, model, loss, learning_rate(config, step), config.grad_clip)
            ema.update(model)
            losses.append(loss.item())
            done = step + 1
            if val is not None and (done % config.val_every == 0 or done == config.steps):
                value = _validate(flow, ema, model, val, kind, config)
                if value < best["loss"]:
                    best = {
                        "loss": value,
                        "step": done,
                        "weights": {k: v.clone() for k, v in ema.averaged_copy(model).state_dict().items()},
                    }
                log.append((done, sum(losses[-50:]) / len(losses[-50:]), value, time.perf_counter() - started))
                if bar is not None:
                    bar.set_postfix(loss=f"{log[-1][1]:.4f}", val=f"{value:.4f}", refresh=False)
            if bar is not None and (done % 10 == 0 or done == config.steps):
                bar.update(done - bar.n)
            if stop.requested or (config.early_stop and val is not None and done - best["step"] >= config.early_stop):
                break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    use_best = best["weights"] is not None and config.select in ("auto", "val-loss")
    flow.model = ema.sampling_copy(model, best["weights"] if use_best else None)
    validation = (
        None if val is None else {"best_step": best["step"], "best_loss": best["loss"], "selected": "val-loss" if use_best else "last"}
    )
    result = DiscreteResult(flow, config, data, losses, seconds, done, stop.requested, validation, threads.to_dict())
    result.log = log  # type: ignore[attr-defined]
    return result


def _load(config: TrainConfig, kind: str):
    if kind == "tokens":
        from flowmatch.data.tokens import load_tokens

        return load_tokens(config.data)
    if not config.data.lower().endswith(".csv"):
        raise FlowmatchError(f"kind table reads a .csv file, got '{config.data}'")
    return load_table_data(config.data, missing=config.missing, seed=config.seed, val_fraction=config.val_fraction)


def _path_and_shape(config: TrainConfig, kind: str, data) -> tuple[MixturePath, int, int]:
    options = {"exponent": config.scheduler_exponent} if config.scheduler == "polynomial" else {}
    scheduler = make_scheduler(config.scheduler, **options)
    if kind == "tokens":
        return MixturePath(scheduler, data.vocab.size, config.discrete_source), config.seq_len, 0
    sizes = data.codec.vocab_sizes
    if not sizes:
        raise FlowmatchError(f"{data.name}: the table has no categorical column; train it as continuous rows (kind continuous)")
    if config.discrete_source != "mask":
        raise FlowmatchError("a table's columns have different categories: train it with the masked source (discrete_source='mask')")
    return MixturePath(scheduler, max(max(sizes), 2), "mask"), len(sizes), data.codec.dim


def _model(config: TrainConfig, kind: str, path: MixturePath, length: int, dim: int, sizes: list[int]) -> torch.nn.Module:
    """The built-in network: the transformer over a token sequence, the mixed MLP over a table's rows."""
    from flowmatch.models.registry import build_model

    if kind == "tokens":
        if config.model not in ("mlp", "transformer"):  # mlp: the continuous default, so the kind's own
            raise FlowmatchError(f"kind tokens trains the transformer, not model {config.model}; pass your own model in Python")
        return build_model(
            "transformer",
            length,
            vocab_size=path.vocab_size,
            states=path.states,
            width=config.width,
            depth=config.depth,
            heads=config.heads,
        )
    if config.model not in ("mlp", "mixed-mlp"):
        raise FlowmatchError(f"kind table trains the mixed-mlp, not model {config.model}; pass your own model in Python")
    return build_model("mixed-mlp", dim, vocab_sizes=sizes, width=config.width, depth=config.depth, dropout=config.dropout)


def _loss(
    flow: DiscreteFlow, data, kind: str, config: TrainConfig, n: int, generator: torch.Generator, split: str = "train", batch=None
) -> torch.Tensor:
    """One batch's loss (module docstring); ``batch`` gives the data (x1, tokens1) instead of a draw."""
    device = flow.device
    if batch is None:
        batch = (None, data.windows(n, config.seq_len, generator, split)) if kind == "tokens" else data.batch(n, generator, split)
    x1, tokens1 = batch
    t = torch.rand(len(tokens1), generator=generator)
    tokens_t = flow.path.sample(tokens1, t, generator)
    x_t = target = None
    if x1 is not None and flow.dim:
        x0 = torch.randn(x1.shape, generator=generator)
        tt = t[:, None]
        x_t, target = (tt * x1 + (1 - tt) * x0).to(device), (x1 - x0).to(device)
    t, tokens_t, tokens1 = t.to(device), tokens_t.to(device), tokens1.to(device)
    v, logits = flow.predict(x_t, tokens_t, t)
    if config.discrete_loss == "generalized-kl":
        loss = generalized_kl_loss(logits, tokens1, tokens_t, t, flow.path)
    else:
        loss = cross_entropy_loss(logits.float(), tokens1)
    if v is not None and target is not None and v.shape[1]:
        loss = loss + (v.float() - target).pow(2).mean()
    return loss


def _validation_set(data, kind: str, config: TrainConfig, generator: torch.Generator):
    """Fixed held-out batches (and the generator state their times and x_t are drawn from)."""
    if kind == "tokens":
        if len(data.val) < config.seq_len:
            return None
        return (None, data.windows(VAL_ITEMS, config.seq_len, generator, "val")), generator.get_state()
    if data.val is None:
        return None
    x, tokens = data.encoded("val")
    return (x[:VAL_ITEMS], tokens[:VAL_ITEMS]), generator.get_state()


def _validate(flow: DiscreteFlow, ema: EMA, model: torch.nn.Module, val, kind: str, config: TrainConfig) -> float:
    """The loss of the EMA weights on the held-out batch, with the same times and x_t every time."""
    batch, state = val
    live = flow.model
    flow.model = ema.averaged_copy(model).eval()
    try:
        with torch.no_grad():
            generator = torch.Generator()
            generator.set_state(state)
            return float(_loss(flow, None, kind, config, 0, generator, batch=batch))
    finally:
        flow.model = live


def save_discrete(flow: DiscreteFlow, folder: Path) -> None:
    """Weights (safetensors) and checkpoint.json into ``folder``."""
    from flowmatch.runs import CHECKPOINT, CHECKPOINT_META
    from flowmatch.storage import save_tensors, write_json

    meta = flow.checkpoint_meta()
    save_tensors(folder / CHECKPOINT, flow.model.state_dict())
    write_json(folder / CHECKPOINT_META, meta)


def data_from_config(config: dict[str, Any]):
    """The data a discrete run's config names (its held-out parts as at training)."""
    kind = config.get("kind")
    if config.get("data") == "python":
        raise FlowmatchError("this run was trained on data given in Python, which its folder does not hold")
    if kind == "tokens":
        from flowmatch.data.tokens import load_tokens

        return load_tokens(config["data"])
    return load_table_data(
        config["data"], missing=config.get("missing", "model"), seed=int(config["seed"]), val_fraction=float(config["val_fraction"])
    )


@thread_scope
def fit_discrete(
    config: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    data: Any = None,
    model: torch.nn.Module | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate: bool = True,
) -> tuple[DiscreteResult, dict[str, Any]]:
    """Train (:func:`train_discrete`), measure (the quick report of :mod:`flowmatch.evaluation.discrete`) and
    write the run folder ``out`` whole: config (its ``kind`` resolved), weights, metrics.csv, metrics.json,
    report.json and samples (samples.txt for text; samples.csv and samples.png for a table)."""
    from flowmatch.evaluation.discrete import evaluate_discrete
    from flowmatch.runs import check_writable_run
    from flowmatch.storage import atomic_folder, write_json

    kind = resolve_kind(config)
    config = TrainConfig.from_dict({**config.to_dict(), "kind": kind})
    if out is not None:
        check_writable_run(Path(out), force)
    result = train_discrete(config, data=data, model=model, progress=progress)
    metrics: dict[str, Any] = {
        "kind": kind, "final_loss": result.final_loss, "train_seconds": result.seconds, "steps": config.steps,
        "steps_run": result.step, "interrupted": result.interrupted, "threads": result.threads,
    }  # fmt: skip
    if result.validation is not None:
        metrics["validation"] = result.validation
    report = evaluate_discrete(result.flow, result.data, quick=True, seed=config.seed, progress=False) if evaluate else None
    if report is not None:
        metrics["report"] = report
    if out is None:
        return result, metrics
    with atomic_folder(Path(out)) as staging:
        write_json(staging / "config.json", config.to_dict())
        save_discrete(result.flow, staging)
        rows = ["step,loss,val_loss,seconds"] + [f"{s},{loss:.6g},{v:.6g},{sec:.3f}" for s, loss, v, sec in getattr(result, "log", [])]
        (staging / "metrics.csv").write_text("\n".join(rows) + "\n")
        write_json(staging / "metrics.json", metrics)
        if report is not None:
            write_json(staging / "report.json", report)
        write_samples(result.flow, staging, seed=config.seed)
    return result, metrics


def write_samples(flow: DiscreteFlow, folder: Path, *, seed: int = 0, n: int | None = None) -> Path:
    """A look at what the run generates: samples.txt (text: 8 sequences) or samples.csv (a table: as many
    rows as its test split, default 1000) with samples.png (each column's distribution beside the real one's)."""
    if flow.kind == "tokens":
        texts = flow.sample(n or 8, seed=seed)
        body = texts if isinstance(texts, list) else [" ".join(map(str, row)) for row in texts]
        target = folder / "samples.txt"
        target.write_text(format_texts(body))
        return target
    from flowmatch.data.tables import write_table

    frame = flow.sample(n or 1000, seed=seed)
    write_table(frame, folder / "samples.csv")
    try:
        data = data_from_config(flow.config)
    except FlowmatchError:
        return folder / "samples.csv"
    from flowmatch.plots.tables import plot_table_marginals

    plot_table_marginals(
        frame, data.test, folder / "samples.png", title=f"{Path(str(flow.config.get('data'))).name}: samples against the test split"
    )
    return folder / "samples.csv"


def format_texts(texts: list[str]) -> str:
    """Generated sequences as one text file, each under a line ``--- sample i ---``."""
    return "".join(f"--- sample {i} ---\n{text}\n" for i, text in enumerate(texts))

"""Evaluation as functions: every requested measurement of a model, or of saved checkpoints.

:func:`evaluate_model` takes a built model and a :class:`~filtertron.eval.perplexity.Span`
and returns result rows (perplexity at each length, contamination, attacks, diagnostics, see
:mod:`filtertron.eval.cli` for what each row kind holds); :func:`check_request` checks
every request against every checkpoint before anything runs, and
:func:`evaluate_checkpoints` evaluates them and writes the report. Under data parallelism
(``rank``, ``world``) windows are split across processes and the sums all-reduced on the
backend's device; rank 0 writes the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from filtertron.eval import long_context as lc
from filtertron.eval.perplexity import (
    Span,
    Totals,
    load_span,
    score,
    sliding_windows,
    window_nll,
)
from filtertron.eval.report import Row, summary_tables, write_report
from filtertron.eval.robustness import attack_scorer, contamination_scorer

log = logging.getLogger(__name__)
TOKENS_PER_BATCH = 8192  # default batch size: windows per forward = max(1, this // L)


class EvalRequestError(ValueError):
    """A request that cannot be evaluated (bad option, missing file, mismatched data)."""


@dataclass
class EvalOptions:
    """What to measure; mirrors the command-line options (lengths as strings, see
    :func:`filtertron.eval.long_context.parse_lengths`)."""

    lengths: str | None = None
    stride: int | None = None
    batch_size: int | None = None
    impl: str = "auto"
    contamination: list[float] = field(default_factory=list)
    contamination_mode: str = "fixed"
    contamination_token: int = 0
    attack: str | None = None
    epsilons: list[float] = field(default_factory=list)
    pgd_steps: int = 10
    pgd_alpha: float | None = None
    robust_length: str | None = None
    diagnostics: bool = False
    diagnostics_windows: int = 4
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class Plan:
    """Validated lengths of one model: (L, S) pairs for perplexity and for robustness."""

    lengths: list[tuple[int, int]]
    robust: tuple[int, int] | None


def plan_for(cfg: Any, opts: EvalOptions, where: str) -> Plan:
    """Parse and check the requested lengths for one model config; raises on bad requests."""
    lengths = lc.parse_lengths(opts.lengths, cfg.seq_len)
    robust = None
    if opts.contamination or opts.attack:
        robust = lc.parse_lengths(opts.robust_length or str(lengths[0]), cfg.seq_len)[0]
    pairs = []
    for n in lengths + ([robust] if robust else []):
        lc.check_length(cfg, n, where)
        s = n if opts.stride is None else opts.stride
        if not 1 <= s <= n:
            raise ValueError(f"--stride {s} must be in [1, L] for every length (L={n})")
        pairs.append((n, s))
    return Plan(pairs[: len(lengths)], pairs[-1] if robust else None)


METRIC_KEYS = ("tokens", "words", "bytes", "nll_sum", "token_ppl", "word_ppl", "bits_per_byte")


def _metrics(tot: Totals, span: Span) -> Row:
    return {
        "tokens": tot.tokens,
        "words": span.words,
        "bytes": span.bytes,
        "nll_sum": tot.nll_sum,
        "token_ppl": tot.token_ppl,
        "word_ppl": tot.word_ppl(span.words),
        "bits_per_byte": tot.bits_per_byte(span.bytes),
    }


def diagnostics_rows(model: nn.Module, span: Span, windows: int) -> list[Row]:
    """Token similarity (layers 0..L) and mean attention entropy (blocks, at layer l + 1) on
    up to ``windows`` disjoint windows of the training length from the start of the span."""
    from filtertron.model.diagnostics import diagnose

    T = min(model.config.seq_len, len(span.tokens))
    n = max(1, min(windows, len(span.tokens) // T))
    idx = torch.from_numpy(span.tokens[: n * T].reshape(n, T)).to(_device(model))
    d = diagnose(model, idx)
    rows = []
    for layer, sim in enumerate(d["token_similarity"]):
        heads = d["attention_entropy"][layer - 1] if layer else None
        rows.append(
            {
                "kind": "diagnostics",
                "layer": layer,
                "length": T,
                "windows": n,
                "token_similarity": sim,
                "attention_entropy": sum(heads) / len(heads) if heads else None,
                "attention_entropy_heads": heads,
            }
        )
    return rows


def evaluate_model(
    model: nn.Module,
    span: Span,
    opts: EvalOptions,
    base: Row | None = None,
    rank: int = 0,
    world: int = 1,
) -> list[Row]:
    """Every requested measurement of one model on one span.

    Args:
        model: A GPT (its ``config`` is read for seq_len, positions and the attention impl).
        span: The scored stream (:func:`filtertron.eval.perplexity.load_span`).
        opts: What to measure.
        base: Fields copied into every row (name, checkpoint, ...).
        rank: This process's data-parallel rank.
        world: Number of data-parallel processes.

    Returns:
        Result rows (identical on every rank, except that diagnostics run on rank 0 only).
    """
    cfg = model.config
    device = _device(model).type
    base = dict(
        base or {},
        train_length=cfg.seq_len,
        world_size=world,
        seed=opts.seed,
        scored_span="whole split" if span.whole_split else f"first {span.documents} documents",
    )
    plan = plan_for(cfg, opts, base.get("name", "model"))
    label = base.get("name", "model")
    rows: list[Row] = []
    clean: dict[tuple[int, int], Row] = {}

    models: dict[str, nn.Module] = {}

    def run(
        L: int, S: int, scorer: Any = window_nll, grad: bool = False, what: str = ""
    ) -> tuple[Totals, Row]:
        impl = lc.resolve_impl(opts.impl, cfg, needs_grad=grad, device=device)
        if impl not in models:
            models[impl] = lc.with_impl(model, impl)
        windows = sliding_windows(span.num_targets, L, S)
        tot = score(
            models[impl],
            span.tokens,
            windows,
            opts.batch_size or max(1, TOKENS_PER_BATCH // L),
            scorer,
            rank,
            world,
            f"{label} L={L} S={S}{what}" if opts.progress else False,
            grad,
        )
        return tot, {"length": L, "stride": S, "impl": impl, "windows": len(windows)}

    def clean_row(L: int, S: int) -> Row:
        if (L, S) not in clean:
            tot, where = run(L, S)
            clean[(L, S)] = {**base, "kind": "perplexity", **where, **_metrics(tot, span)}
        return clean[(L, S)]

    if span.num_targets < max(L for L, _ in plan.lengths):
        log.warning(
            "%s: the scored span has only %d targets, shorter than the longest "
            "window; those windows are cut to the span",
            label,
            span.num_targets,
        )
    rows += [clean_row(L, S) for L, S in plan.lengths]
    if plan.robust:
        L, S = plan.robust
        ref = clean_row(L, S)
        for p in sorted({0.0, *opts.contamination}):
            if p == 0:
                tot_row = {k: ref[k] for k in ("length", "stride", "impl", "windows")}
                met = {k: ref[k] for k in METRIC_KEYS}
            else:
                sc = contamination_scorer(
                    p, opts.contamination_mode, opts.contamination_token, span.vocab_size, opts.seed
                )
                tot, tot_row = run(L, S, sc, what=f" p={p:g}")
                met = _metrics(tot, span)
            rows.append(
                {
                    **base,
                    "kind": "contamination",
                    **tot_row,
                    **met,
                    "contamination": p,
                    "contamination_mode": opts.contamination_mode,
                    "contamination_token": opts.contamination_token
                    if opts.contamination_mode == "fixed"
                    else None,
                }
            )
        for eps in opts.epsilons if opts.attack else []:
            sc = attack_scorer(opts.attack, eps, opts.pgd_steps, opts.pgd_alpha)
            tot, where = run(L, S, sc, grad=True, what=f" {opts.attack} eps={eps:g}")
            rows.append(
                {
                    **base,
                    "kind": "attack",
                    **where,
                    **_metrics(tot, span),
                    "attack": opts.attack,
                    "epsilon": eps,
                    "pgd_steps": opts.pgd_steps if opts.attack == "pgd" else None,
                    "pgd_alpha": (opts.pgd_alpha or 2.5 * eps / opts.pgd_steps)
                    if opts.attack == "pgd"
                    else None,
                    "clean_token_ppl": ref["token_ppl"],
                }
            )
    if opts.diagnostics and rank == 0:
        impl = lc.resolve_impl(opts.impl, cfg, device=device)
        m = models.get(impl) or lc.with_impl(model, impl)
        rows += [
            {**base, "impl": impl, **r} for r in diagnostics_rows(m, span, opts.diagnostics_windows)
        ]
    return rows


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_device() -> str:
    """``cuda`` (this process's current device under a launcher) when present, else ``cpu``."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def run_name(path: Path) -> str:
    """A run's display name: the run directory of a step directory."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


@dataclass(frozen=True)
class Request:
    """Checked checkpoints and span, ready to evaluate (from :func:`check_request`)."""

    infos: list[Any]
    names: list[str]
    span: Span
    split: str


def check_request(
    checkpoints: list[str],
    data: str,
    opts: EvalOptions,
    split: str = "test",
    max_tokens: int | None = None,
    names: list[str] | None = None,
) -> Request:
    """Check every request against every checkpoint before any model runs.

    Args:
        checkpoints: Run, checkpoints/ or step directories.
        data: A prepared dataset directory.
        opts: What to measure.
        split: The split to score.
        max_tokens: Score only the longest prefix of whole documents within this many tokens.
        names: A label per checkpoint (default: the run directory names).

    Raises:
        EvalRequestError: naming the option, checkpoint or file that cannot be evaluated.
    """
    from filtertron.checkpoint.files import resolve
    from filtertron.config import RunConfig, from_dict
    from filtertron.data import DataError

    try:
        if names and len(names) != len(checkpoints):
            raise ValueError(f"--name: {len(names)} names for {len(checkpoints)} checkpoints")
        span = load_span(data, split, max_tokens)
        infos = [resolve(c) for c in checkpoints]
        names = names or [run_name(i.path) for i in infos]
        for info, name in zip(infos, names, strict=True):
            cfg = from_dict(RunConfig, info.meta["config"]).model
            plan_for(cfg, opts, f"{name} ({info.path})")
            saved = info.meta.get("tokenizer_hash")
            if saved and saved != span.tokenizer_hash:
                raise ValueError(
                    f"{info.path}: trained with tokenizer {saved[:12]}..., but "
                    f"{data} uses {span.tokenizer_hash[:12]}..."
                )
            if span.vocab_size > cfg.vocab_size:
                raise ValueError(
                    f"{data}: vocabulary {span.vocab_size} exceeds the "
                    f"model's {cfg.vocab_size} ({info.path})"
                )
    except (ValueError, DataError, FileNotFoundError) as e:
        raise EvalRequestError(str(e)) from e
    return Request(infos, list(names), span, split)


def evaluate_checkpoints(
    request: Request,
    opts: EvalOptions,
    out: str,
    rank: int = 0,
    world: int = 1,
    device: str | None = None,
) -> list[Row]:
    """Evaluate checked checkpoints and write the report (rank 0).

    Args:
        request: From :func:`check_request`.
        opts: What to measure.
        out: Report directory (results.json, results.csv, summary.md, plots).
        rank: This process's data-parallel rank.
        world: Number of data-parallel processes.
        device: Where the models run (default: :func:`default_device`).

    Returns:
        The rows (identical on every rank, diagnostics on rank 0 only).
    """
    from filtertron.checkpoint.shards import load_model

    device = device or default_device()
    rows: list[Row] = []
    for info, name in zip(request.infos, request.names, strict=True):
        model, _cfg, info = load_model(info.path, map_location=device)
        base = {
            "name": name,
            "checkpoint": str(info.path),
            "step": info.step,
            "split": request.split,
        }
        rows += evaluate_model(model.eval(), request.span, opts, base, rank, world)
    if rank == 0:
        written = write_report(rows, out)
        print(summary_tables(rows))
        print("wrote " + ", ".join(str(p) for p in written))
    return rows

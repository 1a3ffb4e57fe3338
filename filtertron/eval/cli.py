"""``filtertron eval CHECKPOINT... --data DIR [options]``: perplexity, long context, robustness
and diagnostics of one or more checkpoints, written as rows to JSON/CSV plus plots.

Per checkpoint, on the scored span of ``--split`` (whole, or ``--max-tokens`` cut at a
document boundary; the first token is context only, see :mod:`filtertron.eval.perplexity`):

- ``perplexity`` rows: token/word perplexity and bits per byte at each ``--lengths`` L with
  stride S (``--stride``, default L: disjoint windows);
- ``contamination`` rows: at the robustness length (``--robust-length``, default the first of
  ``--lengths``), each rate of ``--contamination`` (p = 0 always included, the clean value);
- ``attack`` rows: ``--attack fgsm|pgd`` at each ``--epsilon``, beside the clean perplexity;
- ``diagnostics`` rows (``--diagnostics``): token similarity and attention entropy per layer.

Under a launcher (RANK and WORLD_SIZE set, or ``--nproc N`` which starts torchrun) windows are
split across ranks and the NLL and token sums all-reduced; rank 0 writes ``--out``.

Python API: :func:`evaluate_model` (a built model and a :class:`~perplexity.Span`) returns the
rows; :func:`filtertron.eval.report.write_report` writes them.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
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
from filtertron.eval.robustness import (
    ATTACKS,
    CONTAMINATION_MODES,
    attack_scorer,
    contamination_scorer,
)

log = logging.getLogger("filtertron")
TOKENS_PER_BATCH = 8192  # default batch size: windows per forward = max(1, this // L)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="run directory, its checkpoints/ directory, or a step directory")
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--lengths", default=None,
                   help="context lengths: tokens, K (x1024) or x (x training length), e.g. "
                        "128,4K or 1x,2x,4x,8x,16x (default: the training length)")
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window stride S <= every length: each window scores its last "
                        "S tokens (default: S = L, disjoint windows)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"windows per forward pass (default: max(1, {TOKENS_PER_BATCH} // L))")
    p.add_argument("--impl", default="auto", choices=lc.EVAL_IMPLS,
                   help="attention implementation (auto: a fused, memory-linear one)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="score only the longest prefix of whole documents within N tokens")
    p.add_argument("--contamination", default=None,
                   help="comma-separated contamination rates, e.g. 0,0.05,0.1,0.2")
    p.add_argument("--contamination-mode", default="fixed", choices=CONTAMINATION_MODES,
                   help="replace hit inputs by one fixed token or by uniform random tokens "
                        "(targets stay clean)")
    p.add_argument("--contamination-token", default="AAA",
                   help="fixed replacement: a token id, or text whose first token is used "
                        "(default: AAA, as in the word-swap attack)")
    p.add_argument("--attack", default=None, choices=ATTACKS,
                   help="embedding-space attack (L-inf on the embedding output y0)")
    p.add_argument("--epsilon", default=None, help="attack radius(es), comma-separated")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps K (default 10)")
    p.add_argument("--pgd-alpha", type=float, default=None,
                   help="PGD step size (default 2.5 epsilon / steps)")
    p.add_argument("--robust-length", default=None,
                   help="length for contamination and attacks (default: first of --lengths)")
    p.add_argument("--diagnostics", action="store_true",
                   help="token similarity and attention entropy per layer")
    p.add_argument("--diagnostics-windows", type=int, default=4,
                   help="windows of the training length fed to the diagnostics")
    p.add_argument("--out", default="runs/eval", help="output directory")
    p.add_argument("--name", nargs="+", default=None,
                   help="a label per checkpoint (default: the run directory name)")
    p.add_argument("--seed", type=int, default=0, help="contamination seed")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (started with torchrun)")
    p.add_argument("--master-port", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    return Plan(pairs[:len(lengths)], pairs[-1] if robust else None)


METRIC_KEYS = ("tokens", "words", "bytes", "nll_sum", "token_ppl", "word_ppl", "bits_per_byte")


def _metrics(tot: Totals, span: Span) -> Row:
    return {"tokens": tot.tokens, "words": span.words, "bytes": span.bytes,
            "nll_sum": tot.nll_sum, "token_ppl": tot.token_ppl,
            "word_ppl": tot.word_ppl(span.words), "bits_per_byte": tot.bits_per_byte(span.bytes)}


def diagnostics_rows(model: nn.Module, span: Span, windows: int) -> list[Row]:
    """Token similarity (layers 0..L) and mean attention entropy (blocks, at layer l + 1) on
    up to ``windows`` disjoint windows of the training length from the start of the span."""
    from filtertron.eval.diagnostics import diagnose

    T = min(model.config.seq_len, len(span.tokens))
    n = max(1, min(windows, len(span.tokens) // T))
    idx = torch.from_numpy(span.tokens[: n * T].reshape(n, T))
    d = diagnose(model, idx)
    rows = []
    for layer, sim in enumerate(d["token_similarity"]):
        heads = d["attention_entropy"][layer - 1] if layer else None
        rows.append({"kind": "diagnostics", "layer": layer, "length": T, "windows": n,
                     "token_similarity": sim,
                     "attention_entropy": sum(heads) / len(heads) if heads else None,
                     "attention_entropy_heads": heads})
    return rows


def evaluate_model(model: nn.Module, span: Span, opts: EvalOptions, base: Row | None = None,
                   rank: int = 0, world: int = 1) -> list[Row]:
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
    base = dict(base or {}, train_length=cfg.seq_len, world_size=world, seed=opts.seed,
                scored_span="whole split" if span.whole_split
                else f"first {span.documents} documents")
    plan = plan_for(cfg, opts, base.get("name", "model"))
    label = base.get("name", "model")
    rows: list[Row] = []
    clean: dict[tuple[int, int], Row] = {}

    models: dict[str, nn.Module] = {}

    def run(L: int, S: int, scorer: Any = window_nll, grad: bool = False,
            what: str = "") -> tuple[Totals, Row]:
        impl = lc.resolve_impl(opts.impl, cfg, needs_grad=grad)
        if impl not in models:
            models[impl] = lc.with_impl(model, impl)
        windows = sliding_windows(span.num_targets, L, S)
        tot = score(models[impl], span.tokens, windows,
                    opts.batch_size or max(1, TOKENS_PER_BATCH // L), scorer, rank, world,
                    f"{label} L={L} S={S}{what}" if opts.progress else False, grad)
        return tot, {"length": L, "stride": S, "impl": impl, "windows": len(windows)}

    def clean_row(L: int, S: int) -> Row:
        if (L, S) not in clean:
            tot, where = run(L, S)
            clean[(L, S)] = {**base, "kind": "perplexity", **where, **_metrics(tot, span)}
        return clean[(L, S)]

    if span.num_targets < max(L for L, _ in plan.lengths):
        log.warning("%s: the scored span has only %d targets, shorter than the longest "
                    "window; those windows are cut to the span", label, span.num_targets)
    rows += [clean_row(L, S) for L, S in plan.lengths]
    if plan.robust:
        L, S = plan.robust
        ref = clean_row(L, S)
        for p in sorted({0.0, *opts.contamination}):
            if p == 0:
                tot_row = {k: ref[k] for k in ("length", "stride", "impl", "windows")}
                met = {k: ref[k] for k in METRIC_KEYS}
            else:
                sc = contamination_scorer(p, opts.contamination_mode, opts.contamination_token,
                                          span.vocab_size, opts.seed)
                tot, tot_row = run(L, S, sc, what=f" p={p:g}")
                met = _metrics(tot, span)
            rows.append({**base, "kind": "contamination", **tot_row, **met, "contamination": p,
                         "contamination_mode": opts.contamination_mode,
                         "contamination_token": opts.contamination_token
                         if opts.contamination_mode == "fixed" else None})
        for eps in opts.epsilons if opts.attack else []:
            sc = attack_scorer(opts.attack, eps, opts.pgd_steps, opts.pgd_alpha)
            tot, where = run(L, S, sc, grad=True, what=f" {opts.attack} eps={eps:g}")
            rows.append({**base, "kind": "attack", **where, **_metrics(tot, span),
                         "attack": opts.attack, "epsilon": eps,
                         "pgd_steps": opts.pgd_steps if opts.attack == "pgd" else None,
                         "pgd_alpha": (opts.pgd_alpha or 2.5 * eps / opts.pgd_steps)
                         if opts.attack == "pgd" else None,
                         "clean_token_ppl": ref["token_ppl"]})
    if opts.diagnostics and rank == 0:
        impl = lc.resolve_impl(opts.impl, cfg)
        m = models.get(impl) or lc.with_impl(model, impl)
        rows += [{**base, "impl": impl, **r}
                 for r in diagnostics_rows(m, span, opts.diagnostics_windows)]
    return rows


def _floats(spec: str | None, what: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()] if spec else []
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {spec!r}") from None


def _fixed_token(spec: str, dataset_dir: str) -> int:
    if spec.strip().isdigit():
        return int(spec)
    from filtertron.data import load_tokenizer

    ids = load_tokenizer(dataset_dir).encode(spec)
    if not ids:
        raise ValueError(f"--contamination-token {spec!r} encodes to no token")
    return int(ids[0])


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of parsed command-line arguments."""
    opts = EvalOptions(
        lengths=args.lengths, stride=args.stride, batch_size=args.batch_size, impl=args.impl,
        contamination=_floats(args.contamination, "--contamination"),
        contamination_mode=args.contamination_mode, attack=args.attack,
        epsilons=_floats(args.epsilon, "--epsilon"), pgd_steps=args.pgd_steps,
        pgd_alpha=args.pgd_alpha, robust_length=args.robust_length,
        diagnostics=args.diagnostics, diagnostics_windows=args.diagnostics_windows,
        seed=args.seed, progress=not args.no_progress)
    if opts.attack and not opts.epsilons:
        raise ValueError("--attack needs --epsilon (e.g. --epsilon 0.01,0.05)")
    if any(not 0 <= p <= 1 for p in opts.contamination):
        raise ValueError(f"--contamination: rates must be in [0, 1], got {opts.contamination}")
    if any(e < 0 for e in opts.epsilons) or opts.pgd_steps < 1:
        raise ValueError("--epsilon must be >= 0 and --pgd-steps >= 1")
    if opts.contamination and opts.contamination_mode == "fixed":
        opts.contamination_token = _fixed_token(args.contamination_token, args.data)
    return opts


def _name(path: Path) -> str:
    """A run's display name: the run directory of a step directory."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


def _relaunch(args: argparse.Namespace) -> int:
    """Run this command again under torchrun with ``args.nproc`` processes."""
    from filtertron.parallel.distributed import free_port

    argv = [str(c) for c in args.checkpoints]
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key in ("checkpoints", "nproc", "master_port") or value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, *map(str, value)] if isinstance(
            value, list) else [flag, str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(args.master_port or free_port()),
           "-m", "filtertron.cli", "eval", *argv]
    return subprocess.call(cmd)


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron eval``; returns the exit status (2 for a refused request)."""
    if args.nproc > 1 and "RANK" not in os.environ:
        return _relaunch(args)
    rank, world = 0, int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from filtertron.parallel.distributed import init_distributed

        info = init_distributed()
        rank, world = info.rank, info.world_size
    try:
        return _run(args, rank, world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace, rank: int, world: int) -> int:
    from filtertron.config import RunConfig, from_dict
    from filtertron.data import DataError
    from filtertron.train.checkpoint import load_model, resolve

    try:
        if args.name and len(args.name) != len(args.checkpoints):
            raise ValueError(f"--name: {len(args.name)} names for {len(args.checkpoints)} "
                             "checkpoints")
        opts = options_from_args(args)
        span = load_span(args.data, args.split, args.max_tokens)
        infos = [resolve(c) for c in args.checkpoints]
        names = args.name or [_name(i.path) for i in infos]
        for info, name in zip(infos, names, strict=True):  # refuse before running anything
            cfg = from_dict(RunConfig, info.meta["config"]).model
            plan_for(cfg, opts, f"{name} ({info.path})")
            saved = info.meta.get("tokenizer_hash")
            if saved and saved != span.tokenizer_hash:
                raise ValueError(f"{info.path}: trained with tokenizer {saved[:12]}..., but "
                                 f"{args.data} uses {span.tokenizer_hash[:12]}...")
            if span.vocab_size > cfg.vocab_size:
                raise ValueError(f"{args.data}: vocabulary {span.vocab_size} exceeds the "
                                 f"model's {cfg.vocab_size} ({info.path})")
    except (ValueError, DataError, FileNotFoundError) as e:
        if rank == 0:
            print(f"filtertron eval: error: {e}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    for info, name in zip(infos, names, strict=True):
        model, _cfg, info = load_model(info.path)
        base = {"name": name, "checkpoint": str(info.path), "step": info.step,
                "split": args.split}
        rows += evaluate_model(model.eval(), span, opts, base, rank, world)
    if rank == 0:
        written = write_report(rows, args.out)
        print(summary_tables(rows))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0

"""Training throughput table at the GPT-2 small shape: filtertron's trainer beside a plain loop.

    python bench/train_throughput.py --device cuda [--budget 100] [--out DIR]
        [--variants softmax,bilateral,twicing-last2,twicing-all,grc] [--modes eager,compiled]
        [--sides trainer,plain] [--batch 16] [--steps 20] [--warmup 3] [--set k=v ...]

Variants: configs/gpt2-small (12 layers, d = 768, 12 heads, T = 1024, bf16): softmax
(baseline.yaml), bilateral, twicing in the last 2 layers (twicing.yaml) and in all layers,
and GRC (``--set`` overrides apply on top of each preset; ``--config`` is the CPU mode's).
Sides, each eager and compiled (``model.compile(dynamic=False)``; ``train.compile`` for the
trainer):

- trainer: :class:`filtertron.train.trainer.Trainer` as a user runs it (DeepSpeed engine,
  ZeRO-1 from the preset, one GPU, bf16 weights with fp32 masters, AdamW, clipping, the
  non-finite guard, metrics and TensorBoard every step); validation and checkpoints are off,
  as they are not part of a step;
- plain: a hand-written loop over the same model and batches: fp32 weights under bf16
  autocast, ``torch.optim.AdamW(fused=True)`` with the same groups, clipping and schedule.

Both sides end each step with the loss on the host (one sync per step) and are timed by the
gap between consecutive steps; the first ``--warmup`` steps (compilation) are excluded. With B
sequences of T tokens per step:

    tokens/s = B T / median step time,   MFU = tokens/s x FLOPs per token / peak FLOP/s

FLOPs per token: :func:`filtertron.train.flops.flops_per_token` (what the trainer logs: 6N +
12 L T d plus the variants' bias terms); peak: :func:`filtertron.train.mfu.peak_for` (the H200
bf16 datasheet 989.4 TFLOP/s; on a CPU a measured matmul). The "impl" column is what
attention's ``auto`` resolves to for each layer kind of the variant on this device, with grad.

Budget: cases run in :data:`PLAN` order (most informative first) while their estimated cost
(from the cases already run) fits in what is left of ``--budget`` seconds, counted from the
start of the process; the others are listed as skipped, with why. ``results.md`` and
``results.json`` in ``--out`` are rewritten after every case, so a run cut short keeps what
it measured. Issue 17's targets are printed as ``TARGET PASS|FAIL|NOT-MEASURED`` lines and the
last line starts with ``SUMMARY:``. Exit status 1 only when a case raised (the error is in the
table), not for a missed target.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from filtertron.config import RunConfig, load_config
from filtertron.data import SequenceDataset, batch_iterator, open_split
from filtertron.model import build_model
from filtertron.model.attention import functional
from filtertron.model.layout import layer_specs
from filtertron.train import mfu
from filtertron.train.flops import flops_per_token
from filtertron.train.parallelize import param_groups
from filtertron.train.trainer import Trainer

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "gpt2-small"
VARIANTS: dict[str, tuple[str, list[str]]] = {  # name -> (preset, overrides)
    "softmax": ("baseline.yaml", []),
    "bilateral": ("bilateral.yaml", []),
    "twicing-last2": ("twicing.yaml", []),
    "twicing-all": ("twicing.yaml", ["model.attention.twicing.layers=all"]),
    "grc": ("grc.yaml", []),
}
MODES = ("eager", "compiled")
SIDES = ("trainer", "plain")
# Most informative first: after the first three cases the trainer's overhead (softmax, both
# sides, eager) and bilateral beside softmax are known; the fourth gives MFU compiled. Then
# the compiled overhead and bilateral, the other variants on the trainer, the rest.
HEAD = [
    ("softmax", "plain", "eager"),
    ("softmax", "trainer", "eager"),
    ("bilateral", "trainer", "eager"),
    ("softmax", "trainer", "compiled"),
    ("softmax", "plain", "compiled"),
    ("bilateral", "trainer", "compiled"),
    ("twicing-last2", "trainer", "eager"),
    ("twicing-all", "trainer", "eager"),
    ("grc", "trainer", "eager"),
]
PLAN = HEAD + [(v, s, m) for m in MODES for s in SIDES for v in VARIANTS if (v, s, m) not in HEAD]
# A case's cost class: its mode, and whether its attention is plain softmax (SDPA, nothing to
# compile when eager) or a kernel compiled per shape (flex, Triton). Seconds a case of each
# class takes (setup, compilation, steps) until one has been measured; then the largest seen.
SOFTMAX_ONLY = ("softmax", "grc")
PRIOR_COST = {
    ("eager", "softmax"): 15.0,
    ("eager", "kernel"): 35.0,
    ("compiled", "softmax"): 50.0,
    ("compiled", "kernel"): 70.0,
}
TARGET_OVERHEAD, TARGET_MFU, TARGET_BILATERAL = 0.95, 0.40, 0.90


def cost_class(variant: str, mode: str) -> tuple[str, str]:
    return mode, "softmax" if variant in SOFTMAX_ONLY else "kernel"


class OutOfTime(BaseException):
    """SIGTERM arrived (a caller's time limit): stop measuring, report what was measured."""


def _out_of_time(signum, frame) -> None:
    raise OutOfTime


def variant_config(name: str, overrides: list[str]) -> RunConfig:
    preset, extra = VARIANTS[name]
    return load_config(PRESETS / preset, [*extra, *overrides])


def impls_of(cfg: RunConfig, device: torch.device) -> str:
    """What ``auto`` (or the configured impl) runs per layer kind, with grad: "sdpa" or
    "softmax:sdpa twicing:flex"."""
    att = cfg.model.attention
    kinds = dict.fromkeys(spec.attention for spec in layer_specs(cfg.model))
    got = {
        k: functional.resolve_impl(
            att.impl, device, k, att.twicing.base, True, cfg.model.dropout > 0
        )
        for k in kinds
    }
    if len(set(got.values())) == 1:
        return next(iter(got.values()))
    return " ".join(f"{k}:{v}" for k, v in got.items())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lr_lambda(t):
    def lr_at(step: int) -> float:  # linear warmup, then cosine to min_lr (the trainer's shape)
        if step < t.warmup:
            return step / max(1, t.warmup)
        frac = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
        ratio = t.min_lr / t.lr
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return lr_at


def plain_loop(cfg: RunConfig, device: torch.device) -> list[float]:
    """Step times (s) of the hand-written loop: fp32 weights, bf16 autocast, fused AdamW."""
    t = cfg.train
    train = SequenceDataset(
        open_split(cfg.data.paths[0], cfg.data.train_split), cfg.model.seq_len, seed=t.seed
    )
    torch.manual_seed(t.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.AdamW(
        param_groups(model, t.weight_decay),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        eps=1e-8,
        fused=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(t))
    if t.compile:  # static shapes, as train.compile does (parallelize.compile_model)
        model.compile(dynamic=False)
    it = batch_iterator(train, t.micro_batch_size, pin_memory=device.type == "cuda")
    stamps = []
    for _ in range(t.steps):
        for _ in range(t.grad_accum):
            batch = next(it).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(batch[:, :-1], batch[:, 1:]) / t.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        float(loss.detach())  # the loss reaches the host, as the trainer's logging does
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


class _StampedTrainer(Trainer):
    """The trainer, stamped each time it logs a training step; no validation, no checkpoint
    files (neither is part of a step, and writing 1.5 GB of optimizer state would only cost
    the budget)."""

    stamps: list[float]

    def _log(self, metrics: dict) -> None:
        if "loss" in metrics:
            self.stamps.append(time.perf_counter())
        super()._log(metrics)

    def validate(self) -> float:
        return float("nan")

    def save(self, consolidate: bool = False) -> Path:
        return self.ckpt_root


def trainer_loop(cfg: RunConfig, device: torch.device) -> list[float]:
    """Step times (s) of :class:`Trainer` (gaps between its per-step log calls)."""
    tr = _StampedTrainer(cfg)
    tr.stamps = []
    if tr.runner.device.type != device.type:
        raise RuntimeError(f"the trainer runs on {tr.runner.device}, not {device}")
    tr.run()
    stamps = tr.stamps
    del tr
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def case_config(variant: str, side: str, mode: str, args, run_dir: str) -> RunConfig:
    return variant_config(
        variant,
        [
            f"data.path={args.data}",
            f"train.steps={args.warmup + args.steps + 1}",
            f"train.micro_batch_size={args.batch}",
            f"train.grad_accum={args.grad_accum}",
            f"train.compile={mode == 'compiled'}",
            f"train.log_every={args.warmup + args.steps + 1}",
            f"train.out_dir={run_dir}",
            "train.save_every=0",
            "eval.every=0",
            *args.overrides,
        ],
    )


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_case(variant: str, side: str, mode: str, args, device: torch.device) -> dict[str, Any]:
    """One (variant, side, mode): its row of the table (``error`` set if it raised)."""
    torch._dynamo.reset()  # fresh guards: earlier models' compiles must not count as recompiles
    _release(device)
    row: dict[str, Any] = {"variant": variant, "side": side, "mode": mode}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as run_dir:
        cfg = case_config(variant, side, mode, args, run_dir)
        row["impl"] = impls_of(cfg, device)
        tokens = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.model.seq_len
        try:
            gaps = (trainer_loop if side == "trainer" else plain_loop)(cfg, device)
            _sync(device)
            step = statistics.median(gaps[args.warmup :])
            tps = tokens / step
            peak = mfu.peak_for(cfg, device)
            row.update(
                ms_per_step=1e3 * step,
                tokens_per_s=tps,
                mfu=tps * flops_per_token(cfg.model) / peak.flops,
                peak=f"{peak.flops / 1e12:.4g} TFLOP/s ({peak.source})",
                steps_timed=len(gaps[args.warmup :]),
            )
            if device.type == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except Exception as err:  # recorded in the table; the other cases still run
            first = (str(err).splitlines() or [""])[0][:300]
            row["error"] = f"{type(err).__name__}: {first}"
            traceback.print_exc()
    row["seconds"] = time.perf_counter() - t0
    _release(device)
    return row


def _find(rows: list[dict], variant: str, side: str, mode: str) -> dict | None:
    for r in rows:
        if (r["variant"], r["side"], r["mode"]) == (variant, side, mode) and "error" not in r:
            return r
    return None


def targets(rows: list[dict]) -> list[tuple[str, str]]:
    """(status, line) for issue 17's targets: PASS, FAIL or NOT-MEASURED."""
    out = []
    for variant in VARIANTS:
        for mode in MODES:
            t, p = _find(rows, variant, "trainer", mode), _find(rows, variant, "plain", mode)
            if t and p:
                r = t["tokens_per_s"] / p["tokens_per_s"]
                out.append(
                    (
                        ("PASS" if r >= TARGET_OVERHEAD else "FAIL"),
                        f"trainer/plain tokens/s, {variant} {mode}: {r:.3f} (>= {TARGET_OVERHEAD})",
                    )
                )
            elif variant == "softmax":
                out.append(("NOT-MEASURED", f"trainer/plain tokens/s, softmax {mode}"))
    best = _find(rows, "softmax", "trainer", "compiled") or _find(
        rows, "softmax", "plain", "compiled"
    )
    if best:
        status = "PASS" if best["mfu"] >= TARGET_MFU else "FAIL"
        out.append(
            (
                status,
                f"softmax MFU compiled ({best['side']}): {100 * best['mfu']:.1f}% "
                f"(>= {100 * TARGET_MFU:.0f}%)",
            )
        )
    else:
        out.append(("NOT-MEASURED", "softmax MFU compiled"))
    pair = next(
        (
            (b, s)
            for mode in ("compiled", "eager")
            for side in SIDES
            if (b := _find(rows, "bilateral", side, mode))
            and (s := _find(rows, "softmax", side, mode))
        ),
        None,
    )
    if pair:
        b, s = pair
        r = b["tokens_per_s"] / s["tokens_per_s"]
        out.append(
            (
                ("PASS" if r >= TARGET_BILATERAL else "FAIL"),
                f"bilateral/softmax tokens/s ({b['side']} {b['mode']}): {r:.3f} "
                f"(>= {TARGET_BILATERAL})",
            )
        )
    else:
        out.append(("NOT-MEASURED", "bilateral/softmax tokens/s"))
    return out


def markdown(meta: dict, rows: list[dict], skipped: list[str], tgt: list[tuple[str, str]]) -> str:
    lines = [
        f"# Training throughput, {meta['shape']}, {meta['device_name']}",
        "",
        f"{meta['tokens_per_step']:,} tokens/step (B = {meta['batch']} x grad_accum "
        f"{meta['grad_accum']} x T), median of {meta['steps']} steps after {meta['warmup']} "
        f"warm-up steps; torch {meta['torch']}. MFU against {meta['peak']}.",
        "",
        "| variant | impl | side | mode | ms/step | tokens/s | MFU | trainer/plain | memory "
        "| case s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['variant']} | {r['impl']} | {r['side']} | {r['mode']} | "
                f"error: {r['error']} | | | | | {r['seconds']:.0f} |"
            )
            continue
        other = _find(rows, r["variant"], "plain", r["mode"])
        ratio = (
            f"{r['tokens_per_s'] / other['tokens_per_s']:.3f}"
            if r["side"] == "trainer" and other
            else ""
        )
        mem = f"{r['max_memory_gib']:.1f} GiB" if "max_memory_gib" in r else ""
        lines.append(
            f"| {r['variant']} | {r['impl']} | {r['side']} | {r['mode']} | "
            f"{r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | "
            f"{ratio} | {mem} | {r['seconds']:.0f} |"
        )
    lines += ["", *(f"- {status}: {line}" for status, line in tgt)]
    if skipped:
        lines += ["", "Skipped:", *(f"- {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


def summary_line(rows: list[dict], skipped: list[str], tgt: list[tuple[str, str]]) -> str:
    ok = [r for r in rows if "error" not in r]
    head = []
    for variant, side, mode in (
        ("softmax", "trainer", "compiled"),
        ("softmax", "trainer", "eager"),
        ("softmax", "plain", "eager"),
    ):
        r = _find(rows, variant, side, mode)
        if r:
            head.append(
                f"softmax {side} {mode} {r['tokens_per_s']:,.0f} tok/s MFU {100 * r['mfu']:.1f}%"
            )
            break
    counts = {s: sum(1 for st, _ in tgt if st == s) for s in ("PASS", "FAIL", "NOT-MEASURED")}
    return (
        f"{'; '.join(head) or 'no softmax case measured'}; {len(ok)} cases measured, "
        f"{len(rows) - len(ok)} errors, {len(skipped)} skipped; targets {counts['PASS']} PASS, "
        f"{counts['FAIL']} FAIL, {counts['NOT-MEASURED']} not measured"
    )


def run_table(args) -> int:
    """Run the budgeted table (see the module docstring); returns the exit status."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_throughput: --device cuda, but torch.cuda.is_available() is False")
    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # never time an eager fallback
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    plan = [
        c
        for c in PLAN
        if c[0] in variants and c[1] in args.sides.split(",") and c[2] in args.modes.split(",")
    ]
    probe = variant_config(variants[0], [f"data.path={args.data}", *args.overrides])
    meta = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": f"{probe.model.n_layers} layers x {probe.model.d_model}, "
        f"{probe.model.n_heads} heads, T = {probe.model.seq_len}, {probe.train.precision}",
        "batch": args.batch,
        "grad_accum": args.grad_accum,
        "tokens_per_step": args.batch * args.grad_accum * probe.model.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "budget_s": args.budget,
        "peak": "",
    }
    print(
        f"train throughput: {meta['shape']}, {meta['tokens_per_step']:,} tokens/step on "
        f"{meta['device_name']}; {len(plan)} cases, budget {args.budget:.0f}s",
        flush=True,
    )
    rows: list[dict] = []
    skipped: list[str] = []
    cost: dict[tuple[str, str], float] = {}  # cost class -> largest case time seen
    cut, name = None, "the start"
    previous = signal.signal(signal.SIGTERM, _out_of_time)
    try:
        for variant, side, mode in plan:
            left = args.budget - (time.perf_counter() - STARTED)
            key = cost_class(variant, mode)
            need = cost.get(key, PRIOR_COST[key])
            name = f"{variant} {side} {mode}"
            if need > left:
                skipped.append(
                    f"{name}: needs ~{need:.0f}s, {max(left, 0):.0f}s of the budget left"
                )
                print(f"skip {skipped[-1]}", flush=True)
                continue
            row = run_case(variant, side, mode, args, device)
            rows.append(row)
            cost[key] = max(cost.get(key, 0.0), row["seconds"])
            if "error" in row:
                print(f"case {name}: ERROR {row['error']} ({row['seconds']:.0f}s)", flush=True)
            else:
                meta["peak"] = meta["peak"] or row["peak"]
                print(
                    f"case {name} [{row['impl']}]: {row['ms_per_step']:.1f} ms/step, "
                    f"{row['tokens_per_s']:,.0f} tokens/s, MFU {100 * row['mfu']:.1f}% "
                    f"({row['seconds']:.0f}s)",
                    flush=True,
                )
            if out:
                _write(out, meta, rows, skipped)
    except OutOfTime:  # the caller's time limit: keep and report what was measured
        cut = f"{name}: cut off by SIGTERM after {time.perf_counter() - STARTED:.0f}s"
        skipped.append(cut)
        print(f"stop {cut}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    tgt = targets(rows)
    if out:
        _write(out, meta, rows, skipped)
    print(markdown(meta, rows, skipped, tgt), end="")
    for status, line in tgt:
        print(f"TARGET {status} {line}")
    print(f"SUMMARY: {summary_line(rows, skipped, tgt)}", flush=True)
    return 1 if cut or any("error" in r for r in rows) else 0


def _write(out: Path, meta: dict, rows: list[dict], skipped: list[str]) -> None:
    tgt = targets(rows)
    (out / "results.md").write_text(markdown(meta, rows, skipped, tgt))
    doc = {
        "meta": meta,
        "cases": rows,
        "skipped": skipped,
        "targets": [{"status": s, "target": t} for s, t in tgt],
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")


def add_table_arguments(p) -> None:
    """The table mode's options (see the module docstring)."""
    p.add_argument("--budget", type=float, default=100.0, help="seconds for the table mode")
    p.add_argument("--out", default=None, help="folder for results.md and results.json")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--batch", type=int, default=16, help="micro-batch size (sequences)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="steps excluded (compilation)")
    p.add_argument("--data", default=None, help="prepared dataset (default: corpus/sample)")


__all__ = ["PLAN", "VARIANTS", "add_table_arguments", "run_table"]

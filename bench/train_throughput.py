"""Step time of the filtertron training loop against a plain PyTorch loop, same run.

Two modes. ``--device cuda`` (or ``--table`` on a CPU, for a smoke run at a small shape):
the GPT-2 small table of bench/train_table.py (variants x trainer / plain x eager / compiled,
tokens/s and MFU, within ``--budget`` seconds; see that file). Otherwise, on the CPU:

Both sides train the same model (configs/tiny.yaml unless --config), same batches, same AdamW
param groups, clipping and schedule, in one process on this machine. The filtertron side is
the whole loop (parallelize, DeepSpeed engine, non-finite guard, logging, TensorBoard,
progress bar): its step time is the median gap between consecutive steps' log calls. The
plain side is a hand-written loop timed the same way, doing the same math:

- fp32: AdamW on the fp32 weights;
- bf16 (``--precision bf16``): bf16 weights, gradients and compute, fp32 master weights that
  AdamW updates and copies back (what DeepSpeed's bf16 optimizer does);
- compiled (``--compile``): ``model.compile()`` on both sides (train.compile on filtertron's).

Settings run in alternating rounds (filtertron, plain, next setting, ...). Each step is
timed twice: wall clock, and the CPU time of this process (all its threads). On a shared
machine other jobs stretch the wall time of whichever side happens to run while they do; the
CPU time counts only this process's work, so its ratio is the one to read there. Prints, per
setting, both medians, the overhead ratios (target <= 1.05) and MFU against the peak the
trainer uses (filtertron.train.mfu: a measured matmul peak in the training dtype on a CPU).

    python bench/train_throughput.py [--config configs/tiny.yaml] [--steps 40] [--rounds 3]
        [--compile] [--precision fp32,bf16] [--set k=v ...]
    python bench/train_throughput.py --device cuda [--budget 100] [--out DIR] [...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_table import add_table_arguments, run_table

from filtertron.config import load_config
from filtertron.data import batch_iterator
from filtertron.model import build_model
from filtertron.train import mfu
from filtertron.train.flops import flops_per_token
from filtertron.train.parallelize import param_groups
from filtertron.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def prepare_sample(out: Path) -> Path:
    from filtertron.cli import main

    if not (out / "train.bin").exists():
        argv = [
            "prepare",
            "--source",
            str(ROOT / "corpus" / "sample"),
            "--output",
            str(out),
            "--vocab-size",
            "2048",
            "--no-progress",
        ]
        assert main(argv) == 0
    return out


def _schedule(t):
    def lr_at(step: int) -> float:
        if step < t.warmup:
            return step / max(1, t.warmup)
        frac = (step - t.warmup) / max(1, t.steps - t.warmup)
        ratio = t.min_lr / t.lr
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return lr_at


def _gaps(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, cpu) seconds between consecutive (perf_counter, process_time) stamps."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def plain_loop(cfg, train_ds, steps: int) -> list[tuple[float, float]]:
    """(wall, cpu) step times of a hand-written loop in ``cfg.train.precision`` (see the
    module doc)."""
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    model = build_model(cfg.model)
    bf16 = t.precision == "bf16"
    if bf16:
        model = model.to(torch.bfloat16)
        params = [p for p in model.parameters() if p.requires_grad]
        masters = [p.detach().float().clone() for p in params]
        pairs = list(zip(params, masters, strict=True))
        groups = [
            {"params": [m for q, m in pairs if q.dim() >= 2], "weight_decay": t.weight_decay},
            {"params": [m for q, m in pairs if q.dim() < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8)
    else:
        opt = torch.optim.AdamW(
            param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8
        )
    if t.compile:
        model.compile()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(t))
    it = batch_iterator(train_ds, t.micro_batch_size)
    stamps = []
    for _ in range(steps):
        for _ in range(t.grad_accum):
            batch = next(it)
            loss = model(batch[:, :-1], batch[:, 1:]) / t.grad_accum
            loss.backward()
        if bf16:
            for p, m in pairs:
                m.grad = None if p.grad is None else p.grad.float()
            torch.nn.utils.clip_grad_norm_([m for _, m in pairs], t.grad_clip)
            opt.step()
            with torch.no_grad():
                for p, m in pairs:
                    p.copy_(m)
                    p.grad = None
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        float(loss.detach())  # the loss reaches the host, as a logging loop would
        stamps.append(_now())
    return _gaps(stamps)


class TimedTrainer(Trainer):
    """The trainer, stamped (wall, cpu) each time it logs a training step."""

    def _log(self, metrics: dict) -> None:
        if "loss" in metrics:
            self.stamps.append(_now())
        super()._log(metrics)


def filtertron_loop(cfg) -> tuple[list[tuple[float, float]], Trainer]:
    tr = TimedTrainer(cfg)
    tr.stamps = []
    tr.run()
    return _gaps(tr.stamps), tr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--table", action="store_true", help="the table mode on this device")
    p.add_argument("--steps", type=int, default=None, help="timed steps (40; table mode 20)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, bf16")
    p.add_argument("--compile", action="store_true", help="also run compiled (both sides)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    add_table_arguments(p)
    args = p.parse_args()
    if args.device == "cuda" or args.table:
        args.steps = args.steps or 20
        args.data = args.data or str(prepare_sample(ROOT / ".cache" / "bench-data" / "sample"))
        sys.exit(run_table(args))
    args.steps = args.steps or 40
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = prepare_sample(ROOT / ".cache" / "bench-data" / "sample")
    base = load_config(
        args.config,
        [
            f"data.path={data}",
            f"train.steps={args.steps}",
            "train.save_every=0",
            "eval.every=0",
            "eval.batches=1",
            "parallel.zero_stage=0",
            f"train.log_every={args.steps}",
            *args.overrides,
        ],
    )
    settings = [
        (prec, comp)
        for prec in args.precision.split(",")
        for comp in ([False, True] if args.compile else [False])
    ]
    skip = max(1, args.steps // 10)  # warm-up (and compile) steps excluded from both
    times: dict[tuple[str, bool], dict[str, list[tuple[float, float]]]] = {
        s: {"filtertron": [], "plain": []} for s in settings
    }
    for r in range(args.rounds):
        for prec, comp in settings:
            train = dataclasses.replace(
                base.train,
                precision=prec,
                compile=comp,
                out_dir=str(work / f"run-{prec}-{comp}-{r}"),
            )
            cfg = dataclasses.replace(base, train=train)
            steps, tr = filtertron_loop(cfg)
            times[(prec, comp)]["filtertron"] += steps[skip:]
            times[(prec, comp)]["plain"] += plain_loop(cfg, tr.train_ds, args.steps)[skip:]
    tokens = base.train.micro_batch_size * base.train.grad_accum * base.model.seq_len
    fpt = flops_per_token(base.model)
    load = os.getloadavg()
    print(
        f"model: {base.model.n_layers}L d={base.model.d_model} T={base.model.seq_len}, "
        f"{tokens} tokens/step, {torch.get_num_threads()} threads, {args.steps} steps x "
        f"{args.rounds} alternating rounds (first {skip} of each excluded); load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'setting':<15}{'plain ms':>10}{'ft ms':>9}{'ratio':>7}{'plain cpu':>11}{'ft cpu':>9}"
        f"{'ratio':>7}{'tokens/s':>10}{'MFU':>7}  peak"
    )
    for prec, comp in settings:
        t = times[(prec, comp)]
        pl = [statistics.median(x[i] for x in t["plain"]) for i in (0, 1)]
        ft = [statistics.median(x[i] for x in t["filtertron"]) for i in (0, 1)]
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, precision=prec))
        peak = mfu.peak_for(cfg, torch.device("cpu"))
        util = mfu.Utilization(fpt, None, peak, 1)(tokens / ft[0])["mfu"]
        shown = "n/a" if util is None else f"{100 * util:.1f}%"
        name = f"{prec}{' compiled' if comp else ''}"
        print(
            f"{name:<15}{1e3 * pl[0]:>10.1f}{1e3 * ft[0]:>9.1f}{ft[0] / pl[0]:>7.3f}"
            f"{1e3 * pl[1]:>11.1f}{1e3 * ft[1]:>9.1f}{ft[1] / pl[1]:>7.3f}"
            f"{tokens / ft[0]:>10,.0f}{shown:>7}  {peak.flops / 1e9:.1f} GFLOP/s ({peak.source})"
        )
    print("ratio = filtertron / plain median step time, wall clock and CPU time (target <= 1.05)")


if __name__ == "__main__":
    main()

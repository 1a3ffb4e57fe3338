"""Tokens/s of the filtertron training loop against a plain PyTorch loop, same run.

Both sides train the same model (configs/tiny.yaml unless --config), same batches, same AdamW
param groups, clipping and schedule, in one process on this machine. The filtertron side is
the whole loop (DeepSpeed engine, finiteness all-reduce, logging, TensorBoard, progress bar):
its step time is the median gap between consecutive steps' log timestamps. The plain side is
a hand-written loop timed the same way. Prints medians, the overhead ratio (target <= 1.10)
and MFU against this CPU's measured fp32 matmul peak.

    python bench/train_throughput.py [--config configs/tiny.yaml] [--steps 60] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from filtertron.config import load_config
from filtertron.data import batch_iterator
from filtertron.model import build_model
from filtertron.train.flops import flops_per_token
from filtertron.train.mfu import measured_peak_flops
from filtertron.train.parallelize import param_groups
from filtertron.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def prepare_sample(out: Path) -> Path:
    from filtertron.cli import main

    if not (out / "train.bin").exists():
        assert (
            main(
                [
                    "prepare",
                    "--source",
                    str(ROOT / "corpus" / "sample"),
                    "--output",
                    str(out),
                    "--vocab-size",
                    "2048",
                ]
            )
            == 0
        )
    return out


def plain_loop(cfg, train_ds, steps: int) -> list[float]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    t = cfg.train
    opt = torch.optim.AdamW(
        param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8
    )

    def lr_at(step: int) -> float:
        if step < t.warmup:
            return step / max(1, t.warmup)
        frac = (step - t.warmup) / max(1, t.steps - t.warmup)
        ratio = t.min_lr / t.lr
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    it = batch_iterator(train_ds, t.micro_batch_size)
    stamps = []
    for _ in range(steps):
        for _ in range(t.grad_accum):
            batch = next(it)
            loss = model(batch[:, :-1], batch[:, 1:]) / t.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        float(loss.detach())  # the loss reaches the host, as a logging loop would
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def filtertron_loop(cfg) -> tuple[list[float], Trainer]:
    tr = Trainer(cfg)
    tr.run()
    rows = [
        json.loads(x) for x in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    stamps = [r["time"] for r in rows if "time" in r]
    return [b - a for a, b in zip(stamps, stamps[1:])], tr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = prepare_sample(ROOT / ".cache" / "bench-data" / "sample")
    cfg = load_config(
        args.config,
        [
            f"data.path={data}",
            f"train.out_dir={work / 'run'}",
            f"train.steps={args.steps}",
            "train.save_every=0",
            "eval.every=0",
            "eval.batches=1",
            "parallel.zero_stage=0",
            f"train.log_every={args.steps}",
            *args.overrides,
        ],
    )
    # Alternate the two sides so background load on a shared machine hits both alike.
    ft, pl = [], []
    skip = max(1, args.steps // 10)  # warm-up steps excluded from both
    for r in range(args.rounds):
        run_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, out_dir=str(work / f"run{r}"))
        )
        steps, tr = filtertron_loop(run_cfg)
        ft += steps[skip:]
        pl += plain_loop(cfg, tr.train_ds, args.steps)[skip:]
    ft_med, pl_med = statistics.median(ft), statistics.median(pl)
    tokens = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.model.seq_len
    peak = measured_peak_flops()
    fpt = flops_per_token(cfg.model)
    print(
        f"model: {cfg.model.n_layers}L d={cfg.model.d_model} T={cfg.model.seq_len}, "
        f"{tokens} tokens/step, {torch.get_num_threads()} threads, {args.steps} steps "
        f"x {args.rounds} alternating rounds (first {skip} of each excluded)"
    )
    print(f"measured fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'loop':<12}{'median step ms':>16}{'tokens/s':>12}{'MFU':>8}")
    for name, med in (("plain torch", pl_med), ("filtertron", ft_med)):
        tps = tokens / med
        print(f"{name:<12}{1e3 * med:>16.2f}{tps:>12,.0f}{100 * tps * fpt / peak:>7.1f}%")
    print(f"filtertron / plain step time: {ft_med / pl_med:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

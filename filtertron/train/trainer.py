"""The training loop around a runner: the same code for one CPU process or many GPU nodes.

The trainer builds the single-device GPT, hands it to
:func:`~filtertron.train.parallelize.parallelize` (which applies the layout and returns a
runner for DeepSpeed's plain or pipeline engine) and then only asks the runner to step,
validate, save and consolidate: it never asks which layout it runs. ZeRO stage 0-3, bf16 or
fp32, gradient accumulation, clipping, AdamW (decay / no-decay groups), warmup then cosine.
The loop logs to a progress bar, one line per interval, ``metrics.jsonl`` and TensorBoard
(rank 0), validates every ``eval.every`` steps, checkpoints every ``train.save_every`` steps
and at the end, and skips steps whose loss is not finite (stopping after
``train.max_bad_steps`` in a row). MFU and HFU: :mod:`filtertron.train.mfu`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from filtertron import logs
from filtertron.checkpoint import files as ckpt
from filtertron.config import ConfigError, RunConfig, dump_config
from filtertron.model import build_model
from filtertron.model.diagnostics import diagnose, learned_parameters
from filtertron.parallel import collectives
from filtertron.parallel.distributed import DistInfo, init_distributed
from filtertron.parallel.state import layout_for
from filtertron.train import mfu
from filtertron.train.flops import flops_per_token
from filtertron.train.parallelize import parallelize, param_groups

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses."""


__all__ = ["Trainer", "TrainingDiverged", "param_groups"]


def _open_data(cfg: RunConfig, seed: int):
    from filtertron.data import BlendedDataset, SequenceDataset, open_split

    paths = cfg.data.paths
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(
                f"data.path={p!r}: no prepared dataset there "
                "(run `filtertron prepare --source ... --output DIR` first)"
            )
    train = [open_split(p, cfg.data.train_split) for p in paths]
    valid = [open_split(p, cfg.data.valid_split) for p in paths]
    hashes = {t.tokenizer_hash for t in train}
    if len(hashes) > 1:
        raise ConfigError(f"data.path: the datasets use different tokenizers {sorted(hashes)}")
    vocab = max(t.vocab_size for t in train)
    if vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size}: the dataset's tokenizer "
            f"has {vocab} tokens; set model.vocab_size >= {vocab}"
        )
    L = cfg.model.seq_len
    train_seq = [SequenceDataset(t, L, seed=seed) for t in train]
    valid_seq = [SequenceDataset(v, L, seed=0) for v in valid]
    if len(paths) == 1:
        return train_seq[0], valid_seq[0], hashes.pop()
    return (
        BlendedDataset(train_seq, cfg.data.weights or [1.0] * len(paths), seed=seed),
        BlendedDataset(valid_seq, cfg.data.weights or [1.0] * len(paths), seed=0),
        hashes.pop(),
    )


class Trainer:
    """Builds everything, checks everything, then trains. ``run()`` returns final metrics."""

    def __init__(self, cfg: RunConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        with logs.quiet_output():  # DeepSpeed prints while it sets up; see filtertron.logs
            self.dist: DistInfo = init_distributed()
        self.layout = layout_for(cfg, self.dist.world_size)  # checks tp x pp x dp = world
        self.dp_size, self.dp_rank = self.layout.dp_size, self.layout.dp_rank

        # Everything that can be wrong is checked before the first step.
        self.train_ds, self.valid_ds, self.tokenizer_hash = _open_data(cfg, cfg.train.seed)
        self.resume_from = self._choose_resume(resume)

        torch.manual_seed(cfg.train.seed)  # same initial weights whatever the layout
        with logs.quiet_output():
            self.runner = parallelize(build_model(cfg.model), cfg, self.layout)
        self.engine = self.runner.engine
        self.model = self.runner.module
        self.ds_config = self.runner.ds_config

        self.step = 0
        self.consumed = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.tokens_per_step = (
            cfg.train.micro_batch_size * cfg.train.grad_accum * self.dp_size * cfg.model.seq_len
        )
        recomputed = self.runner.recomputed_blocks()
        self.peak = mfu.peak_for(cfg, self.runner.device)
        self.utilization = mfu.Utilization(
            flops_per_token(cfg.model),
            mfu.hardware_flops_per_token(cfg.model, recomputed) if recomputed else None,
            self.peak,
            self.dist.world_size,
        )
        log.info("MFU peak: %.4g TFLOP/s per device (%s)", self.peak.flops / 1e12, self.peak.source)
        self.bad_in_a_row = 0
        self.bad_total = 0
        self.writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # ------------------------------------------------------------------ checkpoints

    def _choose_resume(self, resume: bool) -> ckpt.CheckpointInfo | None:
        """Rank 0 reads the checkpoint directory and every rank follows its choice, so ranks
        never resume from different steps (a checkpoint committed while they looked)."""
        choice = ckpt.latest(self.ckpt_root) if resume else None
        step = collectives.broadcast_object(None if choice is None else choice.step)
        if step is not None:
            choice = next((c for c in ckpt.committed(self.ckpt_root) if c.step == step), None)
            if choice is None:
                raise ConfigError(
                    f"--resume: rank 0 resumes from step {step}, which rank "
                    f"{self.dist.rank} cannot see under {self.ckpt_root}"
                )
            ckpt.check_compatible(choice, self.cfg.to_dict(), self.tokenizer_hash)
            return choice
        if resume:
            log.warning(
                "--resume: no committed checkpoint under %s; starting fresh", self.ckpt_root
            )
        elif ckpt.committed(self.ckpt_root):
            raise ConfigError(
                f"train.out_dir={str(self.out)!r} already holds checkpoints; pass "
                "--resume to continue, or choose another out_dir"
            )
        return None

    def _load(self, info: ckpt.CheckpointInfo) -> None:
        weights_only = bool(info.meta.get("weights_only"))  # written by `filtertron convert`
        self.runner.load_files(self.ckpt_root, info.path.name, weights_only)
        if weights_only:
            # A resharded checkpoint has no optimizer state (ZeRO partitions are tied to a
            # layout): Adam's moments restart, the schedule continues at the step.
            self.runner.restart_schedule_at(info.step)
            log.warning(
                "%s holds weights only (converted from another layout): optimizer state "
                "starts fresh at step %d",
                info.path,
                info.step,
            )
        ckpt.load_rng(info.path, self.dist.rank)
        self.step = info.step
        self.consumed = int(info.meta["consumed_samples"])
        log.info(
            "resumed from %s (step %d, %d samples consumed)", info.path, self.step, self.consumed
        )

    def save(self, consolidate: bool = False) -> Path:
        """Write a checkpoint; with ``consolidate`` also a plain ``model.pt`` state dict (for
        evaluation and conversion, loadable with ``torch.load(weights_only=True)``)."""
        tag = ckpt.tag_for(self.step)
        path = self.ckpt_root / tag
        self.runner.save_files(self.ckpt_root, tag)
        ckpt.save_rng(path, self.dist.rank)
        if consolidate:
            state = self.runner.consolidate(path)
            if self.dist.is_main:
                ckpt.save_model(path, state)
        collectives.barrier()
        if self.dist.is_main:
            ckpt.commit(
                path,
                {
                    "step": self.step,
                    "consumed_samples": self.consumed,
                    "config": self.cfg.to_dict(),
                    "world_size": self.dist.world_size,
                    "tokenizer_hash": self.tokenizer_hash,
                    "time": time.time(),
                },
            )
            ckpt.prune(self.ckpt_root, self.cfg.train.keep_last)
        collectives.barrier()
        return path

    # ------------------------------------------------------------------ the loop

    def batches(self, dataset, start_sample: int = 0):
        """This rank's (B, T + 1) micro-batches of ``dataset`` from ``start_sample``."""
        from filtertron.data import batch_iterator

        return batch_iterator(
            dataset,
            self.cfg.train.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            start_sample=start_sample,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.runner.device.type == "cuda",
        )

    def validate(self) -> float:
        """Mean loss over ``eval.batches`` validation micro-batches per data-parallel rank."""
        return self.runner.validate(self.batches(self.valid_ds), self.cfg.eval.batches)

    def train_step(self, it) -> tuple[float, bool]:
        """One optimizer step from ``it`` (made by ``self.runner.feed``): (loss, applied)."""
        return self.runner.train_step(it)

    def grad_norm(self) -> float:
        return self.runner.grad_norm()

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        step = metrics["step"]
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                self.writer.add_scalar(f"train/{k}" if not k.startswith("val") else k, v, step)

    def _log_learned(self) -> None:
        model = self.runner.whole_model
        if not (self.dist.is_main and model is not None):
            return
        lp = learned_parameters(model)
        for layer, values in lp["h_y"].items():
            for h, v in enumerate(values):
                self.writer.add_scalar(f"bilateral/h_y/layer{layer}/head{h}", v, self.step)
                self.writer.add_scalar(
                    f"bilateral/h_p/layer{layer}/head{h}", lp["h_p"][layer][h], self.step
                )
        for slot, t in lp["t"].items():
            self.writer.add_scalar(f"grc/t/{slot}", t, self.step)

    def _log_uniformity(self) -> None:
        model = self.runner.whole_model
        if not (self.dist.is_main and model is not None):
            return
        batch = self.valid_ds[0][None, :-1].to(self.runner.device)
        d = diagnose(model, batch)
        for layer, s in enumerate(d["token_similarity"]):
            self.writer.add_scalar(f"uniformity/layer{layer}", s, self.step)

    @staticmethod
    def _percent(value: float | None) -> str:
        return "n/a (>100%, see warning)" if value is None else f"{100 * value:.2f}%"

    def run(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to ``train.steps``, validate, save the final (consolidated) checkpoint.

        Args:
            on_step: called with the step number after every logged step (a sweep's
                progress bar when it trains runs in its own process).

        Returns:
            The last step's metrics with the final ``val_loss``.
        """
        from tqdm import tqdm

        cfg = self.cfg.train
        it = self.runner.feed(self.batches(self.train_ds, self.consumed))
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            position=0,  # its own line even beside a sweep's bar (plan "inprocess")
        )
        last: dict[str, Any] = {}
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss, ok = self.train_step(it)
            dt = time.perf_counter() - t0
            self.step += 1
            self.consumed += cfg.micro_batch_size * cfg.grad_accum * self.dp_size
            if ok:
                self.bad_in_a_row = 0
            else:
                self.bad_in_a_row += 1
                self.bad_total += 1
                log.warning(
                    "step %d: non-finite loss %s; update skipped (%d in a row)",
                    self.step,
                    loss,
                    self.bad_in_a_row,
                )
                if self.bad_in_a_row >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"{self.bad_in_a_row} non-finite losses in a row, last at step "
                        f"{self.step} (samples {self.consumed}). Try a lower train.lr "
                        f"(now {cfg.lr}), a longer train.warmup, train.grad_clip, fp32 "
                        f"instead of bf16, or resume from the last checkpoint with --resume"
                    )
            tps = self.tokens_per_step / dt
            last = {
                "step": self.step,
                "loss": loss,
                "lr": self.runner.lr(),
                "grad_norm": self.grad_norm(),
                "tokens_per_s": tps,
                **self.utilization(tps),
                "skipped_steps": self.bad_total,
                "time": time.time(),
            }
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                last["val_loss"] = self.validate()
                self._log_uniformity()
            self._log(last)
            if on_step is not None:
                on_step(self.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{last['lr']:.2e}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_learned()
                if self.dist.is_main:
                    hfu = f" | hfu {self._percent(last['hfu'])}" if "hfu" in last else ""
                    bar.write(
                        f"step {self.step:6d} | loss {loss:.4f} | lr {last['lr']:.3e} | "
                        f"grad {last['grad_norm']:.3f} | {tps:,.0f} tok/s | "
                        f"mfu {self._percent(last['mfu'])}{hfu}"
                    )
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        last["val_loss"] = self.validate()
        self._log({"step": self.step, "val_loss": last["val_loss"]})
        self.save(consolidate=True)
        if self.writer is not None:
            self.writer.close()
        return last

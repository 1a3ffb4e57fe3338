"""The training loop: a DeepSpeed engine around the single-device GPT.

One code path for one CPU process or many GPU nodes: the backend follows the device, the
DeepSpeed config is generated from the run config, ZeRO stage 0-3, bf16 or fp32, gradient
accumulation, clipping, AdamW (decay / no-decay groups), warmup then cosine. The loop logs to
a progress bar, one line per interval, ``metrics.jsonl`` and TensorBoard (rank 0), validates
every ``eval.every`` steps, checkpoints every ``train.save_every`` steps and at the end, and
skips steps whose loss is not finite (stopping after ``train.max_bad_steps`` in a row).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from filtertron.config import ConfigError, RunConfig, dump_config
from filtertron.eval.diagnostics import diagnose, learned_parameters
from filtertron.model import build_model
from filtertron.parallel.distributed import DistInfo, init_distributed
from filtertron.train import checkpoint as ckpt
from filtertron.train import deepspeed_config
from filtertron.train.flops import flops_per_token, measured_peak_flops

log = logging.getLogger("filtertron")


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices and embeddings decay; biases, norms and per-head/per-layer
    scalars (log h_y, log h_p, GRC tau) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


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
        import deepspeed

        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.dist: DistInfo = init_distributed()
        world = self.dist.world_size
        p = cfg.parallel
        self.layout = None
        if p.tp > 1 or p.pp > 1:
            from filtertron.parallel import state

            self.layout = state.initialize(cfg, world)  # validates tp x pp x dp = world
            self.dp_size, self.dp_rank = self.layout.dp_size, self.layout.dp_rank
        else:
            self.dp_size, self.dp_rank = world, self.dist.rank

        # Everything that can be wrong is checked before the first step.
        self.train_ds, self.valid_ds, self.tokenizer_hash = _open_data(cfg, cfg.train.seed)
        self.resume_from = ckpt.latest(self.ckpt_root) if resume else None
        if resume and self.resume_from is None:
            log.warning(
                "--resume: no committed checkpoint under %s; starting fresh", self.ckpt_root
            )
        if self.resume_from is not None:
            ckpt.check_compatible(self.resume_from, cfg.to_dict(), self.tokenizer_hash)
        elif ckpt.committed(self.ckpt_root) and not resume:
            raise ConfigError(
                f"train.out_dir={str(self.out)!r} already holds checkpoints; pass "
                "--resume to continue, or choose another out_dir"
            )

        ds_cfg, overrides = deepspeed_config.build(cfg, self.dp_size)
        for o in overrides:
            log.warning("deepspeed config: %s", o)
        torch.manual_seed(cfg.train.seed)  # same initial weights whatever the layout
        extra: dict[str, Any] = {}
        if p.pp > 1:
            from filtertron.parallel import pipeline

            self.model = pipeline.build_pipeline(cfg, self.layout)
            ds_cfg, _ = deepspeed_config.merge(ds_cfg, pipeline.deepspeed_config_overrides(cfg))
        else:
            self.model = build_model(cfg.model)
            self._setup_activation_checkpointing()
            if p.tp > 1:
                from filtertron.parallel.tensor import apply_tensor_parallel

                apply_tensor_parallel(self.model, cfg.model, p.sequence_parallel)
                extra["mpu"] = self.layout.mpu
        if cfg.train.compile:
            self.model.compile()
        self.ds_config = ds_cfg
        self.engine, *_ = deepspeed.initialize(
            model=self.model,
            model_parameters=param_groups(self.model, cfg.train.weight_decay),
            config=ds_cfg,
            **extra,
        )
        self._skipped = False
        self._grad_norm: float | None = None
        self._wrap_optimizer_step()

        self.step = 0
        self.consumed = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.tokens_per_step = (
            cfg.train.micro_batch_size * cfg.train.grad_accum * self.dp_size * cfg.model.seq_len
        )
        # Whole-model diagnostics need the whole model in this process.
        self.whole_model = p.tp == 1 and p.pp == 1
        self.flops_per_token = flops_per_token(cfg.model)
        self.peak_flops = cfg.train.peak_flops or measured_peak_flops()
        self.bad_in_a_row = 0
        self.bad_total = 0
        self.writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # ------------------------------------------------------------------ set-up helpers

    def _setup_activation_checkpointing(self) -> None:
        ac = self.cfg.train.activation_checkpointing
        if ac == "none":
            return
        import deepspeed

        deepspeed.checkpointing.configure(None, partition_activations=False)
        self.model.checkpoint_fn = deepspeed.checkpointing.checkpoint
        self.model.checkpoint_every = 1 if ac == "every" else int(ac)

    def _wrap_optimizer_step(self) -> None:
        # A step with a non-finite gradient (which a non-finite loss always gives) must not
        # move the weights. Every DeepSpeed optimizer wrapper (plain, bf16, ZeRO 1/2/3,
        # offload, pipeline) ends by calling the basic optimizer's step and copying its fp32
        # state back; skipping that call skips the update. One check serves every layout.
        opt = self.engine.basic_optimizer
        inner = opt.step

        def step(*args, **kwargs):
            if not self._grads_finite(opt):
                self._skipped = True
                return None
            return inner(*args, **kwargs)

        opt.step = step
        if self.cfg.parallel.zero_stage == 0 and self.cfg.train.precision == "fp32":
            # DeepSpeed computes the norm when clipping plain fp32 gradients but drops it.
            from deepspeed.runtime.utils import clip_grad_norm_

            engine = self.engine

            def clip() -> None:
                self._grad_norm = float(
                    clip_grad_norm_(
                        parameters=engine.module.parameters(),
                        max_norm=engine.gradient_clipping(),
                        mpu=engine.mpu,
                    )
                )

            engine.clip_fp32_gradients = clip

    def _grads_finite(self, opt: torch.optim.Optimizer) -> bool:
        local = all(
            bool(torch.isfinite(q.grad).all())
            for group in opt.param_groups
            for q in group["params"]
            if q.grad is not None
        )
        flag = torch.tensor([1.0 if local else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self._grad_norm
        return float("nan") if norm is None else float(norm)

    def _load(self, info: ckpt.CheckpointInfo) -> None:
        weights_only = bool(info.meta.get("weights_only"))  # written by `filtertron convert`
        path, _ = self.engine.load_checkpoint(
            str(self.ckpt_root),
            tag=info.path.name,
            load_module_only=weights_only,
            load_optimizer_states=not weights_only,
            load_lr_scheduler_states=not weights_only,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {info.path}")
        if weights_only:
            # A resharded checkpoint has no optimizer state (ZeRO partitions are tied to a
            # layout): Adam's moments restart, the schedule continues at the step.
            self.engine.lr_scheduler.step(info.step - 1)
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
        self.engine.save_checkpoint(str(self.ckpt_root), tag=tag, save_latest=False)
        path = self.ckpt_root / tag
        ckpt.save_rng(path, self.dist.rank)
        if consolidate:
            p = self.cfg.parallel
            state = None
            if p.pp > 1:
                from filtertron.parallel.convert import consolidate as merge_files

                dist.barrier()  # every stage's files are on disk
                if self.dist.is_main:
                    state = merge_files(path, self.cfg)
            elif p.tp > 1:
                from filtertron.parallel.tensor import full_state_dict

                state = full_state_dict(self.model, self.cfg.model)
            else:
                state = ckpt.gather_state_dict(self.model, p.zero_stage)
            if self.dist.is_main:
                ckpt.save_model(path, state)
        dist.barrier()
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
        dist.barrier()
        return path

    # ------------------------------------------------------------------ the loop

    def _all_mean(self, value: torch.Tensor) -> float:
        v = value.detach().float().clone()
        dist.all_reduce(v)
        return float(v) / self.dist.world_size

    @torch.no_grad()
    def validate(self) -> float:
        from filtertron.data import batch_iterator

        it = batch_iterator(
            self.valid_ds,
            self.cfg.train.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            start_sample=0,
        )
        if self.cfg.parallel.pp > 1:
            from filtertron.parallel.pipeline import split_batches

            # eval_batch runs grad_accum micro-batches and averages over data-parallel ranks.
            n = max(1, math.ceil(self.cfg.eval.batches / self.cfg.train.grad_accum))
            pairs = split_batches(it)
            return sum(float(self.engine.eval_batch(pairs)) for _ in range(n)) / n
        self.engine.eval()
        total = torch.zeros(())
        for _ in range(self.cfg.eval.batches):
            batch = next(it)
            total += self.engine(batch[:, :-1], batch[:, 1:]).float()
        self.engine.train()
        return self._all_mean(total / self.cfg.eval.batches)

    def train_step(self, it) -> tuple[float, bool]:
        """One optimizer step over grad_accum micro-batches from ``it``.

        Returns the loss (mean over micro-batches and data-parallel ranks) and whether the
        update was applied (False: a non-finite loss or gradient skipped it)."""
        self._skipped = False
        if self.cfg.parallel.pp > 1:
            loss = float(self.engine.train_batch(data_iter=it))
        else:
            losses = []
            for _ in range(self.cfg.train.grad_accum):
                batch = next(it)
                micro = self.engine(batch[:, :-1], batch[:, 1:])
                self.engine.backward(micro)
                losses.append(micro.detach().float())
                # DeepSpeed wants step() after every micro-batch; it updates at the boundary.
                self.engine.step()
            loss = self._all_mean(torch.stack(losses).mean())
        # ZeRO 1/2 skip an invalid gradient norm themselves, before our wrapper runs.
        return loss, math.isfinite(loss) and not self._skipped

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
        if not (self.dist.is_main and self.whole_model):
            return
        lp = learned_parameters(self.model)
        for layer, values in lp["h_y"].items():
            for h, v in enumerate(values):
                self.writer.add_scalar(f"bilateral/h_y/layer{layer}/head{h}", v, self.step)
                self.writer.add_scalar(
                    f"bilateral/h_p/layer{layer}/head{h}", lp["h_p"][layer][h], self.step
                )
        for slot, t in lp["t"].items():
            self.writer.add_scalar(f"grc/t/{slot}", t, self.step)

    def _log_uniformity(self) -> None:
        if not (self.dist.is_main and self.whole_model):
            return
        batch = self.valid_ds[0][None, :-1]
        d = diagnose(self.model, batch)
        for layer, s in enumerate(d["token_similarity"]):
            self.writer.add_scalar(f"uniformity/layer{layer}", s, self.step)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        from filtertron.data import batch_iterator

        cfg = self.cfg.train
        it = batch_iterator(
            self.train_ds,
            cfg.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            start_sample=self.consumed,
        )
        if self.cfg.parallel.pp > 1:
            from filtertron.parallel.pipeline import split_batches

            it = split_batches(it)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
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
                "lr": float(self.engine.optimizer.param_groups[0]["lr"]),
                "grad_norm": self.grad_norm(),
                "tokens_per_s": tps,
                "mfu": tps * self.flops_per_token / (self.peak_flops * self.dist.world_size),
                "skipped_steps": self.bad_total,
                "time": time.time(),
            }
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                last["val_loss"] = self.validate()
                self._log_uniformity()
            self._log(last)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{last['lr']:.2e}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_learned()
                if self.dist.is_main:
                    bar.write(
                        f"step {self.step:6d} | loss {loss:.4f} | lr {last['lr']:.3e} | "
                        f"grad {last['grad_norm']:.3f} | {tps:,.0f} tok/s | "
                        f"mfu {100 * last['mfu']:.2f}%"
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

"""Runners: one training step, validation, checkpoint files and consolidation for one engine.

:class:`EngineRunner` drives DeepSpeed's plain engine (data parallel, ZeRO 0-3, tensor
parallel through megatron's mpu); :class:`PipelineRunner` drives its pipeline engine. Both
take the data loader's (B, T + 1) token batches through :meth:`Runner.feed` and return losses
as Python floats averaged over micro-batches and data-parallel ranks. Built by
:func:`filtertron.train.parallelize.parallelize`.

Device: the plain engine does not move inputs, so its runner copies each batch to the
engine's device (CUDA under NCCL); the pipeline engine copies the micro-batches it loads
itself. Every reduction goes through :mod:`filtertron.parallel.collectives`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from filtertron.checkpoint import shards
from filtertron.config import RunConfig
from filtertron.parallel import collectives, deepspeed_workarounds
from filtertron.parallel.state import ParallelLayout
from filtertron.train import masters


class Runner:
    """What the trainer needs from an engine; the layout-specific parts are overridden."""

    def __init__(
        self,
        engine: Any,
        cfg: RunConfig,
        layout: ParallelLayout,
        ds_config: dict[str, Any],
        whole: torch.nn.Module | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.layout = layout
        self.ds_config = ds_config
        # The single-device GPT when this process holds all of it, unpartitioned (for
        # diagnostics that read weights and run forwards on rank 0 alone); else None.
        self.whole_model = whole if cfg.parallel.zero_stage < 3 else None
        self.guard = deepspeed_workarounds.skip_nonfinite_steps(engine)
        if cfg.parallel.zero_stage == 0 and cfg.train.precision == "fp32":
            deepspeed_workarounds.record_fp32_clip_norm(engine, self.guard)

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device)

    @property
    def module(self) -> torch.nn.Module:
        """The module whose parameters train (the GPT, or this stage's PipelineModule)."""
        return self.engine.module

    def feed(self, batches: Iterator[torch.Tensor]) -> Iterator[Any]:
        """Adapt (B, T + 1) token batches to what :meth:`train_step` consumes."""
        raise NotImplementedError

    def recomputed_blocks(self) -> list[int]:
        """Indices of the blocks whose forward activation checkpointing runs twice (all
        stages; collective under pipeline parallelism)."""
        raise NotImplementedError

    def train_step(self, it: Iterator[Any]) -> tuple[float, bool]:
        """One optimizer step over ``train.grad_accum`` micro-batches of ``it``.

        Returns:
            The loss (mean over micro-batches and data-parallel ranks, before the update) and
            whether the update was applied (False: a non-finite loss or gradient skipped it).
        """
        raise NotImplementedError

    def validate(self, batches: Iterator[torch.Tensor], n: int) -> float:
        """Mean validation loss over ``n`` micro-batches per data-parallel rank."""
        raise NotImplementedError

    def consolidate(self, path: Path) -> dict[str, torch.Tensor] | None:
        """The single-device state dict of the model, on global rank 0 (None elsewhere): the
        fp32 master weights in a bf16 run (:mod:`filtertron.train.masters`), never their bf16
        rounding.

        Collective: every rank calls it, after :meth:`save_files` wrote ``path``.
        """
        raise NotImplementedError

    @property
    def bf16(self) -> bool:
        return self.cfg.train.precision == "bf16"

    def grad_norm(self) -> float:
        """The last step's gradient norm before clipping (NaN where DeepSpeed keeps none)."""
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self.guard.clip_norm
        return float("nan") if norm is None else float(norm)

    def lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def save_files(self, root: Path, tag: str) -> None:
        """DeepSpeed's files of this step (model, optimizer, scheduler), every rank."""
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)

    def load_files(self, root: Path, tag: str, weights_only: bool) -> None:
        """Load a step's DeepSpeed files; ``weights_only`` for converted checkpoints."""
        path, _ = self.engine.load_checkpoint(
            str(root),
            tag=tag,
            load_module_only=weights_only,
            load_optimizer_states=not weights_only,
            load_lr_scheduler_states=not weights_only,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
        if weights_only and self.bf16:
            self._restore_masters(root / tag)

    def _restore_masters(self, path: Path) -> None:
        """After a weights-only load DeepSpeed sets a bf16 run's masters to the bf16 module
        weights; a converted checkpoint's model.pt may hold the unrounded fp32 masters."""
        import logging

        log = logging.getLogger(__name__)
        weights = shards.read_weights(path, self.cfg)
        if weights.kind != "fp32 master weights":
            log.warning(
                "resumed from %s: the fp32 master weights start from the bf16 module weights",
                weights.describe(),
            )
            return
        shard = None
        if self.layout.tp_size > 1:
            from filtertron.parallel.tensor import partition_spec, shard_tensor

            spec = partition_spec(
                shards.meta_model(self.cfg), self.cfg.model.vocab_size, self.layout.tp_size
            )

            def shard(name: str, t: torch.Tensor) -> torch.Tensor:
                if name not in spec:
                    return t
                return shard_tensor(t, spec[name], self.layout.tp_rank, self.layout.tp_size)

        n = masters.restore(self.engine, weights.state, shard)
        log.info("restored %d fp32 master weights from %s", n, weights.source)

    def restart_schedule_at(self, step: int) -> None:
        """Move the LR schedule to ``step`` (a weights-only resume has no scheduler state)."""
        self.engine.lr_scheduler.step(step - 1)


class EngineRunner(Runner):
    """DeepSpeed's plain engine: ZeRO 0-3 data parallelism, optionally tensor parallel."""

    def __init__(self, engine: Any, cfg: RunConfig, layout: ParallelLayout, *args, **kwargs):
        super().__init__(engine, cfg, layout, *args, **kwargs)
        deepspeed_workarounds.skip_single_rank_allreduce(
            engine, layout.dp_size, cfg.parallel.zero_stage
        )

    def feed(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        device = self.device
        for batch in batches:
            yield batch.to(device, non_blocking=True)

    def recomputed_blocks(self) -> list[int]:
        gpt = self.module
        if gpt.checkpoint_fn is None:
            return []
        return list(range(0, self.cfg.model.n_layers, gpt.checkpoint_every))  # hidden_states

    def train_step(self, it: Iterator[torch.Tensor]) -> tuple[float, bool]:
        self.guard.skipped = False
        total = torch.zeros((), device=self.device)
        n = self.cfg.train.grad_accum
        for _ in range(n):
            batch = next(it)
            micro = self.engine(batch[:, :-1], batch[:, 1:])
            self.engine.backward(micro)
            total += micro.detach().float()
            # DeepSpeed wants step() after every micro-batch; it updates at the boundary.
            self.engine.step()
        loss = collectives.mean(total / n)
        # ZeRO 1/2 skip a non-finite gradient norm themselves, before the guard runs.
        return loss, math.isfinite(loss) and not self.guard.skipped

    @torch.no_grad()
    def validate(self, batches: Iterator[torch.Tensor], n: int) -> float:
        self.engine.eval()
        total = torch.zeros((), device=self.device)
        for _ in range(n):
            batch = next(batches).to(self.device, non_blocking=True)
            total += self.engine(batch[:, :-1], batch[:, 1:]).float()
        self.engine.train()
        return collectives.mean(total / n)

    def consolidate(self, path: Path) -> dict[str, torch.Tensor] | None:
        local = masters.Masters(self.engine).state_dict(self.module) if self.bf16 else None
        state = shards.gather_live(self.module, self.cfg, local)
        return state if self.layout.rank == 0 else None


class PipelineRunner(Runner):
    """DeepSpeed's pipeline engine (ZeRO 0/1), optionally tensor parallel inside stages."""

    def feed(self, batches: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
        from filtertron.parallel.pipeline import split_batches

        return split_batches(batches)

    def recomputed_blocks(self) -> list[int]:
        from filtertron.parallel.pipeline import BlockPipe

        pipe = self.module
        k = pipe.activation_checkpoint_interval
        mine = torch.zeros(self.cfg.model.n_layers)
        if k:  # PipelineModule.forward: chunks of k local layers, if all are checkpointable
            chunks = range(0, len(pipe.forward_funcs), k)
            for start, ok in zip(chunks, pipe.is_checkpointable_results, strict=False):
                for layer in pipe.forward_funcs[start : start + k] if ok else ():
                    if isinstance(layer, BlockPipe):
                        mine[int(layer.key)] = 1.0
        every = collectives.all_reduce(mine, "max", self.layout.pp_group)
        return [i for i, v in enumerate(every.tolist()) if v]

    def train_step(self, it: Iterator[tuple[torch.Tensor, ...]]) -> tuple[float, bool]:
        self.guard.skipped = False
        loss = float(self.engine.train_batch(data_iter=it))  # mean over dp, on every stage
        return loss, math.isfinite(loss) and not self.guard.skipped

    @torch.no_grad()
    def validate(self, batches: Iterator[torch.Tensor], n: int) -> float:
        from filtertron.parallel.pipeline import split_batches

        # eval_batch averages k micro-batches and then the data-parallel ranks; rounds of
        # grad_accum and one of the remainder score exactly n, weighted by their sizes.
        full, rest = divmod(n, self.cfg.train.grad_accum)
        sizes = [self.cfg.train.grad_accum] * full + ([rest] if rest else [])
        pairs = split_batches(batches)
        total = sum(k * float(self.engine.eval_batch(pairs, num_micro_batches=k)) for k in sizes)
        return total / n

    def consolidate(self, path: Path) -> dict[str, torch.Tensor] | None:
        source = path
        if self.bf16:  # the stages write their fp32 masters beside DeepSpeed's files
            source = path / "fp32_masters.tmp"
            lay = self.layout
            masters.write_stage_masters(
                self.engine, source, lay.pp_rank, lay.tp_rank, write=lay.dp_rank == 0
            )
        collectives.barrier()  # every stage's files are on disk
        if self.layout.rank != 0:
            return None
        state = shards.consolidate(source, self.cfg)
        if source != path:
            shutil.rmtree(source)
        return state

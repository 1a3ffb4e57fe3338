"""Gloo process groups for the parallelism tests, their tiny configs and training jobs.

:func:`spawn` runs ``fn(rank, world_size, *args)`` on ``nprocs`` spawned processes (one thread
each) joined by gloo through ``filtertron.parallel.distributed`` and returns what each rank
returned; a failing rank's traceback is raised in the test. Processes are pooled per world size
for the session (see :class:`_Pool`).
"""

from __future__ import annotations

import io
import os
import queue
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from filtertron.config import RunConfig, load_config

TINY = {
    "model.n_layers": 2,
    "model.d_model": 32,
    "model.n_heads": 4,
    "model.seq_len": 16,
    "model.vocab_size": 50,
    "model.attention.impl": "reference",
    "train.seed": 1234,
}


def tiny_config(*overrides: str, **parallel: object) -> RunConfig:
    """A 2-layer, d=32, 4-head, T=16, V=50 model; ``parallel`` sets parallel.* keys."""
    base = [f"{k}={v}" for k, v in TINY.items()]
    base += [f"parallel.{k}={v}" for k, v in parallel.items()]
    return load_config(None, base + list(overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Pool:
    """``nprocs`` spawned processes joined by gloo once, running jobs one after another.

    Starting a process costs ~10 s here (importing torch, DeepSpeed and megatron-core), so the
    tests share one pool per world size instead of spawning per job.
    """

    def __init__(self, nprocs: int) -> None:
        ctx = mp.get_context("spawn")
        self.n = nprocs
        self.tasks = [ctx.SimpleQueue() for _ in range(nprocs)]
        self.results = ctx.Queue()
        port = _free_port()
        self.procs = [
            ctx.Process(
                target=_serve, daemon=True, args=(r, nprocs, port, self.tasks[r], self.results)
            )
            for r in range(nprocs)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn, args: tuple, timeout: float) -> list:
        for q in self.tasks:
            q.put((fn, args))
        out: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(out) < self.n:
            try:
                rank, ok, payload = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{fn.__name__} on {self.n} ranks: ranks {dead} died, "
                        f"ranks {sorted(out)} done, {timeout} s limit"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"{fn.__name__} failed on rank {rank}:\n{payload}")
            out[rank] = torch.load(io.BytesIO(payload), weights_only=False)
        return [out[r] for r in range(self.n)]

    def close(self) -> None:
        for q, p in zip(self.tasks, self.procs):
            if p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def _serve(rank: int, world: int, port: int, tasks, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from deepspeed.utils import groups

    from filtertron.parallel.distributed import init_distributed

    init_distributed()
    while (task := tasks.get()) is not None:
        fn, args = task
        groups.mpu = None  # DeepSpeed keeps the last engine's mpu in a global; start clean
        try:
            buf = io.BytesIO()
            torch.save(fn(rank, world, *args), buf)
            results.put((rank, True, buf.getvalue()))
        except BaseException:
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


_POOLS: dict[int, _Pool] = {}


def spawn(fn, nprocs: int, *args, timeout: float = 300.0) -> list:
    """Run ``fn(rank, nprocs, *args)`` on ``nprocs`` gloo ranks; return the results by rank.

    ``fn`` must be importable (a module-level function). A failed or timed-out job discards
    its pool (its ranks may be stuck in a collective); the next job starts a fresh one.
    """
    pool = _POOLS.get(nprocs) or _POOLS.setdefault(nprocs, _Pool(nprocs))
    try:
        return pool.run(fn, args, timeout)
    except BaseException:
        _POOLS.pop(nprocs).close()
        raise


@pytest.fixture(scope="session", autouse=True)
def _close_pools():
    yield
    while _POOLS:
        _POOLS.popitem()[1].close()


def batches(
    n: int, micro_batch: int, seq_len: int = 16, vocab: int = 50, seed: int = 3
) -> list[torch.Tensor]:
    """``n`` random (micro_batch, seq_len + 1) token batches, identical in every process."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (micro_batch, seq_len + 1), generator=g) for _ in range(n)]


def param_groups(params) -> list[dict]:
    """AdamW groups as the trainer makes them: matrices decay, vectors do not."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


LR, CLIP, BETAS = 1e-2, 0.05, (0.9, 0.95)


def ds_config(cfg: RunConfig, dp: int, micro_batch: int, grad_accum: int) -> dict:
    """A DeepSpeed config with AdamW and clipping that bites (grad norms here are ~1)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * dp,
        "gradient_clipping": CLIP,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": LR, "betas": list(BETAS), "eps": 1e-8, "torch_adam": True},
        },
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "steps_per_print": 10**9,
        "pipeline": {"pipe_partitioned": False, "grad_partitioned": False},
    }


def reference_training(
    cfg: RunConfig, data: list[torch.Tensor], grad_accum: int, steps: int
) -> tuple[list[float], list[float]]:
    """The independent single-process reference: plain PyTorch AdamW on the whole GPT.

    Returns the loss of every step (mean over its micro-batches, before the update) and the
    gradient norm before clipping.
    """
    from filtertron.model import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(param_groups(model.parameters()), lr=LR, betas=BETAS, eps=1e-8)
    losses, norms = [], []
    for s in range(steps):
        total = 0.0
        for b in data[s * grad_accum : (s + 1) * grad_accum]:
            loss = model(b[:, :-1], b[:, 1:]) / grad_accum
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses, norms


STEPS, GAS, MB = 3, 2, 2  # training runs: 3 steps of 2 micro-batches of 2 sequences


def build_engine(cfg: RunConfig, world: int):
    """A DeepSpeed engine for ``cfg``: PipelineModule when pp > 1, else the (TP) GPT."""
    import deepspeed

    from filtertron.model import build_model
    from filtertron.parallel import pipeline, state, tensor

    layout = state.initialize(cfg, world)
    if cfg.parallel.pp > 1:
        model = pipeline.build_pipeline(cfg, layout)
        mpu = None
    else:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
        if cfg.parallel.tp > 1:
            tensor.apply_tensor_parallel(model, cfg.model, cfg.parallel.sequence_parallel)
        mpu = layout.mpu
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model.parameters()),
        config=ds_config(cfg, layout.dp_size, MB, GAS),
        mpu=mpu,
    )
    return engine, layout


def train_step(engine, cfg: RunConfig, it) -> float:
    """One optimizer step of GAS micro-batches; the mean loss (computed before the update)."""
    if cfg.parallel.pp > 1:
        return engine.train_batch(it).item()
    total = 0.0
    for _ in range(GAS):
        idx, tgt = next(it)
        loss = engine(idx, tgt)
        engine.backward(loss)
        engine.step()
        total += loss.item() / GAS
    return total


def train_job(rank: int, world: int, cfg: RunConfig, ckpt_root: str | None) -> dict:
    """Train STEPS steps; with ``ckpt_root``, checkpoint before the last step.

    Step s uses micro-batches [s GAS dp, (s + 1) GAS dp) of one shared stream, GAS for each
    data-parallel rank, so the global batch equals the reference's with grad_accum = GAS dp.
    Returns this rank's losses (the pipeline engine's are already averaged over dp) and
    DeepSpeed's gradient norms (None where it keeps none).
    """
    from filtertron.checkpoint import files as checkpoint
    from filtertron.parallel.pipeline import split_batches

    engine, layout = build_engine(cfg, world)
    dp = layout.dp_size
    data = batches(STEPS * GAS * dp, MB)
    it = split_batches(b for i, b in enumerate(data) if (i // GAS) % dp == layout.dp_rank)
    losses, norms = [], []
    for step in range(STEPS):
        if ckpt_root is not None and step == STEPS - 1:
            tag = checkpoint.tag_for(step)
            engine.save_checkpoint(ckpt_root, tag=tag, save_latest=False)
            dist.barrier()
            if rank == 0:
                checkpoint.commit(
                    Path(ckpt_root) / tag,
                    {
                        "step": step,
                        "consumed_samples": step * GAS * MB * dp,
                        "config": cfg.to_dict(),
                        "world_size": world,
                        "tokenizer_hash": None,
                    },
                )
            dist.barrier()
        losses.append(train_step(engine, cfg, it))
        norm = engine.get_global_grad_norm()
        norms.append(None if norm is None else float(norm))
    return {
        "losses": losses,
        "norms": norms,
        "pp_rank": layout.pp_rank,
        "tp_rank": layout.tp_rank,
        "dp_rank": layout.dp_rank,
    }


@pytest.fixture(scope="session")
def pp2_run(tmp_path_factory) -> tuple[RunConfig, list[dict], Path]:
    """PP=2 with GRC and tied embeddings, ZeRO-1; checkpointed before its last step."""
    cfg = tiny_config("model.residual.kind=generalized", pp=2, zero_stage=1)
    root = tmp_path_factory.mktemp("pp2") / "checkpoints"
    return cfg, spawn(train_job, 2, cfg, str(root)), root / "step_00000002"


@pytest.fixture(scope="session")
def tp2_run(tmp_path_factory) -> tuple[RunConfig, list[dict], Path]:
    """TP=2 (plain engine, megatron mpu) with GRC, ZeRO-1; checkpointed before its last step."""
    cfg = tiny_config(
        "model.residual.kind=generalized",
        "model.attention.kind=bilateral",
        "model.position=none",
        tp=2,
        zero_stage=1,
    )
    root = tmp_path_factory.mktemp("tp2") / "checkpoints"
    return cfg, spawn(train_job, 2, cfg, str(root)), root / "step_00000002"

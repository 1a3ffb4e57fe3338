"""Every place filtertron works around a DeepSpeed (0.19.8) behaviour, in one file.

Each function names the behaviour it works around. :data:`RELIES_ON` lists the DeepSpeed
attributes these functions (and the pipeline set-up) read or replace;
tests/parallel/test_deepspeed_workarounds.py fails if one disappears in another DeepSpeed
version, so an upgrade shows here, not as a silently wrong gradient norm.

- :func:`skip_nonfinite_steps`: only fp16 loss scaling skips a step on overflow; the plain
  fp32 engine, bf16 and ZeRO-3 apply a NaN/inf gradient to the weights.
- :func:`record_fp32_clip_norm`: the plain fp32 engine computes the gradient norm when it
  clips and drops it (``get_global_grad_norm()`` is then None).
- :func:`skip_single_rank_allreduce`: without ZeRO the engine all-reduces gradients through
  flat buffers even over a data-parallel group of one rank.
- :func:`count_each_gradient_once`: ZeRO-0's pipeline gradient norm counts replicated
  parameters of later stages zero times and a TP-sharded tied embedding twice.
- :func:`release_layer_specs`: ``PipelineModule`` keeps its ``LayerSpec`` arguments (for us,
  the whole model) alive after building the local layers.
- :data:`PIPELINE_CONFIG`: pipeline activation partitioning handles a single tensor without
  another one requiring grad; GRC's y0 and sequence-parallel shards break it.
- :func:`compiled_stages_keep_their_graph`: the pipeline backward retains the graph between
  a stage's outputs, which compiled graphs with donated buffers refuse.
- :func:`unlink_shm_buffer` / :func:`remove_shm_buffers`: the CPU shared-memory all-reduce
  creates ``/dev/shm/deepspeed_allreduce_buffer_*`` files (about 66 MB each) and never
  unlinks them, so every multi-process CPU run leaves them behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from filtertron.parallel import collectives

log = logging.getLogger(__name__)

# (module, dotted attribute) pairs the code below and filtertron.parallel.pipeline rely on.
RELIES_ON: tuple[tuple[str, str], ...] = (
    ("deepspeed.runtime.engine", "DeepSpeedEngine.clip_fp32_gradients"),
    ("deepspeed.runtime.engine", "DeepSpeedEngine.get_global_grad_norm"),
    ("deepspeed.runtime.engine", "DeepSpeedEngine.gradient_clipping"),
    ("deepspeed.runtime.engine", "DeepSpeedEngine.allreduce_gradients"),
    ("deepspeed.runtime.utils", "clip_grad_norm_"),
    ("deepspeed.runtime.constants", "PIPE_REPLICATED"),
    ("deepspeed.runtime.pipe.module", "PipelineModule"),
    ("deepspeed.runtime.pipe.module", "PipelineModule._is_checkpointable"),
    ("deepspeed.runtime.pipe.module", "LayerSpec"),
    ("deepspeed.runtime.pipe.topology", "PipeModelDataParallelTopology"),
    ("deepspeed.comm.torch", "TorchBackend"),
    ("deepspeed.utils.logging", "logger"),
    ("deepspeed.runtime.pipe.engine", "PipelineEngine._exec_backward_pass"),
    ("torch._functorch.config", "donated_buffer"),
)
SHM_PREFIX = "deepspeed_allreduce_buffer"
SHM_DIR = Path("/dev/shm")


class StepGuard:
    """What :func:`skip_nonfinite_steps` saw in the current optimizer step."""

    def __init__(self) -> None:
        self.skipped = False
        self.clip_norm: float | None = None


def grads_finite(opt: torch.optim.Optimizer) -> bool:
    """True if every gradient of ``opt``'s parameters is finite, with one host sync.

    The max-abs norm of each gradient (one foreach kernel) is NaN or inf exactly when the
    gradient holds a NaN or an inf, and cannot overflow; a per-tensor ``isfinite().all()``
    would cost one device synchronisation per parameter on a GPU.
    """
    grads = [q.grad for g in opt.param_groups for q in g["params"] if q.grad is not None]
    if not grads:
        return True
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    peaks = [
        torch.stack(torch._foreach_norm(same, float("inf"))).float().max()
        for same in by_dtype.values()
    ]
    return bool(torch.stack(peaks).isfinite().all())


def skip_nonfinite_steps(engine: Any, group: Any = None) -> StepGuard:
    """Skip the weight update of a step whose gradients are not all finite, on every rank.

    DeepSpeed behaviour: only fp16's loss scaler checks for overflow. The plain fp32 engine,
    bf16 and ZeRO-3 step with NaN or inf gradients; ZeRO 1/2 skip on a non-finite norm
    themselves (and then never call the basic optimizer). Every optimizer wrapper (plain,
    bf16, ZeRO 1/2/3, offload, pipeline) ends by calling the basic optimizer's ``step`` on
    its fp32 state, so skipping that call skips the update: one check serves every layout.
    The verdict is all-reduced (MIN) over ``group`` so all ranks skip together.

    Returns:
        A :class:`StepGuard`; reset ``guard.skipped`` before each step.
    """
    guard = StepGuard()
    opt = engine.basic_optimizer
    inner = opt.step

    def step(*args: Any, **kwargs: Any) -> Any:
        if not collectives.all_true(grads_finite(opt), group):
            guard.skipped = True
            return None
        return inner(*args, **kwargs)

    opt.step = step
    return guard


def record_fp32_clip_norm(engine: Any, guard: StepGuard) -> None:
    """Keep the gradient norm the plain fp32 engine computes when it clips.

    DeepSpeed behaviour: without ZeRO, bf16 or fp16, ``DeepSpeedEngine.clip_fp32_gradients``
    calls ``deepspeed.runtime.utils.clip_grad_norm_`` and discards the norm it returns, so
    ``get_global_grad_norm()`` is None. The replacement does the same call and keeps the norm
    in ``guard.clip_norm``.
    """
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip() -> None:
        norm = clip_grad_norm_(
            parameters=engine.module.parameters(),
            max_norm=engine.gradient_clipping(),
            mpu=engine.mpu,
        )
        guard.clip_norm = float(norm)

    engine.clip_fp32_gradients = clip


def skip_single_rank_allreduce(engine: Any, dp_size: int, zero_stage: int) -> bool:
    """Skip the gradient all-reduce of the plain engine when it has nothing to reduce.

    DeepSpeed behaviour: without ZeRO, ``DeepSpeedEngine.allreduce_gradients`` copies every
    gradient into flat buckets, all-reduces them over the data-parallel group and copies them
    back, also when that group has one rank (a single GPU, or TP without DP), where the
    result is the input (measured: about 5% of a tiny CPU step). Only ZeRO stage 0 is
    touched: ZeRO's optimizers do their bookkeeping inside that call. Returns True if it
    was switched off.
    """
    if dp_size != 1 or zero_stage != 0:
        return False
    engine.enable_backward_allreduce = False
    return True


def count_each_gradient_once(pipe: nn.Module, pp_rank: int, tp_rank: int) -> None:
    """Make DeepSpeed's ZeRO-0 pipeline gradient norm count every gradient exactly once.

    DeepSpeed behaviour: ``deepspeed.runtime.utils.clip_grad_norm_`` (used without ZeRO)
    counts a parameter if it is marked model-parallel, else only on rank 0 of the pipeline
    grid's model-parallel group (pipe x tp): replicated parameters of later stages (norms,
    biases, GRC tau) are left out, and a TP-sharded tied embedding is counted on both stages
    holding it. ZeRO-1 counts by TP rank and skips DeepSpeed's ``ds_pipe_replicated`` copies,
    so these marks change nothing there.
    """
    for p in pipe.parameters():
        if getattr(p, "ds_pipe_replicated", False):
            p.tensor_model_parallel = False  # the first stage's twin is counted
        elif pp_rank > 0 and tp_rank == 0:
            p.model_parallel = True


def release_layer_specs(pipe: nn.Module) -> None:
    """Let the other stages' layers be freed once the ``PipelineModule`` is built.

    DeepSpeed behaviour: ``PipelineModule._layer_specs`` keeps every ``LayerSpec`` with its
    ``module_args``; ours hold the whole model, so every stage would keep every layer alive.
    DeepSpeed reads the arguments only while constructing the module.
    """
    for spec in pipe._layer_specs:
        spec.module_args = ()


def compiled_stages_keep_their_graph() -> None:
    """Let compiled pipeline stages run DeepSpeed's backward.

    DeepSpeed behaviour: ``PipelineEngine._exec_backward_pass`` calls ``backward`` once per
    floating-point output of a stage (ours pass (x, y0)) with ``retain_graph=True`` for all
    but the last, which compiled graphs with donated buffers refuse ("requires
    create_graph=False and retain_graph=False"). Donated buffers (a memory optimisation of
    torch.compile's backward) are switched off for this process.
    """
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False


# DeepSpeed behaviour: pipeline activation partitioning across TP ranks ("pipe_partitioned")
# handles only a first tensor, with no other tensor requiring grad, and splits the local
# tensor: wrong for y0 (which requires grad) and for sequence-parallel shards.
PIPELINE_CONFIG: dict[str, Any] = {
    "pipeline": {"pipe_partitioned": False, "grad_partitioned": False}
}


def shm_buffer_name(addr: str, port: str | int, rank: int, uid: int | None = None) -> str:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for one rank.

    ``ops/csrc/cpu/comm/shm.cpp``: ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_
    {MASTER_PORT}_{rank}``.
    """
    return f"{SHM_PREFIX}_{os.getuid() if uid is None else uid}_{addr}_{port}_{rank}"


def unlink_shm_buffer(rank: int, env: dict[str, str] | None = None) -> bool:
    """Unlink this rank's shared-memory all-reduce buffer once every rank has mapped it.

    DeepSpeed behaviour: ``TorchBackend.__init__`` (``deepspeed.init_distributed``) creates
    one buffer per rank and maps every peer's, waiting until they exist; it unlinks them only
    in ``shared_close``, which nothing calls. After a barrier every rank holds its mappings,
    so the names can go: the memory lives until the last process exits, also on SIGKILL.
    Call on every rank after ``init_distributed``. Returns True if a file was removed.
    """
    env = os.environ if env is None else env
    if "LOCAL_SIZE" not in env:  # DeepSpeed's launcher sets it; without it no shm is used
        return False
    collectives.barrier()
    path = SHM_DIR / shm_buffer_name(env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""), rank)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("could not remove %s (DeepSpeed's shared-memory buffer): %s", path, e)
        return False


def remove_shm_buffers(addr: str, port: str | int) -> list[str]:
    """Remove the buffers a run with this rendezvous address and port left behind (a rank
    that died during start-up, before :func:`unlink_shm_buffer`). Returns the names removed;
    warns about any that cannot be removed."""
    removed = []
    for path in SHM_DIR.glob(f"{SHM_PREFIX}_{os.getuid()}_{addr}_{port}_*"):
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s (DeepSpeed's shared-memory buffer): %s", path, e)
    return removed


def quiet_deepspeed_logger(handler_filter: Callable[[logging.Handler], bool]) -> None:
    """Route DeepSpeed's log records through the root logger.

    DeepSpeed behaviour: ``deepspeed.utils.logging.logger`` ("DeepSpeed") has its own stdout
    handler and ``propagate=False``, so its INFO/WARNING lines bypass any logging set-up.
    Handlers for which ``handler_filter`` is true are removed and the records propagate.
    """
    from deepspeed.utils.logging import logger

    for h in list(logger.handlers):
        if handler_filter(h):
            logger.removeHandler(h)
    logger.propagate = True

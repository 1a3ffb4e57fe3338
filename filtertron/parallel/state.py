"""Process groups for tensor (TP), pipeline (PP) and data (DP) parallelism, and their checks.

    world_size = tp x pp x dp,   rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank

TP is the fastest-varying axis (tensor-parallel peers are neighbours, i.e. on one node), then
DP, then PP. This is megatron-core's default order ("tp-cp-ep-dp-pp") and the order of
DeepSpeed's ``PipeModelDataParallelTopology`` (axes pipe, data, model), so the megatron groups
used inside a stage and the DeepSpeed pipeline grid agree on every rank's coordinates.

:func:`initialize` builds megatron's ``parallel_state`` groups on the current default process
group and returns a :class:`ParallelLayout`. Under pp = 1 DeepSpeed's plain engine needs to be
told which ranks are data-parallel peers: pass ``layout.mpu`` as ``deepspeed.initialize(mpu=)``.
Under pp > 1 the ``PipelineModule`` carries its own grid (and DeepSpeed refuses an mpu).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from filtertron.config import ConfigError, RunConfig
from filtertron.parallel import megatron_cpu


def validate(cfg: RunConfig, world_size: int) -> int:
    """Check that the world fits ``cfg.parallel``; return the DP size.

    The rules within the config (tp divides the heads, pp at most the layers, sequence
    parallelism, ZeRO with pp) were checked when it was loaded (:class:`RunConfig`).

    Raises:
        ConfigError: naming the numbers that do not fit.
    """
    p = cfg.parallel
    if world_size < 1 or world_size % (p.tp * p.pp):
        raise ConfigError(
            f"world size {world_size} must equal tp x pp x dp: parallel.tp={p.tp} "
            f"x parallel.pp={p.pp} = {p.tp * p.pp} does not divide {world_size}"
        )
    return world_size // (p.tp * p.pp)


def coordinates(rank: int, tp: int, pp: int, dp: int) -> tuple[int, int, int]:
    """(tp_rank, pp_rank, dp_rank) of a global rank in the layout described above."""
    return rank % tp, rank // (tp * dp), (rank // tp) % dp


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits: sizes, ranks and the process groups of each axis."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    tp_group: Any = field(repr=False)
    pp_group: Any = field(repr=False)
    dp_group: Any = field(repr=False)
    sequence_parallel: bool = False

    @property
    def mpu(self) -> DeepSpeedMPU:
        """The model-parallel unit DeepSpeed's plain engine expects (pp = 1 only)."""
        return DeepSpeedMPU(self)

    @property
    def model_parallel(self) -> bool:
        """True when the model is split over processes (tp > 1 or pp > 1)."""
        return self.tp_size > 1 or self.pp_size > 1

    def topology(self):
        """DeepSpeed's topology for this layout (rank order identical to megatron's)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(
            num_pp=self.pp_size, num_mp=self.tp_size, num_dp=self.dp_size
        )


class DeepSpeedMPU:
    """DeepSpeed's ``mpu`` interface over the megatron groups (model parallel = tensor parallel).

    It deliberately has no ``get_sequence_parallel_*`` methods: DeepSpeed reads those as
    Ulysses sequence parallelism, which is not Megatron's sequence parallelism.
    """

    def __init__(self, layout: ParallelLayout) -> None:
        self.layout = layout

    def get_model_parallel_rank(self) -> int:
        return self.layout.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.layout.tp_size

    def get_model_parallel_group(self):
        return self.layout.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.layout.rank - self.layout.tp_rank

    def get_data_parallel_rank(self) -> int:
        return self.layout.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.layout.dp_size

    def get_data_parallel_group(self):
        return self.layout.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.layout.dp_group)

    def get_pipeline_model_parallel_rank(self) -> int:
        return self.layout.pp_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.layout.pp_size


def initialize(cfg: RunConfig, world_size: int) -> ParallelLayout:
    """Validate the layout and create megatron's TP / PP / DP groups on the default group.

    torch.distributed must be initialised (``filtertron.parallel.distributed.init_distributed``).
    Idempotent for the same sizes; megatron's groups are rebuilt if the sizes differ.

    Args:
        cfg: the run config (``parallel.tp``, ``parallel.pp``, ``parallel.sequence_parallel``).
        world_size: the number of processes, ``torch.distributed.get_world_size()``.

    Returns:
        This process's :class:`ParallelLayout`.

    Raises:
        ConfigError: if tp does not divide the heads, pp exceeds the layers, or tp x pp does
            not divide the world size (the message names the numbers).
    """
    dp = validate(cfg, world_size)
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised; call init_distributed() first")
    if dist.get_world_size() != world_size:
        raise ConfigError(
            f"world size {world_size} given, but torch.distributed has "
            f"{dist.get_world_size()} processes"
        )
    megatron_cpu.install()
    from megatron.core import parallel_state as ps

    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    if ps.model_parallel_is_initialized() and (
        ps.get_tensor_model_parallel_world_size() != tp
        or ps.get_pipeline_model_parallel_world_size() != pp
    ):
        ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        # No extra gloo copies of every group: filtertron uses none of megatron's CPU-side
        # helpers that need them, and creating them doubles start-up time on gloo.
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            create_gloo_process_groups=False,
        )
    rank = dist.get_rank()
    tp_rank, pp_rank, dp_rank = coordinates(rank, tp, pp, dp)
    assert (tp_rank, pp_rank, dp_rank) == (
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(),
        ps.get_data_parallel_rank(),
    ), "rank order mismatch"
    return ParallelLayout(
        rank=rank,
        world_size=world_size,
        tp_rank=tp_rank,
        tp_size=tp,
        pp_rank=pp_rank,
        pp_size=pp,
        dp_rank=dp_rank,
        dp_size=dp,
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(),
        sequence_parallel=cfg.parallel.sequence_parallel,
    )


def layout_for(cfg: RunConfig, world_size: int) -> ParallelLayout:
    """This process's layout: :func:`initialize` when tensor or pipeline parallel, else plain
    data parallelism over the default group (no megatron-core groups are created).

    Raises:
        ConfigError: if the world size does not fit the layout.
    """
    if cfg.parallel.tp > 1 or cfg.parallel.pp > 1:
        return initialize(cfg, world_size)
    dp = validate(cfg, world_size)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return ParallelLayout(
        rank=rank,
        world_size=world_size,
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        dp_rank=rank,
        dp_size=dp,
        tp_group=None,
        pp_group=None,
        dp_group=None,
    )

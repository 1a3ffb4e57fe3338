"""Layout validation (messages name the numbers), rank order, and the megatron CPU shim."""

from __future__ import annotations

import pytest
import torch

from filtertron.config import ConfigError
from filtertron.parallel import megatron_cpu, state
from tests.parallel.conftest import spawn, tiny_config


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match=r"parallel.tp=3.*n_heads=4"):
        tiny_config(tp=3)


def test_pp_must_not_exceed_layers():
    with pytest.raises(ConfigError, match=r"parallel.pp=3.*n_layers=2"):
        tiny_config(pp=3)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_rejected_with_pp_at_load(stage):
    with pytest.raises(ConfigError, match=rf"zero_stage={stage}.*ZeRO 0 or 1"):
        tiny_config(pp=2, zero_stage=stage)


def test_world_size_must_be_tp_x_pp_x_dp():
    cfg = tiny_config(tp=2, pp=2)
    with pytest.raises(ConfigError, match=r"world size 6 .*tp=2 x parallel.pp=2 = 4"):
        state.validate(cfg, 6)
    assert state.validate(cfg, 8) == 2
    assert state.validate(tiny_config(), 3) == 3


def test_sequence_parallel_needs_seq_len_divisible_by_tp_at_load():
    with pytest.raises(ConfigError, match=r"parallel.sequence_parallel.*seq_len=15"):
        tiny_config("model.seq_len=15", "model.position=rotary", tp=2, sequence_parallel=True)


def test_bf16_pipeline_needs_zero_1_at_load():
    with pytest.raises(ConfigError, match=r"parallel.zero_stage=0.*bf16.*ZeRO-1"):
        tiny_config("train.precision=bf16", pp=2, zero_stage=0)
    tiny_config("train.precision=bf16", pp=2, zero_stage=1)


@pytest.mark.parametrize("tp,pp,dp", [(2, 2, 2), (2, 1, 3), (1, 2, 2), (4, 1, 1)])
def test_rank_order_matches_deepspeed_topology(tp, pp, dp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    for rank in range(tp * pp * dp):
        c = topo.get_coord(rank)
        assert state.coordinates(rank, tp, pp, dp) == (c.model, c.pipe, c.data)


def _layout_and_shim_job(rank: int, world: int) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel as mtp

    cfg = tiny_config(tp=2)
    layout = state.initialize(cfg, world)
    # the megatron helpers that name CUDA, now on the CPU
    buf = ps.get_global_memory_buffer().get_tensor([4, 3], torch.float32, "test")
    mtp.model_parallel_cuda_manual_seed(123)
    torch.manual_seed(7)
    before = torch.rand(3)
    with mtp.get_cuda_rng_tracker().fork():
        forked = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(7)
    x = torch.arange(4.0).view(2, 2) + 10 * layout.tp_rank
    gathered = mtp.gather_from_sequence_parallel_region(x, group=layout.tp_group)
    scattered = mtp.reduce_scatter_to_sequence_parallel_region(
        gathered.clone(), group=layout.tp_group
    )
    return {
        "tp": (layout.tp_rank, layout.tp_size),
        "pp": (layout.pp_rank, layout.pp_size),
        "dp": (layout.dp_rank, layout.dp_size),
        "mpu_dp": layout.mpu.get_data_parallel_rank(),
        "buf_device": str(buf.device),
        "before": before,
        "forked": forked,
        "after": after,
        "fresh": torch.rand(6),
        "gathered": gathered,
        "scattered": scattered,
        "active": megatron_cpu.status().active,
    }


@pytest.mark.distributed
def test_layout_groups_and_megatron_cpu_shim():
    results = spawn(_layout_and_shim_job, 2)
    for rank, r in enumerate(results):
        assert (r["tp"], r["pp"], r["dp"]) == ((rank, 2), (0, 1), (0, 1)) and r["active"]
        assert r["buf_device"] == "cpu"
        # the fork draws from the TP-rank's own stream and leaves the default stream where it
        # was: before/after continue one sequence as if the fork never happened
        torch.testing.assert_close(torch.cat([r["before"], r["after"]]), r["fresh"])
        assert not torch.equal(r["forked"], r["before"])
        tp_peer = results[rank ^ 1]
        assert not torch.equal(r["forked"], tp_peer["forked"])  # differs across TP ranks
        # all-gather over dim 0, then reduce-scatter of the (identical) gathered tensor
        expected = torch.cat([torch.arange(4.0).view(2, 2), torch.arange(4.0).view(2, 2) + 10])
        torch.testing.assert_close(r["gathered"], expected)
        torch.testing.assert_close(r["scattered"], 2 * expected.chunk(2)[r["tp"][0]])


def test_shim_is_a_no_op_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert megatron_cpu.install() is False

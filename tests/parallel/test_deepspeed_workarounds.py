"""The attributes DeepSpeed workarounds and the megatron-core CPU shim rely on still exist, and
the shared-memory clean-up removes exactly its own files."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from filtertron.parallel import deepspeed_workarounds as dw
from filtertron.parallel import megatron_cpu


def _resolve(module: str, dotted: str):
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(
    "module,attr",
    dw.RELIES_ON + megatron_cpu.RELIES_ON,
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_relied_on_attribute_exists(module, attr):
    assert _resolve(module, attr) is not None, f"{module}.{attr} disappeared"


def test_the_lookup_fails_for_a_missing_attribute():
    with pytest.raises(AttributeError):
        _resolve("deepspeed.runtime.engine", "DeepSpeedEngine.no_such_method")


def test_instance_attributes_the_workarounds_replace():
    """DeepSpeed sets these in methods, not on the class: read them from its source."""
    import inspect

    from deepspeed.runtime import engine
    from deepspeed.runtime.pipe import module

    src = inspect.getsource(engine.DeepSpeedEngine)
    assert "self.basic_optimizer = basic_optimizer" in src
    assert "self.clip_fp32_gradients()" in src  # the call record_fp32_clip_norm intercepts
    # skip_single_rank_allreduce: the flag both gradient all-reduce call sites read
    assert src.count("if self.enable_backward_allreduce and not self.inside_no_sync_ctxt:") == 2
    pipe_src = inspect.getsource(module)
    assert "self._layer_specs = list(layers)" in pipe_src
    assert "self.module_args = module_args" in pipe_src
    assert "is_checkpointable_results" in pipe_src
    assert "activation_checkpoint_interval" in pipe_src
    utils = importlib.import_module("deepspeed.runtime.utils")
    assert "PIPE_REPLICATED" in inspect.getsource(utils)  # read by count_each_gradient_once


def test_shm_name_matches_deepspeeds_source():
    import deepspeed

    shm = Path(deepspeed.__file__).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp"
    src = shm.read_text()
    assert f'#define SHM_BUFFER_NAME "{dw.SHM_PREFIX}"' in src
    assert '"%s_%d_%s_%s",\n             SHM_BUFFER_NAME,\n             getuid(),' in src
    assert 'snprintf(shm_name, NAME_BUF_SIZE, "%s_%d", shm_name_prefix, rank);' in src
    assert dw.shm_buffer_name("127.0.0.1", 29500, 1, uid=0) == (
        "deepspeed_allreduce_buffer_0_127.0.0.1_29500_1"
    )


def test_shm_clean_up_removes_only_this_runs_buffers(tmp_path, monkeypatch):
    monkeypatch.setattr(dw, "SHM_DIR", tmp_path)
    mine = [tmp_path / dw.shm_buffer_name("127.0.0.1", 4242, r) for r in (0, 1)]
    other = tmp_path / dw.shm_buffer_name("127.0.0.1", 4243, 0)
    for p in (*mine, other):
        p.write_bytes(b"x")
    env = {"LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "4242"}
    assert dw.unlink_shm_buffer(1, env) is True
    assert not mine[1].exists() and mine[0].exists()
    assert dw.unlink_shm_buffer(1, {k: v for k, v in env.items() if k != "LOCAL_SIZE"}) is False
    assert dw.remove_shm_buffers("127.0.0.1", 4242) == [mine[0].name]
    assert other.exists()


def test_grads_finite_sees_nan_and_inf_but_not_large_values():
    import torch

    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.SGD(params, lr=1.0)
    assert dw.grads_finite(opt)  # no gradients yet
    for p in params:
        p.grad = torch.full_like(p, 3e38)  # finite; its 2-norm would overflow float32
    assert dw.grads_finite(opt)
    for bad in (float("nan"), float("inf"), float("-inf")):
        params[1].grad[2] = bad
        assert not dw.grads_finite(opt), bad


def test_single_rank_allreduce_is_skipped_only_without_zero_and_data_parallelism():
    from types import SimpleNamespace

    for dp, stage, skipped in [(1, 0, True), (2, 0, False), (1, 1, False), (1, 3, False)]:
        engine = SimpleNamespace(enable_backward_allreduce=True)
        assert dw.skip_single_rank_allreduce(engine, dp, stage) is skipped
        assert engine.enable_backward_allreduce is not skipped

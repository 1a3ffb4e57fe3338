"""``train.compile`` under TP = 2 and PP = 2 (slow: each compiles in 2 processes): compiled
and eager losses through :func:`parallelize` agree within 1e-5 over 3 steps (fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.parallel.conftest import GAS, MB, STEPS, batches, spawn, tiny_config

TOL = 1e-5
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _job(rank: int, world: int, parallel: dict) -> dict:
    from deepspeed.utils import groups
    from torch._dynamo.utils import counters

    from filtertron.model import build_model
    from filtertron.parallel.state import layout_for
    from filtertron.train.parallelize import parallelize

    out: dict = {}
    for compiled in (False, True):
        groups.mpu = None
        cfg = tiny_config(
            "model.residual.kind=generalized",
            f"train.compile={compiled}",
            f"train.grad_accum={GAS}",
            f"train.micro_batch_size={MB}",
            "train.lr=1e-2",
            "train.warmup=0",
            **parallel,
        )
        torch.manual_seed(cfg.train.seed)
        runner = parallelize(build_model(cfg.model), cfg, layout_for(cfg, world))
        frames = counters["frames"]["ok"]
        it = runner.feed(iter(batches(STEPS * GAS, MB)))
        out[compiled] = [runner.train_step(it)[0] for _ in range(STEPS)]
        out[f"frames_{compiled}"] = counters["frames"]["ok"] - frames
    return out


@pytest.mark.parametrize(
    "parallel", [{"tp": 2, "zero_stage": 1}, {"pp": 2, "zero_stage": 1}], ids=["tp2", "pp2"]
)
def test_compiled_matches_eager(parallel):
    for r in spawn(_job, 2, parallel, timeout=900):
        assert r["frames_True"] > 0 and r["frames_False"] == 0
        assert r[True] == pytest.approx(r[False], abs=TOL), r

"""Pipeline parallelism over DeepSpeed's engine against a single-process PyTorch reference.

Reference: the whole GPT (same seed) trained by plain PyTorch AdamW with the same clipping,
learning rate and micro-batches (conftest.reference_training). Three steps of two micro-batches
each; gradient clipping at 0.05 bites (norms are ~1), and DeepSpeed's gradient norm is compared
too, since Adam is nearly blind to a wrong global clip factor. Tolerance (fp32): losses and
norms within 1e-5 absolute (observed ~3e-7).
"""

from __future__ import annotations

import pytest

from filtertron.parallel.pipeline import layer_names
from tests.parallel.conftest import (
    GAS,
    MB,
    STEPS,
    batches,
    reference_training,
    spawn,
    tiny_config,
    train_job,
)

TOL = 1e-5


def _check(cfg, results: list[dict]) -> None:
    ref_losses, ref_norms = reference_training(cfg, batches(STEPS * GAS, MB), GAS, STEPS)
    assert ref_norms[0] > 10 * 0.05, "clipping must bite for the norm check to mean anything"
    for r in results:
        assert r["losses"] == pytest.approx(ref_losses, abs=TOL), (r, ref_losses)
        for norm, ref in zip(r["norms"], ref_norms):
            assert norm is None or norm == pytest.approx(ref, abs=TOL), (r, ref_norms)


@pytest.mark.distributed
def test_pp2_matches_single_process_with_grc_and_tied_embeddings(pp2_run):
    cfg, results, _ = pp2_run
    assert cfg.model.tie_embeddings and cfg.model.residual.kind == "generalized"
    assert sorted(r["pp_rank"] for r in results) == [0, 1]
    _check(cfg, results)
    assert any(n is not None for r in results for n in r["norms"])  # ZeRO-1 reports its norm


@pytest.mark.distributed
def test_pp2_untied_zero0_uniform_partition_checkpointed_activations():
    # ZeRO-0 takes DeepSpeed's other gradient-norm path (runtime.utils.clip_grad_norm_), which
    # miscounts replicated parameters of later stages unless build_pipeline marks them.
    cfg = tiny_config("model.residual.kind=generalized", "model.residual.apply_to=both",
                      "model.tie_embeddings=false", "model.position=rotary",
                      "train.activation_checkpointing=every", pp=2, zero_stage=0,
                      pp_partition="uniform")
    _check(cfg, spawn(train_job, 2, cfg, None))


@pytest.mark.distributed
def test_tp2_pp2_matches_single_process():
    cfg = tiny_config("model.residual.kind=generalized", "model.attention.kind=twicing",
                      "model.attention.twicing.base=bilateral", "model.position=none",
                      tp=2, pp=2, zero_stage=1)
    results = spawn(train_job, 4, cfg, None)
    assert sorted((r["pp_rank"], r["tp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0),
                                                                      (1, 1)]
    _check(cfg, results)


@pytest.mark.distributed
def test_tp2_pp2_sequence_parallel_matches_single_process():
    # y0 and x travel between stages as (B, T/2, C) sequence shards.
    cfg = tiny_config("model.residual.kind=generalized", tp=2, pp=2, zero_stage=1,
                      sequence_parallel=True)
    _check(cfg, spawn(train_job, 4, cfg, None))


def test_layer_names_cover_the_state_dict():
    from filtertron.model import build_model

    for tied in (True, False):
        cfg = tiny_config(f"model.tie_embeddings={tied}")
        prefixes = [p for layer in layer_names(cfg) for p in layer]
        for name in build_model(cfg.model).state_dict():
            owners = [p for p in prefixes if name.startswith(p)]
            assert len(owners) == 1, (tied, name, owners)

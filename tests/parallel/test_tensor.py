"""TP=2 against the single-process GPT, for every attention and residual kind (2 gloo ranks),
and TP=2 x DP=2 training (4 ranks).

Reference: the same whole GPT (same seed) run in the same process without any parallelism.
Tolerance (fp32): losses within 1e-5 absolute, gradients within 1e-5 absolute + 1e-4
relative (observed differences are ~1e-7, from summation order).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

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

_BILATERAL = ["model.attention.kind=bilateral", "model.position=none"]
_TWICING_BSA = ["model.attention.kind=twicing", "model.attention.twicing.base=bilateral",
                "model.position=none"]
_GRC = ["model.residual.kind=generalized"]
CASES: dict[str, list[str]] = {
    "softmax/standard": [],
    "softmax/generalized": _GRC,
    "bilateral/standard": _BILATERAL,
    "bilateral/generalized": _BILATERAL + _GRC,
    "twicing/standard": _TWICING_BSA,
    "twicing/generalized": _TWICING_BSA + _GRC,
    # positions, variant options, untied head and a vocabulary that needs padding (51 % 2)
    "softmax-alibi": ["model.position=alibi"],
    "softmax-rotary-untied-V51": ["model.position=rotary", "model.tie_embeddings=false",
                                  "model.vocab_size=51"],
    "softmax-sinusoidal-V51": ["model.position=sinusoidal", "model.vocab_size=51"],
    "bilateral-gaussian-frozen": _BILATERAL + ["model.attention.bilateral.content=gaussian",
                                               "model.attention.bilateral.learn_h_p=false"],
    "twicing-softmax-last1": ["model.attention.kind=twicing", "model.attention.twicing.layers=1"],
    "grc-both-fixed": _GRC + ["model.residual.apply_to=both", "model.residual.learnable=false"],
}


def _gathered_grads(model, cfg) -> dict[str, torch.Tensor]:
    """Full gradients of a TP model, shards concatenated along the partition dims."""
    from filtertron.parallel.tensor import merge_tensors, partition_spec

    spec = partition_spec(model, cfg.model.vocab_size, dist.get_world_size())
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if name in spec:
            parts = [torch.empty_like(g) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, g.contiguous())
            g = merge_tensors(parts, spec[name], cfg.model.vocab_size)
        out[name] = g.clone()
    return out


def _tp_job(rank: int, world: int, sequence_parallel: bool) -> dict:
    from filtertron.model import build_model
    from filtertron.parallel import state, tensor

    results = {}
    idx_tgt = batches(1, 2, vocab=50)[0]
    idx, tgt = idx_tgt[:, :-1], idx_tgt[:, 1:]
    for name, overrides in CASES.items():
        cfg = tiny_config(*overrides, tp=2, sequence_parallel=sequence_parallel)
        state.initialize(cfg, world)
        torch.manual_seed(cfg.train.seed)
        ref = build_model(cfg.model)
        model = tensor.apply_tensor_parallel(copy.deepcopy(ref), cfg.model, sequence_parallel)
        ref_loss = ref(idx, tgt)
        ref_loss.backward()
        loss = model(idx, tgt)
        loss.backward()
        results[name] = {
            "loss": loss.item(), "ref_loss": ref_loss.item(),
            "grads": _gathered_grads(model, cfg),
            "ref_grads": {n: p.grad.clone() for n, p in ref.named_parameters()},
            "ref_state": {k: v.clone() for k, v in ref.state_dict().items()},
            "shard_state": {k: v.clone() for k, v in model.state_dict().items()
                            if not k.endswith("_extra_state")},
            "per_token": model(idx, tgt, reduction="none").detach(),
            "ref_per_token": ref(idx, tgt, reduction="none").detach(),
            "hidden_T": model.embed(idx).shape[1],
            "logits": tensor.gather_logits(model(idx).detach(), cfg.model.vocab_size),
            "ref_logits": ref(idx).detach(),
        }
    return results


@pytest.fixture(scope="module")
def tp_results() -> list[dict]:
    return spawn(_tp_job, 2, False)


@pytest.fixture(scope="module")
def sp_results() -> list[dict]:
    return spawn(_tp_job, 2, True)


def _expected_shard(name: str, full: torch.Tensor, rank: int, cfg) -> torch.Tensor:
    """Rank ``rank``'s slice of a TP=1 tensor, from the Megatron layout written out here
    independently of filtertron.parallel.tensor."""
    m = cfg.model
    H, D, C, V = m.n_heads, m.head_dim, m.d_model, m.vocab_size
    if name in ("wte.weight", "lm_head.weight"):
        Vp = -(-V // 2) * 2
        padded = torch.cat([full, full.new_zeros(Vp - V, C)])
        return padded[rank * Vp // 2:(rank + 1) * Vp // 2]
    if ".attn.qkv." in name:  # rows laid out (H, 3, D): whole heads per rank
        return full.view(H, 3 * D, *full.shape[1:])[rank * H // 2:(rank + 1) * H // 2].flatten(0, 1)
    if name.endswith("attn.proj.weight"):
        return full[:, rank * C // 2:(rank + 1) * C // 2]
    if ".mlp.fc." in name:
        return full[rank * 2 * C:(rank + 1) * 2 * C]
    if name.endswith("mlp.proj.weight"):
        return full[:, rank * 2 * C:(rank + 1) * 2 * C]
    if name.rsplit(".", 1)[-1] in ("alibi_slopes", "log_h_y", "log_h_p"):
        return full[rank * H // 2:(rank + 1) * H // 2]
    return full


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_tp2_matches_tp1_loss_and_gradients(tp_results, case):
    for rank, res in enumerate(tp_results):
        r = res[case]
        assert abs(r["loss"] - r["ref_loss"]) < 1e-5, (rank, r["loss"], r["ref_loss"])
        assert r["grads"].keys() == r["ref_grads"].keys()
        for name, g in r["ref_grads"].items():
            torch.testing.assert_close(r["grads"][name], g, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, n=name, r=rank: f"rank {r} grad {n}: {m}")
        torch.testing.assert_close(r["per_token"], r["ref_per_token"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["logits"], r["ref_logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_tp2_shards_are_slices_of_tp1_weights(tp_results, case):
    cfg = tiny_config(*CASES[case], tp=2)
    for rank, res in enumerate(tp_results):
        r = res[case]
        assert r["shard_state"].keys() == r["ref_state"].keys()
        for name, full in r["ref_state"].items():
            assert torch.equal(r["shard_state"][name], _expected_shard(name, full, rank, cfg)), \
                (rank, name)
    # the ranks hold different halves of a sharded weight, and the same replicated ones
    a, b = (res[case]["shard_state"] for res in tp_results)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])
    assert torch.equal(a["blocks.0.norm1.weight"], b["blocks.0.norm1.weight"])


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_sequence_parallel_gives_the_same_loss(tp_results, sp_results, case):
    for rank in range(2):
        on, off = sp_results[rank][case], tp_results[rank][case]
        assert on["hidden_T"] == 8 and off["hidden_T"] == 16  # SP really shards T
        assert abs(on["loss"] - off["loss"]) < 1e-5, (rank, on["loss"], off["loss"])
        assert abs(on["loss"] - on["ref_loss"]) < 1e-5
        for name, g in on["ref_grads"].items():
            torch.testing.assert_close(on["grads"][name], g, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, n=name, r=rank: f"rank {r} SP grad {n}: {m}")


@pytest.mark.distributed
def test_tp2_x_dp2_zero2_sequence_parallel_trains_like_single_process():
    # 4 ranks: TP pairs (0, 1) and (2, 3), data-parallel over the pairs with ZeRO-2; the
    # reference trains on both data-parallel shards' micro-batches as one batch.
    cfg = tiny_config("model.residual.kind=generalized", "model.position=rotary", tp=2,
                      zero_stage=2, sequence_parallel=True)
    results = spawn(train_job, 4, cfg, None)
    ref_losses, _ = reference_training(cfg, batches(STEPS * GAS * 2, MB), GAS * 2, STEPS)
    assert sorted((r["dp_rank"], r["tp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0),
                                                                      (1, 1)]
    for tp_rank in (0, 1):
        per_dp = [r["losses"] for r in results if r["tp_rank"] == tp_rank]
        mean = [sum(x) / 2 for x in zip(*per_dp)]
        assert mean == pytest.approx(ref_losses, abs=1e-5)

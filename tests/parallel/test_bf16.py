"""bf16 trains on CPU with TP = 2, PP = 2 and ZeRO 1-3, follows the fp32 losses, and its
consolidated checkpoint holds the fp32 master weights.

Each layout trains STEPS steps of 2 micro-batches through :func:`parallelize` (the trainer's
path) twice, in fp32 and in bf16, from the same weights, on one fixed learnable batch (every
sequence follows x[t+1] = (7 x[t] + 3) mod 50 from a random start), so the fp32 loss falls from
about ln 50 = 3.9 by far more than the tolerance (checked: > 10 x). Tolerance: bf16 keeps 8
significant bits, so a loss near 3.9 is resolved to 2^-6 = 0.016 (one bf16 ulp); the bf16
losses must stay within 4 ulps (0.0625) of the fp32 ones at every step. A bf16 path that never
updated its weights would sit at the initial loss and miss the falling fp32 curve by > 0.6.

Then the bf16 run saves a checkpoint and consolidates it as the trainer's final checkpoint
does. The result must be the fp32 master weights: every tensor fp32; for tp = pp = 1 equal to
DeepSpeed's own reading of ZeRO's fp32 partitions (``zero_to_fp32``, an independent reader);
for every layout but ZeRO-3 (whose module files hold no weights) rounding exactly to the bf16
module weights in DeepSpeed's files; and mostly not bf16-representable (the masters of trained
weights are not their rounding). Last (ZeRO 1 and PP / TP), the consolidated checkpoint is
converted to the same layout and loaded weights-only into a fresh engine of other initial
weights, as a resume of a converted checkpoint does: that engine's masters, consolidated again,
must equal the first ones exactly (DeepSpeed alone would reset them to the bf16 module weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.parallel.conftest import GAS, MB, spawn, tiny_config

STEPS = 7
BF16_TOL = 4 * 2.0**-6
LAYOUTS = {
    "zero1-dp2": {"zero_stage": 1},
    "zero2-dp2": {"zero_stage": 2},
    "zero3-dp2": {"zero_stage": 3},
    "tp2-zero1": {"tp": 2, "zero_stage": 1},
    "pp2-zero1": {"pp": 2, "zero_stage": 1},
}


def learnable_batches(n: int, micro_batch: int, seq_len: int = 16, vocab: int = 50):
    """``n`` (micro_batch, seq_len + 1) batches of x[t+1] = (7 x[t] + 3) mod vocab."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (micro_batch, 1), generator=g)
        cols = [x]
        for _ in range(seq_len):
            cols.append((7 * cols[-1] + 3) % vocab)
        out.append(torch.cat(cols, dim=1))
    return out


def _config(layout: dict, precision: str):
    return tiny_config(
        "model.residual.kind=generalized",
        f"train.precision={precision}",
        f"train.grad_accum={GAS}",
        f"train.micro_batch_size={MB}",
        "train.lr=1e-2",
        "train.min_lr=1e-2",
        "train.warmup=0",
        f"train.steps={STEPS}",
        **layout,
    )


def _train(rank: int, world: int, cfg, ckpt: str | None) -> dict:
    from deepspeed.utils import groups

    from filtertron.checkpoint import shards
    from filtertron.model import build_model
    from filtertron.parallel import collectives
    from filtertron.parallel.state import layout_for
    from filtertron.train.parallelize import parallelize

    groups.mpu = None  # DeepSpeed keeps the last engine's mpu in a global
    layout = layout_for(cfg, world)
    torch.manual_seed(cfg.train.seed)
    runner = parallelize(build_model(cfg.model), cfg, layout)
    fixed = learnable_batches(GAS, MB)  # the same batch every step, on every rank
    it = runner.feed(iter(fixed * STEPS))
    losses = [runner.train_step(it)[0] for _ in range(STEPS)]
    dtype = next(p.dtype for p in runner.module.parameters())
    out = {"losses": losses, "dtype": dtype}
    if ckpt is not None:
        root = Path(ckpt)
        runner.save_files(root, "step_1")
        collectives.barrier()
        state = runner.consolidate(root / "step_1")
        collectives.barrier()
        if rank == 0:
            out["consolidated"] = state
            out["module_files"] = shards.consolidate(root / "step_1", cfg)
            p = cfg.parallel
            if p.tp == p.pp == 1:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                out["zero_to_fp32"] = get_fp32_state_dict_from_zero_checkpoint(str(root), "step_1")
        if cfg.parallel.zero_stage < 3:
            out["restored"] = _resume_weights_only(rank, world, cfg, root, state)
        collectives.barrier()
    return out


def _resume_weights_only(rank: int, world: int, cfg, root: Path, state) -> dict | None:
    """``filtertron convert`` the consolidated checkpoint to the same layout, load it weights
    only into a fresh engine (as a resume of a converted checkpoint does) and consolidate that
    engine's masters again (rank 0's result)."""
    from deepspeed.utils import groups

    from filtertron.checkpoint import files, shards
    from filtertron.model import build_model
    from filtertron.parallel import collectives
    from filtertron.parallel.state import layout_for
    from filtertron.train.parallelize import parallelize

    step, converted = root / "step_1", root / "converted" / "step_1"
    if rank == 0:
        files.save_model(step, state)
        meta = {"step": 1, "consumed_samples": 0, "config": cfg.to_dict(), "world_size": world}
        files.commit(step, {**meta, "tokenizer_hash": None})
        shards.convert(step, converted, cfg.parallel.tp, cfg.parallel.pp)
    collectives.barrier()
    groups.mpu = None
    torch.manual_seed(cfg.train.seed + 1)  # other initial weights: the load must replace them
    runner = parallelize(build_model(cfg.model), cfg, layout_for(cfg, world))
    runner.load_files(converted.parent, converted.name, weights_only=True)
    return runner.consolidate(converted)


def _job(rank: int, world: int, names: list[str], root: str) -> dict:
    out = {}
    for name in names:
        layout = LAYOUTS[name]
        out[name] = {
            "fp32": _train(rank, world, _config(layout, "fp32"), None),
            "bf16": _train(rank, world, _config(layout, "bf16"), f"{root}/{name}"),
        }
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("bf16")
    return spawn(_job, 2, list(LAYOUTS), str(root), timeout=900)


@pytest.mark.distributed
def test_bf16_follows_a_falling_fp32_loss_on_every_layout(runs):
    for name in LAYOUTS:
        for rank, r in enumerate(runs):
            fp32, bf16 = r[name]["fp32"], r[name]["bf16"]
            assert fp32["dtype"] == torch.float32 and bf16["dtype"] == torch.bfloat16, name
            drop = fp32["losses"][0] - fp32["losses"][-1]
            assert drop > 10 * BF16_TOL, (name, fp32["losses"], "the batch must be learnt")
            diffs = [abs(a - b) for a, b in zip(fp32["losses"], bf16["losses"], strict=True)]
            assert max(diffs) <= BF16_TOL, (name, rank, fp32["losses"], bf16["losses"])
            assert fp32["losses"] != bf16["losses"], (name, "bf16 did not change the numerics")


@pytest.mark.distributed
def test_bf16_consolidation_keeps_the_fp32_masters_on_every_layout(runs):
    for name, layout in LAYOUTS.items():
        got = runs[0][name]["bf16"]
        state, module = got["consolidated"], got["module_files"]
        assert state.keys() >= {"wte.weight", "blocks.0.attn.qkv.weight"}, name
        for k, v in state.items():
            assert v.dtype == torch.float32, (name, k, v.dtype)
        if "zero_to_fp32" in got:
            ref = got["zero_to_fp32"]
            for k in ref:
                assert torch.equal(state[k], ref[k]), (name, k)
        if layout["zero_stage"] != 3:
            for k, v in module.items():
                assert v.dtype == torch.bfloat16, (name, k)
                assert torch.equal(state[k].bfloat16(), v), (name, k, "not the module's masters")
        w = state["blocks.0.attn.qkv.weight"]
        unrounded = (w != w.bfloat16().float()).float().mean().item()
        assert unrounded > 0.5, (name, unrounded, "consolidated weights are bf16-rounded")
        if layout["zero_stage"] < 3:  # a weights-only resume keeps the masters unrounded
            restored = got["restored"]
            assert restored.keys() == state.keys(), name
            for k in state:
                assert torch.equal(restored[k], state[k]), (name, k, "masters not restored")

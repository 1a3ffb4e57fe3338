"""Export from every parallel layout: a ZeRO-2 checkpoint (DeepSpeed files only), and the
TP = 2 and PP = 2 checkpoints of the parallelism tests (per-rank shards, no model.pt).

References, independent of the export's own reading of the files:
- ZeRO-2: the model.pt the trainer gathered from the live engine at the same step; the
  export reads a copy of the step without it (through zero_to_fp32).
- TP = 2 / PP = 2: the loss the parallel run computed, on its own layout, for the step after
  the checkpoint (conftest.train_job records it); the exported model must reproduce it on the
  same micro-batches. Logits are also compared with filtertron's single-device model of the
  consolidated checkpoint.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from filtertron.checkpoint.files import resolve
from filtertron.config import RunConfig, from_dict
from filtertron.hf.source import load_checkpoint
from filtertron.model import build_model
from tests.hf.conftest import TOL, export
from tests.parallel.conftest import GAS, MB, STEPS, batches


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()


def test_zero2_checkpoint_exports_the_engine_weights(trained, tmp_path, dataset):
    info = resolve(trained["zero_only"])
    assert not (info.path / "model.pt").exists()
    assert from_dict(RunConfig, info.meta["config"]).parallel.zero_stage == 2
    hf = _hf(export(info.path, tmp_path / "hf", "--tokenizer", str(dataset)))
    cfg = from_dict(RunConfig, info.meta["config"]).model
    ref = build_model(cfg)
    ref.load_state_dict(torch.load(trained["step"] / "model.pt", weights_only=True))
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    with torch.no_grad():
        diff = float((hf(input_ids=idx).logits - ref.eval()(idx)).abs().max())
    print(f"zero2: max |logit difference| {diff:.2e}")
    assert diff <= TOL


def _next_step_loss(hf, world_dp: int = 1) -> float:
    """The mean loss of the step after the checkpoint (step STEPS - 1) on train_job's data."""
    data = batches(STEPS * GAS * world_dp, MB)[(STEPS - 1) * GAS : STEPS * GAS]
    total = 0.0
    with torch.no_grad():
        for b in data:
            logits = hf(input_ids=b[:, :-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten())) / GAS
    return total


@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_tp2_and_pp2_checkpoints_export(layout, tp2_run, pp2_run, tmp_path):
    cfg, results, step = tp2_run if layout == "tp2" else pp2_run
    assert not (step / "model.pt").exists()
    assert (cfg.parallel.tp, cfg.parallel.pp) == ((2, 1) if layout == "tp2" else (1, 2))
    hf = _hf(export(step, tmp_path / "hf", "--no-tokenizer"))
    loss, ref = _next_step_loss(hf), results[0]["losses"][-1]
    model, _, _ = load_checkpoint(step)
    idx = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len))
    with torch.no_grad():
        diff = float((hf(input_ids=idx).logits - model(idx)).abs().max())
    print(f"{layout}: next-step loss {loss:.7f} vs {ref:.7f}; max |logit difference| {diff:.2e}")
    assert loss == pytest.approx(ref, abs=TOL)
    assert diff <= TOL

"""A bf16 run's checkpoints give its fp32 master weights to every loader.

One bf16 run (ZeRO-2, one process) saves an intermediate checkpoint at step 4 and the final
one at step 8. The reference for the masters is DeepSpeed's own reader of ZeRO's fp32
optimizer partitions (``zero_to_fp32``), independent of filtertron's consolidation. Checked:
the final checkpoint's model.pt and ``load_model`` of it equal that reference exactly (not its
bf16 rounding, which differs in most entries), as ``load_model`` of the intermediate one does;
each load says in one line which weights it loaded; ``filtertron convert`` carries the masters
(and says when a source has none to carry); a bf16 run resumed weights-only from the converted
checkpoint trains on the unrounded masters.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from filtertron.checkpoint.shards import load_model
from filtertron.cli import main
from filtertron.train.trainer import Trainer
from tests.train.conftest import tiny_config

BF16 = {
    "train.precision": "bf16",
    "parallel.zero_stage": 2,
    "train.steps": 8,
    "train.save_every": 4,
    "train.keep_last": 3,
    "train.warmup": 0,
    "train.lr": 1e-2,
    "train.min_lr": 1e-2,
}


def zero_masters(step_dir) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), step_dir.name)


def assert_equal(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    for k, v in ref.items():
        assert state[k].dtype == torch.float32 and torch.equal(state[k], v), k


@pytest.fixture(scope="module")
def bf16_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "run"
    Trainer(tiny_config(dataset, out, **BF16)).run()
    return out / "checkpoints"


def _loaded_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]


def test_final_checkpoint_loads_the_fp32_masters_like_an_intermediate_one(bf16_run, caplog):
    final, middle = bf16_run / "step_00000008", bf16_run / "step_00000004"
    ref = zero_masters(final)
    w = ref["blocks.0.attn.qkv.weight"]
    assert (w != w.bfloat16().float()).float().mean() > 0.5  # masters are not bf16 values
    assert_equal(torch.load(final / "model.pt", weights_only=True), ref)
    with caplog.at_level(logging.INFO):
        model, _, _ = load_model(final)
        assert_equal(model.state_dict(), ref)
        model, _, _ = load_model(middle)
        assert_equal(model.state_dict(), zero_masters(middle))
    assert _loaded_lines(caplog) == [
        f"loaded fp32 master weights from {final / 'model.pt'}",
        f"loaded fp32 master weights from {middle} (ZeRO's fp32 partitions)",
    ]


def test_convert_keeps_the_masters_and_a_resume_restores_them(bf16_run, dataset, tmp_path, caplog):
    final = bf16_run / "step_00000008"
    ref = zero_masters(final)
    out = tmp_path / "resumed"
    converted = out / "checkpoints" / "step_00000008"
    assert main(["convert", str(final), "--out", str(converted)]) == 0
    assert_equal(torch.load(converted / "model.pt", weights_only=True), ref)
    assert json.loads((converted / "filtertron.json").read_text())["weights"] == (
        "fp32 master weights"
    )
    cfg = tiny_config(dataset, out, **{**BF16, "train.steps": 10})
    with caplog.at_level(logging.INFO):
        trainer = Trainer(cfg, resume=True)
    from filtertron.train.masters import Masters

    live = Masters(trainer.engine).state_dict(trainer.model)
    assert_equal(live, ref)  # not the bf16 module weights DeepSpeed refreshes them from
    assert any(r.getMessage().startswith("restored ") for r in caplog.records)


def test_a_source_without_masters_says_so(bf16_run, tmp_path, caplog):
    """A bf16 ZeRO-0 checkpoint keeps its masters only in the optimizer's own state: its
    DeepSpeed module files hold bf16 weights. Made here from the step-4 checkpoint by dropping
    the ZeRO partitions and marking it ZeRO 0."""
    src = tmp_path / "checkpoints" / "step_00000004"
    shutil.copytree(bf16_run / "step_00000004", src)
    for f in src.glob("*optim_states.pt"):
        f.unlink()
    marker = json.loads((src / "filtertron.json").read_text())
    marker["config"]["parallel"]["zero_stage"] = 0
    (src / "filtertron.json").write_text(json.dumps(marker))
    with caplog.at_level(logging.INFO):
        model, _, _ = load_model(src)
        assert main(["convert", str(src), "--out", str(tmp_path / "out")]) == 0
    assert next(model.parameters()).dtype == torch.float32  # loaded into an fp32 model
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith(f"loaded bf16 module weights from {src} (DeepSpeed's module")
    assert "the final checkpoint's model.pt holds them" in warnings[0]
    assert any("fp32 master weights are dropped" in m for m in warnings)
    marker = json.loads((tmp_path / "out" / "filtertron.json").read_text())
    assert marker["weights"] == "bf16 module weights"

"""``filtertron convert``: a TP=2 or PP=2 checkpoint resumes on another layout.

The source runs (conftest.tp2_run / pp2_run) checkpoint before their third step and record that
step's loss (computed before its update). After conversion the run resumes on the new layout
through DeepSpeed's ``load_checkpoint(..., load_module_only=True)`` and trains the same third
step: its loss must equal the source's within 1e-5 (fp32; observed ~1e-7).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from filtertron.cli import main
from tests.parallel.conftest import (
    GAS,
    MB,
    STEPS,
    batches,
    build_engine,
    spawn,
    tiny_config,
    train_step,
)

TOL = 1e-5


def _resume_job(rank: int, world: int, step_dirs: list[str]) -> list[float]:
    """For each converted checkpoint: load it (weights only) and train the next step."""
    from filtertron.checkpoint.files import resolve
    from filtertron.config import RunConfig, from_dict
    from filtertron.parallel.pipeline import split_batches

    losses = []
    for d in map(Path, step_dirs):
        info = resolve(d)
        assert info.meta["weights_only"]
        cfg = from_dict(RunConfig, info.meta["config"])
        engine, _ = build_engine(cfg, world)
        path, _ = engine.load_checkpoint(str(d.parent), tag=d.name, load_module_only=True)
        assert path is not None
        it = split_batches(batches(STEPS * GAS, MB)[info.step * GAS :])
        losses.append(train_step(engine, cfg, it))
    return losses


def _convert(src: Path, out: Path, tp: int = 1, pp: int = 1) -> Path:
    assert main(["convert", str(src), "--out", str(out), "--tp", str(tp), "--pp", str(pp)]) == 0
    return out


@pytest.fixture(scope="module")
def converted(tp2_run, pp2_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    return {
        "tp2->tp1": _convert(tp2_run[2], root / "tp1" / "step_00000002"),
        "pp2->pp1": _convert(pp2_run[2], root / "pp1" / "step_00000002"),
        "tp2->pp2": _convert(tp2_run[2], root / "pp2" / "step_00000002", pp=2),
    }


@pytest.fixture(scope="module")
def resumed_single(converted) -> list[float]:
    return spawn(_resume_job, 1, [str(converted["tp2->tp1"]), str(converted["pp2->pp1"])])[0]


@pytest.mark.distributed
def test_tp2_checkpoint_resumes_at_tp1(tp2_run, resumed_single):
    next_loss = tp2_run[1][0]["losses"][-1]
    assert resumed_single[0] == pytest.approx(next_loss, abs=TOL)


@pytest.mark.distributed
def test_pp2_checkpoint_resumes_at_pp1(pp2_run, resumed_single):
    next_loss = pp2_run[1][0]["losses"][-1]
    assert resumed_single[1] == pytest.approx(next_loss, abs=TOL)


@pytest.mark.distributed
def test_tp2_checkpoint_resharded_to_pp2(tp2_run, converted):
    losses = spawn(_resume_job, 2, [str(converted["tp2->pp2"])])
    for rank_losses in losses:
        assert rank_losses[0] == pytest.approx(tp2_run[1][0]["losses"][-1], abs=TOL)
    files = sorted(p.name for p in converted["tp2->pp2"].glob("*.pt"))
    assert "layer_00-model_00-model_states.pt" in files and "mp_rank_01_model_states.pt" in files


@pytest.mark.distributed
def test_consolidated_model_pt_is_the_single_device_model(tp2_run, pp2_run, converted):
    from filtertron.checkpoint.shards import load_model
    from filtertron.model import build_model

    for key in ("tp2->tp1", "pp2->pp1"):
        model, cfg, info = load_model(converted[key])
        assert (cfg.parallel.tp, cfg.parallel.pp) == (1, 1) and info.step == 2
        ref = build_model(cfg.model)
        assert model.state_dict().keys() == ref.state_dict().keys()
        b = batches(STEPS * GAS, MB)[2 * GAS :]
        with torch.no_grad():
            loss = sum(model(x[:, :-1], x[:, 1:]).item() for x in b) / GAS
        run = tp2_run if key.startswith("tp2") else pp2_run
        assert loss == pytest.approx(run[1][0]["losses"][-1], abs=TOL)


@pytest.mark.distributed
def test_round_trip_through_tp2_files_is_exact(pp2_run, tmp_path):
    # consolidate -> shard for tp=2, pp=2 -> consolidate again gives the same tensors
    from filtertron.checkpoint.shards import consolidate, target_config

    cfg, _, src = pp2_run
    full = consolidate(src, cfg)
    out = _convert(src, tmp_path / "tp2pp2" / "step_00000002", tp=2, pp=2)
    (out / "model.pt").unlink()  # force reading the DeepSpeed files back
    again = consolidate(out, target_config(cfg, 2, 2, None))
    assert full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), k


def test_convert_rejects_an_impossible_layout(tmp_path, capsys):
    from filtertron.checkpoint.files import commit

    src = tmp_path / "checkpoints" / "step_00000001"
    src.mkdir(parents=True)
    cfg = tiny_config(tp=2)
    commit(src, {"step": 1, "consumed_samples": 4, "config": cfg.to_dict()})
    assert main(["convert", str(src), "--out", str(tmp_path / "x"), "--tp", "3"]) == 2
    err = capsys.readouterr().err
    assert "parallel.tp=3" in err and "n_heads=4" in err
    assert (
        main(["convert", str(src), "--out", str(tmp_path / "y"), "--pp", "2", "--zero-stage", "2"])
        == 2
    )
    assert "zero_stage=2" in capsys.readouterr().err

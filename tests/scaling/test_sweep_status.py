"""Run status from disk, without training: finished runs are skipped and never rewritten,
interrupted ones need --resume, an edited sweep under trained runs is refused."""

import json

import pytest

from filtertron.checkpoint.files import commit, tag_for
from filtertron.config import ConfigError
from filtertron.scaling import runner
from filtertron.scaling import sweep as sw
from filtertron.scaling.expand import expand
from filtertron.scaling.sweep_config import load_sweep

from .conftest import write_sweep


def _runs(tmp_path, dataset, **fields):
    path = write_sweep(
        tmp_path / "s.yaml", budgets={"kind": "tokens", "values": [1280, 2560, 5120]}, **fields
    )
    sweep, where = load_sweep(path)
    return expand(sweep, where, tmp_path / "out", [f"data.path={dataset}"])


def _fake_checkpoint(run, step):
    path = run.dir / "checkpoints" / tag_for(step)
    path.mkdir(parents=True)
    commit(path, {"step": step, "consumed_samples": 0})


def _fake_finish(run, loss):
    runner.prepare(run)
    _fake_checkpoint(run, run.steps)
    with (run.dir / "metrics.jsonl").open("w") as f:
        f.write(json.dumps({"step": run.steps, "loss": loss + 0.1}) + "\n")
        f.write(json.dumps({"step": run.steps, "val_loss": loss}) + "\n")


def test_statuses_resume_rule_and_table(tmp_path, dataset):
    first, second, third = _runs(tmp_path, dataset)
    assert [sw.status(r)[0] for r in (first, second, third)] == ["pending"] * 3
    _fake_finish(first, 4.5)
    assert sw.status(first) == ("complete", first.steps)  # trained, not collected yet
    runner.prepare(second)
    _fake_checkpoint(second, 5)
    assert sw.status(second) == ("interrupted", 5)
    with pytest.raises(ConfigError, match=r"interrupted runs: baseline.a.t2.56e3.s0 \(step 5/20\)"):
        sw.check([first, second, third], resume=False)
    statuses = sw.check([first, second, third], resume=True)
    todo = sw.to_do([first, second, third], statuses)
    assert [r.id for r in todo] == [second.id, third.id]  # first was collected, not redone
    assert sw.status(first)[0] == "finished"
    assert json.loads((first.dir / "result.json").read_text())["loss"] == 4.5
    assert (third.dir / "run.yaml").is_file()  # prepared for its trainer
    table, n = sw.write_table([first, second, third], tmp_path / "out")
    assert n == 1
    header, row = table.read_text().splitlines()
    assert header.split(",")[:6] == ["variant", "n_params", "tokens", "loss", "flops", "seed"]
    assert row.startswith(f"baseline,{first.params.non_embedding},{first.tokens},4.5,")


def test_an_edited_sweep_is_refused_under_trained_runs(tmp_path, dataset):
    first, *_ = _runs(tmp_path, dataset)
    _fake_finish(first, 4.5)
    runner.collect(first.dir)
    before = (first.dir / "result.json").read_bytes()
    edited, *rest = _runs(tmp_path, dataset, schedule={"warmup_fraction": 0.5})
    assert edited.id == first.id and edited.config_hash != first.config_hash
    with pytest.raises(ConfigError, match=r"another config: baseline.a.t1.28e3.s0 \(train.warmup"):
        sw.check([edited, *rest], resume=True)
    assert (first.dir / "result.json").read_bytes() == before


def test_one_sweep_per_directory(tmp_path):
    with sw.locked(tmp_path / "out"):
        with pytest.raises(ConfigError, match="another sweep is running there"):
            with sw.locked(tmp_path / "out"):
                pass

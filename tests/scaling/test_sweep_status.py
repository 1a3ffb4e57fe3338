"""Run status from disk, without training: finished runs are skipped and never rewritten,
interrupted ones need --resume, an edited sweep under trained runs is refused."""

import json

import pytest

from filtertron.checkpoint.files import commit, tag_for
from filtertron.cli import main
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


def test_only_a_cut_off_last_metrics_line_is_skipped(tmp_path, dataset, capsys):
    first, *_ = _runs(tmp_path, dataset)
    _fake_finish(first, 4.5)
    path = first.dir / "metrics.jsonl"
    good = path.read_text()  # two complete lines
    path.write_text(good + '{"step": 21, "lo')  # a trainer killed mid-write
    assert runner.collect(first.dir)["loss"] == 4.5
    # Anything else that does not read as a JSON object is corruption: a cut line with lines
    # after it, a last line that ends in a newline, an array, an empty line.
    cut = '{"step": 3, "lo\n'
    for text, line in (
        (cut + good, 1),
        (good.replace("\n", "\n" + cut, 1), 2),
        (good + cut, 3),
        (good + "[1, 2]\n", 3),
        ("\n" + good, 1),
    ):
        path.write_text(text)
        (first.dir / "result.json").unlink(missing_ok=True)
        with pytest.raises(runner.MetricsError, match=rf"{path}, line {line}: "):
            runner.collect(first.dir)
    # The sweep stops before training anything, naming the file and the line.
    assert not (first.dir / "result.json").exists()
    sweep = tmp_path / "s.yaml"
    args = ["sweep", str(sweep), "--out", str(tmp_path / "out"), "--set", f"data.path={dataset}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 1: not valid JSON" in err and "only a cut-off last line" in err


def test_resuming_drops_a_cut_off_metrics_line(tmp_path, dataset):
    _, second, _ = _runs(tmp_path, dataset)
    runner.prepare(second)
    _fake_checkpoint(second, 5)
    path = second.dir / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo')
    assert runner.begin(second.dir, resume=True) is True
    assert path.read_text() == '{"step": 1, "loss": 5.0}\n'  # the trainer appends after it
    assert "dropped a cut-off last line (15 bytes)" in (second.dir / "train.log").read_text()
    assert runner.begin(second.dir, resume=True) is True and runner.metrics(second.dir)

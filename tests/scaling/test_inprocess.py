"""Plan "inprocess": the same results and files as plan "local", in one process.

The reference is plan "local"'s trainer in a process of its own (``runner.execute``), run on
the same prepared runs; the in-process sweep runs inside the test's own process, after other
runs of another variant and another shape, so state one run leaves to the next would show.
"""

import json

import pytest

from filtertron.cli import main
from filtertron.scaling import runner
from filtertron.scaling.expand import expand
from filtertron.scaling.sweep_config import load_sweep

from .conftest import ROOT, TINY_MODEL, TINY_OVERRIDES, write_sweep


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_inprocess_plan_gives_the_local_plans_losses(tmp_path, dataset):
    # 2 variants x 2 shapes, fp32 on CPU; the last run (after runs of the other variant and
    # of the other shape in the same process) is also trained by the local plan's subprocess.
    path = write_sweep(
        tmp_path / "s.yaml",
        variants={"baseline": {}, "bilateral": str(ROOT / "configs" / "tiny" / "bilateral.yaml")},
        sizes={"a": dict(TINY_MODEL), "b": {**TINY_MODEL, "n_layers": 2, "d_model": 48}},
    )
    sweep, where = load_sweep(path)
    local = expand(sweep, where, tmp_path / "local", [f"data.path={dataset}"])
    assert [r.id for r in local] == [
        "baseline.a.t1.28e3.s0", "bilateral.a.t1.28e3.s0",
        "baseline.b.t1.28e3.s0", "bilateral.b.t1.28e3.s0",
    ]  # fmt: skip
    runner.prepare(local[3])
    runner.execute(local[3].dir)

    out = tmp_path / "inproc"
    args = ["sweep", str(path), "--out", str(out), "--set", f"data.path={dataset}"]
    assert main([*args, "--plan", "inprocess"]) == 0
    for r in local[3:]:
        a = json.loads((r.dir / "result.json").read_text())
        b = json.loads((out / "runs" / r.id / "result.json").read_text())
        assert a["config_hash"] == b["config_hash"] and a["steps"] == b["steps"] == 10
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (r.id, a["loss"], b["loss"])
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-6
        train_a = [x["loss"] for x in _rows(r.dir) if "loss" in x]
        train_b = [x["loss"] for x in _rows(out / "runs" / r.id) if "loss" in x]
        assert len(train_a) == 10 and max(abs(x - y) for x, y in zip(train_a, train_b)) <= 1e-6
    # The same files as a trainer process writes; its output went to the run's train.log.
    run = out / "runs" / "bilateral.b.t1.28e3.s0"
    for name in ("run.yaml", "config.yaml", "attempts.jsonl", "logs/rank0.log"):
        assert (run / name).is_file(), name
    assert "done: step 10" in (run / "train.log").read_text()
    events = [json.loads(x) for x in (run / "attempts.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "end"] and events[1]["returncode"] == 0
    assert len((out / "table.csv").read_text().splitlines()) == 5


def test_inprocess_plan_refuses_runs_of_several_processes(tmp_path, dataset, capsys):
    path = write_sweep(tmp_path / "s.yaml", nproc=2)
    args = ["sweep", str(path), "--out", str(tmp_path / "o"), "--set", f"data.path={dataset}"]
    assert main([*args, "--plan", "inprocess"]) == 2
    assert "nproc=2: --plan inprocess trains every run in this one process" in (
        capsys.readouterr().err
    )


def test_inprocess_failure_is_recorded_and_the_sweep_goes_on(tmp_path, dataset, monkeypatch):
    # The first run's trainer raises mid-run (as a CUDA out-of-memory would): its traceback
    # goes to its train.log, its engine is torn down, and the next run trains in the same
    # process; a second invocation retrains only the failed run.
    from filtertron.train.trainer import Trainer

    original, calls = Trainer.run, []

    def flaky(self, on_step=None):
        calls.append(self.cfg.train.out_dir)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "run", flaky)
    path = write_sweep(tmp_path / "s.yaml", budgets={"kind": "tokens", "values": [1280, 2560]})
    out = tmp_path / "o"
    args = ["sweep", str(path), "--out", str(out), "--set", f"data.path={dataset}"]
    assert main([*args, "--plan", "inprocess"]) == 1
    first, second = (out / "runs" / f"baseline.a.{b}.s0" for b in ("t1.28e3", "t2.56e3"))
    assert "RuntimeError: simulated out of memory" in (first / "train.log").read_text()
    assert not (first / "result.json").exists() and (second / "result.json").is_file()
    state = json.loads((out / "sweep.json").read_text())["runs"]
    assert state[first.name]["status"] == "failed"
    assert f"see {first}/train.log" in state[first.name]["error"]
    assert main([*args, "--plan", "inprocess"]) == 0
    assert (first / "result.json").is_file() and len(calls) == 3


@pytest.mark.slow
def test_inprocess_runs_of_one_shape_reuse_the_compiled_graphs(tmp_path, dataset):
    # train.compile on, an empty Inductor cache: the first run compiles its forward and
    # backward (cache misses); two more runs of the same shape compile nothing (dynamo traces
    # the new model instance again, Inductor finds the graphs it compiled), and a run of
    # another shape does compile (the counter can see a compile).
    from torch._dynamo.utils import counters

    compiled = {**TINY_OVERRIDES, "train": {**TINY_OVERRIDES["train"], "compile": True}}
    misses = []

    def sweep(name, sizes, seeds):
        path = write_sweep(tmp_path / f"{name}.yaml", sizes=sizes, seeds=seeds, overrides=compiled)
        out = tmp_path / name
        args = ["sweep", str(path), "--out", str(out), "--set", f"data.path={dataset}"]
        assert main([*args, "--plan", "inprocess"]) == 0
        misses.append(counters["inductor"]["fxgraph_cache_miss"])

    counters.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # empty: misses compile
        sweep("one", {"a": dict(TINY_MODEL)}, [0])
        sweep("two", {"a": dict(TINY_MODEL)}, [1, 2])
        sweep("other", {"b": {**TINY_MODEL, "d_model": 48}}, [0])
    assert misses[0] > 0
    assert misses[1] == misses[0]  # two more runs of shape a: nothing compiled
    assert misses[2] > misses[1]

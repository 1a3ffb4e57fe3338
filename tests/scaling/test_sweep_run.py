"""Sweeps that train: kill and resume, the script plan, the slurm plan through submitit.

Every run trains a one-layer d=32 model through ``filtertron train`` in a subprocess, so
these tests are mostly process start-up (about 8 s a run on a quiet 2-core machine). The
kill-and-resume and submitit-local tests train 4 and 1 runs and are marked slow; the status
logic they rest on is tested without training in test_sweep_status.py.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from filtertron.cli import main

from .conftest import ROOT, write_sweep


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _sweep_cmd(path, out, dataset, *extra):
    cmd = [sys.executable, "-m", "filtertron.cli", "sweep", str(path), "--out", str(out)]
    return cmd + ["--set", f"data.path={dataset}", *extra]


def _digest(run_dir):
    """Bytes of everything a finished run wrote, by relative path."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["local", "inprocess"])
def test_killed_sweep_resumes_only_what_is_missing(tmp_path, dataset, plan):
    # Three runs of 10, 300 and 20 steps; the sweep is SIGKILLed while the 300-step run is
    # between checkpoints (it saves every 100 steps). Restarted with --resume it must train
    # the rest of run 2 from its checkpoint and all of run 3, and leave run 1 byte for byte.
    # Under plan "inprocess" the trainer is the sweep's own process; the kill is the same.
    path = write_sweep(
        tmp_path / "s.yaml",
        budgets={"kind": "tokens", "values": [1280, 38400, 2560]},
        schedule={"checkpoints": 3},
    )
    out = tmp_path / "out"
    runs = out / "runs"
    first, second, third = (runs / f"baseline.a.{b}.s0" for b in ("t1.28e3", "t3.84e4", "t2.56e3"))
    proc = subprocess.Popen(
        _sweep_cmd(path, out, dataset, "--plan", plan),
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        while not (second / "checkpoints" / "step_00000100" / "filtertron.json").is_file():
            assert proc.poll() is None, "sweep ended before its second run checkpointed"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (first / "result.json").is_file()
    assert not (second / "result.json").exists()
    assert not (third / "checkpoints").exists()  # prepared (run.yaml), never started
    # The trainer dies with the sweep (PR_SET_PDEATHSIG): its log stops growing.
    time.sleep(3)
    size = (second / "train.log").stat().st_size
    time.sleep(2)
    assert (second / "train.log").stat().st_size == size
    before = _digest(first)

    # Without --resume the interrupted run is reported, nothing runs.
    plain = subprocess.run(
        _sweep_cmd(path, out, dataset, "--plan", plan),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 2
    assert "interrupted runs: baseline.a.t3.84e4.s0 (step 100/300); pass --resume" in plain.stderr

    again = subprocess.run(
        _sweep_cmd(path, out, dataset, "--resume", "--plan", plan),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 3 runs finished; 2 to do" in again.stdout
    assert _digest(first) == before
    attempts = [
        json.loads((d / "result.json").read_text())["attempts"] for d in (first, second, third)
    ]
    assert attempts == [1, 2, 1]
    assert "resumed from" in (second / "train.log").read_text()
    steps = [
        json.loads(line)["step"] for line in (second / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 300 and 101 in steps
    rows = (out / "table.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("variant,n_params,tokens,loss,flops,seed")
    state = json.loads((out / "sweep.json").read_text())
    assert {v["status"] for v in state["runs"].values()} == {"finished"}

    # A third invocation trains nothing; an edited sweep is refused before anything runs.
    done = subprocess.run(
        _sweep_cmd(path, out, dataset, "--plan", plan),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "3 of 3 runs finished; 0 to do" in done.stdout
    edited = write_sweep(
        tmp_path / "s.yaml",
        budgets={"kind": "tokens", "values": [1280, 38400, 2560]},
        schedule={"checkpoints": 3, "warmup_fraction": 0.3},
    )
    changed = subprocess.run(
        _sweep_cmd(edited, out, dataset, "--plan", plan),
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert changed.returncode == 2
    assert (
        "runs already trained with another config: baseline.a.t1.28e3.s0 (train.warmup: 1 -> 3"
        in (changed.stderr)
    )
    assert _digest(first) == before


def test_script_plan_writes_a_script_that_trains_its_run(tmp_path, dataset, capsys):
    path = write_sweep(tmp_path / "s.yaml", budgets={"kind": "tokens", "values": [1280, 2560]})
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--plan", "script"]
    assert main([*args, "--set", f"data.path={dataset}"]) == 0
    scripts = sorted((out / "scripts").glob("*.sh"))
    assert [s.name for s in scripts] == [
        "all.sh", "baseline.a.t1.28e3.s0.sh", "baseline.a.t2.56e3.s0.sh"
    ]  # fmt: skip
    assert not (out / "runs" / "baseline.a.t1.28e3.s0" / "result.json").exists()
    # A rendezvous in the caller's environment (as an in-process Trainer leaves behind) on a
    # port still held open must not reach the run: it is a job of its own.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(held.getsockname()[1])
    with held:
        done = subprocess.run(
            [str(scripts[1])], cwd="/", capture_output=True, text=True, timeout=600, env=env
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "baseline.a.t1.28e3.s0: loss" in done.stdout
    result = json.loads((out / "runs" / "baseline.a.t1.28e3.s0" / "result.json").read_text())
    assert result["steps"] == 10 and result["loss"] > 0
    assert main([*args, "--collect", "--set", f"data.path={dataset}"]) == 0
    assert len((out / "table.csv").read_text().splitlines()) == 2  # header + the one run


def test_slurm_plan_dry_run_shows_the_job_array(tmp_path, dataset, capsys):
    path = write_sweep(
        tmp_path / "s.yaml",
        budgets={"kind": "tokens", "values": [1280, 2560, 5120]},
        slurm={"slurm_partition": "gpu", "timeout_min": 30, "gpus_per_node": 1},
    )
    out = tmp_path / "out"
    args = ["sweep", str(path), "--out", str(out), "--plan", "slurm", "--dry-run"]
    assert main([*args, "--set", f"data.path={dataset}"]) == 0
    text = capsys.readouterr().out
    assert "slurm job array of 3 task(s) through submitit" in text
    assert "slurm_partition: 'gpu'" in text and "timeout_min: 30" in text
    assert "[2] baseline.a.t5.12e3.s0:" in text and "filtertron.scaling.runner" in text
    assert not out.exists()


def test_slurm_plan_without_slurm_says_what_to_do(tmp_path, dataset, capsys):
    if subprocess.run(["which", "srun"], capture_output=True).returncode == 0:
        pytest.skip("this machine has slurm")
    path = write_sweep(tmp_path / "s.yaml")
    args = ["sweep", str(path), "--out", str(tmp_path / "o"), "--plan", "slurm"]
    assert main([*args, "--set", f"data.path={dataset}"]) == 2
    assert "--slurm-cluster local" in capsys.readouterr().err


@pytest.mark.slow
def test_slurm_plan_runs_through_submitits_local_executor(tmp_path, dataset):
    path = write_sweep(tmp_path / "s.yaml", slurm={"timeout_min": 10})
    out = tmp_path / "out"
    cmd = _sweep_cmd(path, out, dataset, "--plan", "slurm", "--slurm-cluster", "local", "--wait")
    done = subprocess.run(
        cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "submitted 1 jobs" in done.stdout
    state = json.loads((out / "sweep.json").read_text())
    assert state["runs"]["baseline.a.t1.28e3.s0"]["job_id"]
    assert list((out / "slurm").glob("*_submitted.pkl"))  # submitit's own job files
    assert len((out / "table.csv").read_text().splitlines()) == 2

"""Multi-process training through the deepspeed launcher on gloo (2 processes on this CPU).

ZeRO stages agree; a SIGKILLed run resumes step-for-step; a simulated two-node launch trains.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.conftest import ROOT, free_port, launcher_env, run_launcher, tiny_overrides

pytestmark = pytest.mark.distributed


def last_losses(out_dir):
    """step -> loss, the last value logged for each step (a resumed run logs some twice)."""
    out = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def train_args(dataset, out_dir, **extra):
    args = ["configs/tiny.yaml", "--nproc", "2"]
    for o in tiny_overrides(dataset, out_dir, **extra):
        args += ["--set", o]
    return args


def check(proc):
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


# ZeRO-1 is ZeRO-2 without gradient partitioning; 2 (the demo's) and 3 run by default.
@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), 2, 3])
def test_zero_stages_match_stage0(dataset, tmp_path_factory, stage):
    ref_dir = tmp_path_factory.getbasetemp() / "zero0"
    if not (ref_dir / "metrics.jsonl").exists():
        check(run_launcher(train_args(dataset, ref_dir, **{"train.steps": 4})))
    out = tmp_path_factory.mktemp(f"zero{stage}")
    check(
        run_launcher(train_args(dataset, out, **{"train.steps": 4, "parallel.zero_stage": stage}))
    )
    ref, got = last_losses(ref_dir), last_losses(out)
    assert len(ref) == 4
    for step in ref:  # fp32: identical math, reductions in a different order
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, got, ref)


def test_sigkill_then_resume_matches_uninterrupted(dataset, tmp_path):
    """Also: DeepSpeed's /dev/shm buffers of neither the killed run nor its resume remain."""
    from tests.train.test_quiet import shm_names

    extra = {"train.steps": 30, "train.save_every": 3, "parallel.zero_stage": 2}
    ref_dir = tmp_path / "ref"
    check(run_launcher(train_args(dataset, ref_dir, **extra)))
    out = tmp_path / "killed"
    killed_port, resume_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "filtertron.cli",
        "train",
        *train_args(dataset, out, **extra),
        "--master-port",
        str(killed_port),
    ]
    proc = subprocess.Popen(
        cmd,
        env=launcher_env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = out / "checkpoints" / "step_00000006" / "filtertron.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never committed the step-6 checkpoint"
    killed_at = max(last_losses(out))
    assert killed_at < 30, "the run finished before it could be killed"
    assert shm_names(killed_port) == []  # unlinked once mapped: SIGKILL leaves nothing
    check(
        run_launcher(
            train_args(dataset, out, **extra) + ["--resume", "--master-port", str(resume_port)]
        )
    )
    ref, got = last_losses(ref_dir), last_losses(out)
    assert sorted(got) == list(range(1, 31))
    assert [got[s] for s in range(7, 31)] == [ref[s] for s in range(7, 31)]
    assert shm_names(killed_port) == shm_names(resume_port) == []


def test_simulated_two_node_launch(dataset, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out = tmp_path / "twonode"
    port = str(free_port())
    overrides = []
    for o in tiny_overrides(dataset, out, **{"train.steps": 3}):
        overrides += ["--set", o]
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(node_rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            str(ROOT / "launch" / "train.py"),
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            *overrides,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=launcher_env(),
                cwd=ROOT,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-5000:]
    assert sorted(last_losses(out)) == [1, 2, 3]
    meta = json.loads((out / "checkpoints" / "step_00000003" / "filtertron.json").read_text())
    assert meta["world_size"] == 2


@pytest.mark.parametrize("layout", [{"parallel.tp": 2}, {"parallel.pp": 2}])
def test_tensor_and_pipeline_parallel_match_one_process(dataset, tmp_path_factory, layout):
    """The trainer under TP=2 or PP=2 (DP=1: the same global batch) reproduces the
    single-process losses, with GRC, tied embeddings, ZeRO-1 and gradient accumulation."""
    common = {
        "train.steps": 4,
        "parallel.zero_stage": 1,
        "train.grad_accum": 2,
        "model.residual.kind": "generalized",
        "train.save_every": 0,
    }
    ref_dir = tmp_path_factory.getbasetemp() / "one-process"
    if not (ref_dir / "metrics.jsonl").exists():
        args = train_args(dataset, ref_dir, **common)
        args[args.index("--nproc") + 1] = "1"
        check(run_launcher(args))
    out = tmp_path_factory.mktemp("layout")
    check(run_launcher(train_args(dataset, out, **common, **layout)))
    ref, got = last_losses(ref_dir), last_losses(out)
    assert sorted(got) == [1, 2, 3, 4]
    for step in ref:
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), (step, got, ref)
    assert (out / "checkpoints" / "step_00000004" / "model.pt").is_file()

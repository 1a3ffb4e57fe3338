"""Multi-process training through the deepspeed launcher on gloo (2 processes on this CPU).

ZeRO stages agree; a SIGKILLed run resumes step-for-step; a simulated two-node launch trains;
the SLURM batch script and the mpirun recipe run (srun and scontrol faked: no SLURM here).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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


# ZeRO-1 is ZeRO-2 without gradient partitioning; 2 (the demo's) runs by default, 1 and 3 slow.
slow = pytest.mark.slow


@pytest.mark.parametrize("stage", [pytest.param(1, marks=slow), 2, pytest.param(3, marks=slow)])
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


# ----------------------------------------------------------------- SLURM and mpirun recipes

SBATCH = ROOT / "launch" / "slurm.sbatch"


def sbatch_options(path=SBATCH) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value
    return out


def test_sbatch_log_goes_where_a_fresh_checkout_has_a_folder():
    """SLURM opens --output before the script runs and creates no folder for it: the path
    must be in the submit directory itself or in a folder the repository tracks."""
    output = sbatch_options()["output"]
    folder = os.path.dirname(output)
    tracked = subprocess.run(
        ["git", "ls-files", "--", folder or "."], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert folder == "" or tracked.strip(), f"--output={output}: {folder}/ is not in the repo"
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0


def _fake_bin(tmp_path, name: str, body: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text("#!/bin/bash\n" + body)
    exe.chmod(0o755)
    return bin_dir


def _sbatch_env(bin_dir, submit_dir, **extra) -> dict[str, str]:
    env = launcher_env()
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "OMPI_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID="4123456",
        SLURM_JOB_NAME="filtertron",
        SLURM_SUBMIT_DIR=str(submit_dir),
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="8",
        SLURM_NTASKS="16",
        SLURM_JOB_NODELIST="gpu[07-08]",
    )
    env.update(extra)
    return env


def test_sbatch_body_runs_srun_from_the_submit_dir_and_names_its_log(tmp_path):
    """The batch script as SLURM runs it (a copy in a spool folder, cwd elsewhere), with a
    fake srun that records where it ran and what it was given."""
    bin_dir = _fake_bin(tmp_path, "srun", f'echo "$PWD|$*" > {tmp_path}/srun.call\n')
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "slurm_script").write_text(SBATCH.read_text())
    proc = subprocess.run(
        ["bash", str(spool / "slurm_script"), "configs/tiny.yaml", "--set", "train.steps=3"],
        env=_sbatch_env(bin_dir, ROOT),
        cwd=spool,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    where, args = (tmp_path / "srun.call").read_text().strip().split("|")
    assert where == str(ROOT)
    assert args.split() == [
        "--kill-on-bad-exit=1",
        "python",
        "launch/train.py",
        "--config",
        "configs/tiny.yaml",
        "--set",
        "train.steps=3",
    ]
    assert f"this log: {ROOT}/filtertron-4123456.out" in proc.stdout
    # submitted from somewhere that is not a checkout: one line, and srun never runs
    (tmp_path / "srun.call").unlink()
    proc = subprocess.run(
        ["bash", str(spool / "slurm_script"), "configs/tiny.yaml"],
        env=_sbatch_env(bin_dir, tmp_path),
        cwd=spool,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "submit from the filtertron checkout" in proc.stderr
    assert not (tmp_path / "srun.call").exists()


FAKE_SRUN = r"""
# srun as it starts one step: SLURM_NTASKS copies of the command on this "node", each with the
# variables srun gives its tasks.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((r = 0; r < SLURM_NTASKS; r++)); do
  SLURM_STEP_ID=0 SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 \
    SLURM_STEP_NUM_TASKS=$SLURM_NTASKS SLURM_STEP_NUM_NODES=1 \
    SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


@pytest.mark.slow
def test_sbatch_trains_two_ranks_through_srun(dataset, tmp_path):
    """launch/slurm.sbatch end to end on one "node" with 2 tasks: the script, a fake srun that
    starts the tasks with SLURM's variables only, rank discovery, and 3 training steps of one
    world of 2 (the committed checkpoint records world_size 2)."""
    from tests.parallel.test_distributed import slurm_job_id

    bin_dir = _fake_bin(tmp_path, "srun", FAKE_SRUN)
    _fake_bin(tmp_path, "python", f'exec "{sys.executable}" "$@"\n')  # the venv's python
    out = tmp_path / "run"
    overrides = []
    for o in tiny_overrides(dataset, out, **{"train.steps": 3}):
        overrides += ["--set", o]
    env = _sbatch_env(
        bin_dir,
        ROOT,
        SLURM_JOB_ID=slurm_job_id(),
        SLURM_NNODES="1",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NTASKS="2",
        SLURM_JOB_NODELIST="localhost",
    )
    proc = subprocess.run(
        ["bash", str(SBATCH), "configs/tiny.yaml", *overrides],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert sorted(last_losses(out)) == [1, 2, 3]
    meta = json.loads((out / "checkpoints" / "step_00000003" / "filtertron.json").read_text())
    assert meta["world_size"] == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun")
def test_mpirun_recipe_on_one_machine_without_master_addr(dataset, tmp_path):
    """launch/mpirun.sh -np 2 with no MASTER_ADDR: the ranks meet on 127.0.0.1 and train one
    world of 2."""
    out = tmp_path / "run"
    overrides = []
    for o in tiny_overrides(dataset, out, **{"train.steps": 3}):
        overrides += ["--set", o]
    env = launcher_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "launch" / "mpirun.sh"),
            "-np",
            "2",
            "--oversubscribe",
            "configs/tiny.yaml",
            *overrides,
        ],
        env={**env, "PYTHON": sys.executable},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    meta = json.loads((out / "checkpoints" / "step_00000003" / "filtertron.json").read_text())
    assert meta["world_size"] == 2

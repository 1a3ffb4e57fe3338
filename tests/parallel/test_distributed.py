"""Rank discovery under srun and mpirun without a rendezvous address.

The rules of :func:`filtertron.parallel.distributed.discover` on written-out environments, then
real processes started with nothing but what srun or mpirun would set (no RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT): two of them must form one gloo world of 2 and all-reduce
rank-dependent values to their sum, and a multi-node srun world whose first host cannot be
found must stop every rank with one line saying what to set. SLURM is not installed here: a
fake ``scontrol`` on PATH answers ``scontrol show hostnames`` and records its arguments.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from filtertron.parallel.distributed import (
    LaunchError,
    Rendezvous,
    cuda_device_index,
    discover,
)

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "TORCHELASTIC_")
PLAIN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def fake_scontrol(folder: Path, hosts: list[str], status: int = 0) -> Path:
    """An ``scontrol`` that records its arguments in ``folder/scontrol.args`` and prints
    ``hosts`` one a line (or fails with ``status``)."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "scontrol"
    body = "\n".join(f"echo {h}" for h in hosts)
    exe.write_text(
        f'#!/bin/bash\necho "$@" >> "{folder}/scontrol.args"\n'
        + (f"echo 'scontrol: error: no such nodes' >&2\nexit {status}\n" if status else body)
        + "\n"
    )
    exe.chmod(0o755)
    return folder


def srun_env(rank: int, **extra: str) -> dict[str, str]:
    """What srun sets for task ``rank`` of a 2-node, 16-task step (one task per GPU)."""
    env = {
        "SLURM_JOB_ID": "4123456",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % 8),
        "SLURM_NODEID": str(rank // 8),
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_NNODES": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }
    env.update(extra)
    return env


def test_srun_across_nodes_meets_on_the_first_host(tmp_path, monkeypatch):
    bin_dir = fake_scontrol(tmp_path / "bin", ["gpu07", "gpu08"])
    monkeypatch.setenv("PATH", str(bin_dir))
    r = discover(srun_env(11))
    assert r == Rendezvous(
        11, 16, 3, "gpu07", 15000 + 3456, "srun", "first host of SLURM_STEP_NODELIST"
    )
    assert (bin_dir / "scontrol.args").read_text().split() == ["show", "hostnames", "gpu[07-08]"]
    # every task derives the same address and port
    assert {
        (discover(srun_env(k)).master_addr, discover(srun_env(k)).master_port) for k in (0, 8, 15)
    } == {("gpu07", 18456)}


def test_srun_on_one_node_needs_no_scontrol(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol anywhere
    env = srun_env(
        1,
        SLURM_NTASKS="2",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_NNODES="1",
        SLURM_STEP_NUM_NODES="1",
        SLURM_JOB_NODELIST="gpu07",
        SLURM_STEP_NODELIST="gpu07",
    )
    r = discover(env)
    assert (r.rank, r.world_size, r.local_rank, r.master_addr) == (1, 2, 1, "127.0.0.1")
    explicit = discover({**env, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29999"})
    assert (explicit.master_addr, explicit.master_port) == ("10.1.2.3", 29999)


def test_srun_across_nodes_without_scontrol_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match=r"export MASTER_ADDR=") as e:
        discover(srun_env(0))
    assert "\n" not in str(e.value) and "gpu[07-08]" in str(e.value)
    monkeypatch.setenv("PATH", str(fake_scontrol(tmp_path / "bad", [], status=1)))
    with pytest.raises(
        LaunchError, match=r"failed \(scontrol: error: no such nodes\).*MASTER_ADDR"
    ):
        discover(srun_env(0))
    # given explicitly, nothing is looked up
    assert discover(srun_env(5, MASTER_ADDR="gpu07")).master_addr == "gpu07"


@pytest.mark.parametrize(
    "env,match",
    [
        (srun_env(3, WORLD_SIZE="8"), r"WORLD_SIZE=8 but srun started 16 tasks"),
        (srun_env(3, RANK="0", WORLD_SIZE="16"), r"RANK=0, WORLD_SIZE=16, but this is srun task 3"),
        (srun_env(16, MASTER_ADDR="gpu07"), r"SLURM_PROCID=16 is outside the 16 tasks"),
        # python run directly in the batch script: the allocation's count, no step
        (
            {k: v for k, v in srun_env(0).items() if not k.startswith("SLURM_STEP")},
            r"not started by srun \(no SLURM_STEP_ID\)",
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "0",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
                "WORLD_SIZE": "2",
            },
            r"WORLD_SIZE=2 but mpirun started 4 tasks",
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "5",
                "OMPI_COMM_WORLD_SIZE": "16",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
            },
            r"mpirun across nodes .* -x MASTER_ADDR=",
        ),
        ({"WORLD_SIZE": "4"}, r"WORLD_SIZE=4 without RANK"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, r"no MASTER_ADDR"),
        (srun_env(0, SLURM_PROCID="x"), r"SLURM_PROCID='x': expected an integer"),
    ],
)
def test_contradictions_never_start(env, match, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_scontrol(tmp_path, ["gpu07", "gpu08"])))
    with pytest.raises(LaunchError, match=match) as e:
        discover(env)
    assert "\n" not in str(e.value)


def test_launchers_that_set_rank_themselves_win():
    # torchrun inside srun (one task per node): its RANK / WORLD_SIZE span all nodes
    env = srun_env(
        1,
        RANK="9",
        WORLD_SIZE="16",
        LOCAL_RANK="1",
        MASTER_ADDR="gpu07",
        MASTER_PORT="29400",
        TORCHELASTIC_RUN_ID="j",
        SLURM_NTASKS="2",
        SLURM_STEP_NUM_TASKS="2",
    )
    assert discover(env) == Rendezvous(9, 16, 1, "gpu07", 29400, "env", "MASTER_ADDR")
    # RANK / WORLD_SIZE set per task to agree with srun's
    agree = srun_env(4, RANK="4", WORLD_SIZE="16", MASTER_ADDR="gpu07")
    assert (discover(agree).rank, discover(agree).world_size) == (4, 16)


def test_mpirun_and_no_launcher():
    one_node = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "OMPI_MCA_ess_base_jobid": "561905665",
    }
    r = discover(one_node)
    assert (r.rank, r.world_size, r.local_rank, r.master_addr) == (1, 2, 1, "127.0.0.1")
    assert r.master_port == 20000 + zlib.crc32(b"561905665") % 10000
    nodes = {**one_node, "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "MASTER_ADDR": "n0"}
    assert discover(nodes).master_addr == "n0"
    alone = discover({})
    assert (alone.rank, alone.world_size, alone.master_addr, alone.launcher) == (
        0,
        1,
        "127.0.0.1",
        "none",
    )


def test_cuda_device_of_a_rank():
    assert cuda_device_index(3, 8) == 3  # every task sees the node's GPUs
    assert cuda_device_index(3, 1) == 0  # --gpus-per-task=1: each task sees its own
    with pytest.raises(LaunchError, match=r"LOCAL_RANK=3 but this process sees 2 GPUs"):
        cuda_device_index(3, 2)


# ----------------------------------------------------------------- real processes

WORLD = r"""
import json, os, torch
from filtertron.parallel import collectives
from filtertron.parallel.distributed import init_distributed
info = init_distributed()
total = collectives.all_reduce(torch.tensor([info.rank + 1.0, 10.0 ** info.rank]))
print("RESULT " + json.dumps({"rank": info.rank, "world": info.world_size,
      "local": info.local_rank, "backend": info.backend, "sum": total.tolist(),
      "at": os.environ["MASTER_ADDR"] + ":" + os.environ["MASTER_PORT"]}))
"""


def launcher_free_env(path_first: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in PLAIN and not k.startswith(LAUNCHER_PREFIXES)
    }
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def slurm_job_id() -> str:
    """A job id whose derived port (15000 + its last four digits) is free here."""
    for k in random.sample(range(10000), 200):
        if _port_is_free(15000 + k):
            return f"77{k:04d}"
    raise RuntimeError("no free port in 15000-24999")


def ompi_job_id() -> str:
    for _ in range(200):
        job = str(random.randrange(10**8, 10**9))
        if _port_is_free(20000 + zlib.crc32(job.encode()) % 10000):
            return job
    raise RuntimeError("no free port in 20000-29999")


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORLD],
        env=env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def results(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-4000:]
        out.append(json.loads(next(x for x in stdout.splitlines() if x.startswith("RESULT "))[7:]))
    return out


@pytest.mark.distributed
def test_srun_and_mpirun_tasks_form_one_world(tmp_path):
    """Two srun tasks on two "nodes" (only SLURM_* set; the fake scontrol names 127.0.0.1
    first) and two mpirun ranks on one node (only OMPI_* set) each form one gloo world of 2:
    both ranks all-reduce (rank + 1, 10^rank) to (3, 11). With today's discovery each would
    be rank 0 of a world of 1 and see its own values."""
    bin_dir = fake_scontrol(tmp_path / "bin", ["127.0.0.1", "node-b"])
    job = slurm_job_id()
    slurm = [
        start(
            launcher_free_env(
                bin_dir,
                SLURM_JOB_ID=job,
                SLURM_STEP_ID="0",
                SLURM_PROCID=str(r),
                SLURM_LOCALID="0",
                SLURM_NODEID=str(r),
                SLURM_NTASKS="2",
                SLURM_NNODES="2",
                SLURM_JOB_NODELIST="node-[a-b]",
            )
        )
        for r in range(2)
    ]
    ompi_job = ompi_job_id()
    ompi = [
        start(
            launcher_free_env(
                None,
                OMPI_COMM_WORLD_RANK=str(r),
                OMPI_COMM_WORLD_SIZE="2",
                OMPI_COMM_WORLD_LOCAL_RANK=str(r),
                OMPI_COMM_WORLD_LOCAL_SIZE="2",
                OMPI_MCA_ess_base_jobid=ompi_job,
            )
        )
        for r in range(2)
    ]
    got_slurm, got_ompi = results(slurm), results(ompi)
    assert (bin_dir / "scontrol.args").read_text().split()[:3] == [
        "show",
        "hostnames",
        "node-[a-b]",
    ]
    for got, at in (
        (got_slurm, f"127.0.0.1:{15000 + int(job[-4:])}"),
        (got_ompi, f"127.0.0.1:{20000 + zlib.crc32(ompi_job.encode()) % 10000}"),
    ):
        assert sorted(r["rank"] for r in got) == [0, 1]
        for r in got:
            assert (r["world"], r["backend"], r["sum"], r["at"]) == (2, "gloo", [3.0, 11.0], at)
    assert [r["local"] for r in got_ompi] == [0, 1] or [r["local"] for r in got_ompi] == [1, 0]


@pytest.mark.distributed
def test_srun_without_a_first_host_stops_every_rank_with_one_line(tmp_path):
    """``srun launch/train.py`` on 2 nodes, no MASTER_ADDR, no scontrol: each task exits 2
    at once with one line naming MASTER_ADDR, and nothing trains."""
    empty = tmp_path / "nothing-on-path"
    empty.mkdir()
    procs = []
    for r in range(2):
        env = launcher_free_env(
            None,
            SLURM_JOB_ID="4123456",
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(r),
            SLURM_LOCALID="0",
            SLURM_NTASKS="2",
            SLURM_NNODES="2",
            SLURM_JOB_NODELIST="node-[a-b]",
        )
        env["PATH"] = str(empty)
        cmd = [
            sys.executable,
            str(ROOT / "launch" / "train.py"),
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--set",
            f"train.out_dir={tmp_path / 'run'}",
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 2, stderr[-3000:]
        lines = [x for x in stderr.splitlines() if x.startswith("filtertron train:")]
        assert len(lines) == 1, stderr[-3000:]
        assert lines[0].startswith("filtertron train: launch error: srun across several nodes")
        assert "export MASTER_ADDR=" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_under_srun_reads_the_world_like_training(tmp_path):
    """``srun filtertron eval`` on 2 nodes without MASTER_ADDR or scontrol: one launch-error
    line, exit 2 (it used to read only WORLD_SIZE, so every task evaluated alone)."""
    empty = tmp_path / "nothing-on-path"
    empty.mkdir()
    env = launcher_free_env(
        None,
        SLURM_JOB_ID="4123456",
        SLURM_STEP_ID="0",
        SLURM_PROCID="1",
        SLURM_LOCALID="0",
        SLURM_NTASKS="2",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="node-[a-b]",
    )
    env["PATH"] = str(empty)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "filtertron.cli",
            "eval",
            str(tmp_path / "no-run"),
            "--data",
            str(tmp_path / "no-data"),
            "--out",
            str(tmp_path / "report"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("filtertron eval: launch error: srun across several nodes")
    ), proc.stderr[-3000:]

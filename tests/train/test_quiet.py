"""Quiet by default: a 2-process training prints its progress and interval lines, not
DeepSpeed's; the log files hold those; ``--verbose`` shows them; a known error inside a rank
is one line; DeepSpeed's /dev/shm buffers do not outlive the run."""

import os
import re
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT, free_port, launcher_env, run_launcher, tiny_overrides

pytestmark = pytest.mark.distributed
LIBRARY_LINE = re.compile(r"\[(INFO|WARNING)\]")


def shm_names(port: int) -> list[str]:
    """This user's DeepSpeed all-reduce buffers of the run on ``port``."""
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


def args(dataset, out, port, *extra, **overrides):
    argv = ["configs/tiny.yaml", "--nproc", "2", "--master-port", str(port), *extra]
    for o in tiny_overrides(dataset, out, **{"train.steps": 3, "train.log_every": 1, **overrides}):
        argv += ["--set", o]
    return argv


def test_two_process_training_is_quiet_and_leaves_no_shm(dataset, tmp_path):
    port = free_port()
    proc = run_launcher(args(dataset, tmp_path / "run", port))
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert not LIBRARY_LINE.search(printed), printed[-3000:]
    assert "DeepSpeed" not in printed and "megatron" not in printed
    assert re.search(r"step +3 \| loss \d", printed) and "done: step 3" in printed
    logs = tmp_path / "run" / "logs"
    assert LIBRARY_LINE.search((logs / "launcher.log").read_text())  # the launcher's own
    rank0 = (logs / "rank0.log").read_text()
    assert "WARNING DeepSpeed:" in rank0 and "megatron.core" in rank0
    assert (logs / "rank1.log").is_file()
    assert shm_names(port) == []


@pytest.mark.slow  # the quiet default is tested above; this is its inverse
def test_verbose_shows_the_library_lines(dataset, tmp_path):
    port = free_port()
    proc = run_launcher(args(dataset, tmp_path / "run", port, "--verbose"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert LIBRARY_LINE.search(proc.stdout + proc.stderr)
    assert shm_names(port) == []


def test_truncated_bin_in_a_rank_is_one_line(dataset, tmp_path):
    import shutil

    bad = tmp_path / "data"
    shutil.copytree(dataset, bad)
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(1000)
    port = free_port()
    proc = run_launcher(args(bad, tmp_path / "run", port))
    assert proc.returncode == 2
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("filtertron train: data error: ")
    assert "train.bin: truncated" in lines[0]
    assert "Traceback" in (tmp_path / "run" / "logs" / "rank0.log").read_text()
    assert shm_names(port) == []


def test_garbage_idx_is_one_line(dataset, tmp_path):
    import shutil

    bad = tmp_path / "data"
    shutil.copytree(dataset, bad)
    (bad / "validation.idx").write_bytes(b"not an index" * 10)
    argv = args(bad, tmp_path / "run", free_port())
    argv[argv.index("--nproc") + 1] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "filtertron.cli", "train", *argv],
        env=launcher_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = [x for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "data error" in lines[0] and "validation.idx" in lines[0], lines

"""tools/gpu: both scripts parse (bash -n); on a machine without a GPU the check validates the
wheels folder first, then says plainly that no GPU is present and exits non-zero."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "gpu" / "check.sh"
WHEELS = [
    "deepspeed-0.19.8-py3-none-any.whl",
    "hjson-3.1.0-py3-none-any.whl",
    "megatron_core-0.16.1-cp312-cp312-manylinux_2_28_x86_64.whl",
    "pydantic-2.14.4-py3-none-any.whl",
    "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl",
    "annotated_types-0.8.0-py3-none-any.whl",
    "typing_inspection-0.4.5-py3-none-any.whl",
]


@pytest.mark.parametrize("script", ["check.sh", "wheels.sh"])
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(ROOT / "tools" / "gpu" / script)], check=True)


def _check(tmp_path, wheels: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FILTERTRON_WHEELS": str(wheels), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(CHECK), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_check_on_cpu_checks_wheels_then_says_no_gpu(tmp_path):
    missing = _check(tmp_path, tmp_path / "no-wheels")
    assert missing.returncode == 2 and "run tools/gpu/wheels.sh" in missing.stderr
    wheels = tmp_path / "whl"
    wheels.mkdir()
    for name in WHEELS[:-1]:
        (wheels / name).write_bytes(b"")
    partial = _check(tmp_path, wheels)
    assert partial.returncode == 2 and "typing_inspection" in partial.stderr
    (wheels / WHEELS[-1]).write_bytes(b"")
    (wheels / "hjson-3.0.0-py3-none-any.whl").write_bytes(b"")  # two versions of one
    two = _check(tmp_path, wheels)
    assert two.returncode == 2 and "2 wheels of hjson" in two.stderr
    (wheels / "hjson-3.0.0-py3-none-any.whl").unlink()
    proc = _check(tmp_path, wheels)
    assert proc.returncode == 3, proc.stderr
    assert "no GPU present" in proc.stderr and "torch.cuda.is_available() is False" in proc.stderr
    assert "no GPU present" in (tmp_path / "out" / "summary.txt").read_text()
    assert not (tmp_path / "out" / "00-install.log").exists()  # nothing installed first

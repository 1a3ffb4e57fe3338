"""tools/gpu: both scripts parse (bash -n); on a machine without a GPU the check validates the
wheels folder first, then says plainly that no GPU is present and exits non-zero; under a fake
GPU (tests/fake_gpu: torch.cuda answers as if one were there, and what only a GPU can run is
stubbed after its command line has been checked) the whole check runs end to end: every part's
command is found and runs, the summary has a line per part, the archive holds the logs, and
parts past the budget are skipped with a line saying so. tools/gpu/check_run.py's resume
comparison fails on differences a broken resume makes.

On 2026-12-04 ``timeout ... launch`` (a shell function) kept training, resume and eval from
ever starting on a GPU; the fake-GPU run fails on that script (exit 127, "No such file").
"""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "gpu" / "check.sh"
FAKE = ROOT / "tests" / "fake_gpu"
PARTS = [
    "00-prepare",
    "01-kernels",
    "02-throughput",
    "03-train",
    "04-train-check",
    "05-resume",
    "06-resume-check",
    "07-eval",
    "08-generate",
    "09-attention",
]
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


def _fake_gpu_check(tmp_path, **env_extra) -> tuple[subprocess.CompletedProcess, Path, str]:
    """check.sh under the fake GPU; returns (process, OUTDIR, the commands PYTHON ran)."""
    tag = f"cp3{sys.version_info[1]}"  # binary wheels name the Python the check then wants
    wheels = tmp_path / "whl"
    wheels.mkdir()
    for name in WHEELS:
        (wheels / name.replace("cp312", tag)).write_bytes(b"")  # pip is stubbed
    calls = tmp_path / "calls.txt"
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {
        **{k: v for k, v in os.environ.items() if k not in dist},  # an earlier test's group
        "FILTERTRON_WHEELS": str(wheels),
        "PYTHON": str(FAKE / "python"),
        "FAKE_GPU_PYTHON": sys.executable,
        "FAKE_GPU_LOG": str(calls),
        "FILTERTRON_FAKE_GPU": "1",
        **{
            f"FAKE_GPU_{v}": os.environ[v]
            for v in ("TORCH_EXTENSIONS_DIR", "TORCHINDUCTOR_CACHE_DIR")
            if v in os.environ
        },
        **env_extra,
    }
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(CHECK), str(out)], env=env, capture_output=True, text=True, timeout=3600
    )
    return proc, out, calls.read_text() if calls.exists() else ""


def _assert_every_part_ran(proc, out: Path, calls: str) -> list[str]:
    """Every part found its command and passed; returns the final summary's part lines."""
    console = proc.stdout + proc.stderr
    logs = [log.read_text() for log in sorted(out.glob("*.log"))]
    for text in (console, *logs):
        for sign in ("command not found", "No such file", "exit 126", "exit 127"):
            assert sign not in text, f"{sign!r}: {text[-3000:]}"
    assert proc.returncode == 0, console[-5000:]
    assert all((out / f"{p}.log").is_file() for p in PARTS)
    final = (out / "summary.txt").read_text().split("--- summary (parts in order)\n")[1]
    lines = final.splitlines()
    assert lines[0].startswith("versions: ") and "Fake GPU (CPU shim) sm_90" in lines[0]
    assert [ln.split()[1] for ln in lines[1:-1]] == PARTS, final
    assert all(ln.startswith(f"PASS {p} (") for ln, p in zip(lines[1:-1], PARTS)), final
    assert lines[-1].startswith("10 passed, 0 failed, 0 skipped in ")
    for command in (
        "-m pytest -m gpu and not slow",
        "bench/train_throughput.py --device cuda --budget ",
        "-m deepspeed.launcher.runner --num_gpus 1",
        "tools/gpu/check_run.py train",
        "tools/gpu/check_run.py rollback",
        "tools/gpu/check_run.py resume",
        "-m filtertron.cli eval",
        "-m filtertron.cli generate",
        "bench/attention.py --device cuda --budget ",
    ):
        assert command in calls, f"never ran {command!r}:\n{calls}"
    assert calls.count("launch/train.py --config configs/tiny.yaml") == 2
    assert "--resume" in calls.splitlines()[-1] or "--resume" in calls
    with tarfile.open(out / "check.tar.gz") as tar:
        names = tar.getnames()
    for p in PARTS:
        assert f"out/{p}.log" in names
    assert "out/summary.txt" in names and "out/run/metrics.jsonl" in names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".idx")) or "/cache/" in n]
    return lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="fakes a GPU on a CPU machine")
def test_check_runs_every_part_under_a_fake_gpu(tmp_path):
    proc, out, calls = _fake_gpu_check(tmp_path)
    lines = _assert_every_part_ran(proc, out, calls)
    resume = next(ln for ln in lines if ln.startswith("PASS 06-resume-check"))
    assert "25/25 exact" in resume  # the stub trains the same losses for the same steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="fakes a GPU on a CPU machine")
def test_check_skips_parts_past_its_budget(tmp_path):
    proc, out, _ = _fake_gpu_check(tmp_path, CHECK_BUDGET="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.txt").read_text()
    for p in ("00-prepare", "01-kernels", "09-attention"):
        assert f"SKIP {p}: needs at least " in summary and "of the 0s budget left" in summary
    assert "SKIP 02-throughput: needs 00-prepare, which did not pass" in summary
    assert "0 passed, 0 failed, 10 skipped in " in summary
    assert (out / "check.tar.gz").is_file()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="fakes a GPU on a CPU machine")
def test_check_trains_resumes_and_evaluates_for_real_on_cpu(tmp_path):
    """The launcher, eval and generate run for real (gloo, CPU): the check's own checks of a
    real run, the resume comparison included, pass (2-4 minutes on 2 idle cores, 11 at load 9)."""
    # limits sized for an H200; a shared 2-core CPU is 4-10x slower (eval beside the resume)
    proc, out, calls = _fake_gpu_check(
        tmp_path, FAKE_GPU_REAL="1", CHECK_BUDGET="3000", CHECK_SLOWDOWN="8"
    )
    lines = _assert_every_part_ran(proc, out, calls)
    assert "fake GPU" not in "\n".join(ln for ln in lines if ln.split()[1] in PARTS[3:9])
    resume = next(ln for ln in lines if ln.startswith("PASS 06-resume-check"))
    assert "25/25 exact" in resume, resume  # CPU kernels are deterministic
    assert (out / "eval" / "results.json").is_file()


def _check_run():
    spec = importlib.util.spec_from_file_location("check_run", ROOT / "tools/gpu/check_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(run: Path, losses: dict[int, float]) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses.items())
    )
    return run


@pytest.mark.parametrize(
    "change, ok",
    [
        ({}, True),
        ({26: 5e-5, 40: 1.5e-3}, True),  # within fp32 order / bf16 noise
        ({26: 2e-4}, False),  # the first resumed step is a forward of the same weights
        ({30: 1e-2}, False),  # e.g. AdamW moments lost
        ({50: 0.05}, False),  # the old tolerance let this pass: another batch
    ],
)
def test_resume_check_fails_on_what_a_broken_resume_does(tmp_path, change, ok):
    check_run = _check_run()
    ref = {s: 7.6 * 0.985**s for s in range(1, 51)}
    run = _metrics(tmp_path / "run", ref)
    got = {s: ref[s] + change.get(s, 0.0) for s in range(26, 51)}
    resumed = _metrics(tmp_path / "resumed", got)
    if ok:
        assert "exact" in check_run.check_resume(run, resumed, 25, 50)
    else:
        with pytest.raises(check_run.CheckFailed, match="after --resume"):
            check_run.check_resume(run, resumed, 25, 50)


def test_resume_check_needs_exactly_the_resumed_steps(tmp_path):
    check_run = _check_run()
    ref = {s: 1.0 for s in range(1, 51)}
    run = _metrics(tmp_path / "run", ref)
    resumed = _metrics(tmp_path / "resumed", {s: 1.0 for s in range(1, 51)})  # from step 0
    with pytest.raises(check_run.CheckFailed, match="expected \\[26, 27"):
        check_run.check_resume(run, resumed, 25, 50)

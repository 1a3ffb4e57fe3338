"""The Triton compile gate (filtertron/kernels/compile_gate.py, tools/triton_gate.py), no GPU.

- The gate itself: every launch impl="triton" can make compiles for sm_80 and sm_90 with the
  installed Triton, spill-free, within shared memory (``.ci/run`` repeats it with Triton 3.6,
  the GPU machine's). It records the op with the block sizes of a GPU (triton_op.CONFIGS),
  not the interpreter's; the recorded launches are checked against CONFIGS here.
- The gate can fail: kernels with each fault it must catch (tests/kernels/gate_fixtures.py)
  are rejected with that reason.

Both run in subprocesses: the test session sets TRITON_INTERPRET=1 (tests/conftest.py), under
which ``@triton.jit`` makes interpreted functions that cannot be compiled. The first run
compiles about 170 kernels (about 4 minutes on 2 cores); Triton's cache (TRITON_CACHE_DIR,
keyed by the kernels' source) makes later runs take seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton"))
    return env


def test_every_triton_launch_compiles_for_sm80_and_sm90(tmp_path):
    report = tmp_path / "gate.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "triton_gate.py"), "--json", str(report)],
        env=_env(), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "compile gate passed: 0 failures, 0 known" in proc.stdout
    rows = json.loads(report.read_text())
    from filtertron.kernels import compile_gate, triton_op

    assert compile_gate.KNOWN_FAILURES == ()
    seen = set()
    for row in rows:
        names = list(row["signature"])
        const = {names[path[0]]: value for path, value in row["constexprs"]}
        arch, kernel = row["arch"], row["kernel"].removeprefix("attn_")
        config = triton_op.CONFIGS[(9 if arch >= 90 else 8, const["BLOCK_D"])]
        dtype = row["signature"]["Q"].lstrip("*")
        blocks = config[kernel if dtype != "fp32" else f"{kernel}_fp32"]
        assert (const["BLOCK_M"], const["BLOCK_N"]) == (blocks.m, blocks.n), row
        assert (row["num_warps"], row["num_stages"]) == (blocks.warps, blocks.stages), row
        assert const["DOT"] == (2 if dtype == "fp32" else 0), row  # TF32 / tensor cores
        assert row["result"]["ok"] and row["result"]["stack"] == 0, row
        seen.add((arch, kernel, dtype, const["BLOCK_D"]))
    expected = {
        (arch, kernel, dtype, block_d)
        for arch in (80, 90)
        for kernel in ("fwd", "bwd_q", "bwd_kv")
        for dtype in ("fp32", "bf16", "fp16")
        for block_d in (64, 128)
    }
    assert seen == expected


FIXTURE = r"""
import json, sys
from filtertron.kernels.compile_gate import Launch, compile_launch, problems
f = "tests.kernels.gate_fixtures"
ptr = "*fp32"
small = {"X": ptr, "N": "i32", "BLOCK": "constexpr"}
mm = {"A": "*bf16", "B": "*bf16", "C": ptr, "K": "i32", "BLOCK_M": "constexpr",
      "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
cases = {
    "global_annotated": Launch("global_annotated", 90, small, [[[2], 128]], [], 4, 1),
    "constexpr_tuple": Launch("constexpr_tuple", 90, small, [[[2], 128]], [], 4, 1),
    "big_tile": Launch("matmul", 90, mm, [[[4], 256], [[5], 256], [[6], 128]], [], 8, 4),
    "spill": Launch("matmul", 80, mm, [[[4], 128], [[5], 128], [[6], 32]], [], 1, 1),
}
out = {name: problems(launch, compile_launch(launch, f)) for name, launch in cases.items()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fixture_problems() -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", FIXTURE], env=_env(), capture_output=True, text=True,
        timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "name, reason",
    [
        ("global_annotated", "does not compile"),  # the H200's first error
        ("constexpr_tuple", "does not compile"),  # its second
        ("big_tile", "shared memory"),
        ("spill", "spills registers"),
    ],
)
def test_gate_rejects(fixture_problems, name, reason):
    found = fixture_problems[name]
    assert found and all(reason in p for p in found[:1]), found

"""bench/train_throughput.py's GPU table mode, smoked on the CPU at a tiny shape (the code a GPU
runs, minus CUDA itself), its budget skipping, and its target lines. Timings are not tested."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT

TINY = [
    "--set", "model.n_layers=2", "--set", "model.d_model=64", "--set", "model.n_heads=2",
    "--set", "model.seq_len=32", "--set", "model.vocab_size=512",
]  # fmt: skip


def _table(dataset, out, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "bench/train_throughput.py", "--table", "--device", "cpu",
           "--data", str(dataset), "--out", str(out), "--batch", "2", "--steps", "2",
           "--warmup", "1", "--budget", "3000", *TINY, *args]  # fmt: skip
    # Not the rendezvous of an in-process trainer of an earlier test (its port is still bound).
    dist = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def test_table_runs_both_sides_and_reports_targets(dataset, tmp_path):
    proc = _table(dataset, tmp_path, "--variants", "softmax,bilateral", "--modes", "eager")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = _results(tmp_path)
    got = {(c["variant"], c["side"], c["mode"]) for c in doc["cases"]}
    assert got == {(v, s, "eager") for v in ("softmax", "bilateral") for s in ("trainer", "plain")}
    for c in doc["cases"]:
        assert "error" not in c, c
        assert c["impl"] == "sdpa" and c["steps_timed"] == 2
        assert c["tokens_per_s"] > 0 and 0 < c["mfu"] < 1
    lines = proc.stdout.splitlines()
    targets = [ln for ln in lines if ln.startswith("TARGET ")]
    assert any("trainer/plain tokens/s, softmax eager" in t for t in targets)
    assert any(t.startswith("TARGET NOT-MEASURED softmax MFU compiled") for t in targets)
    assert any("bilateral/softmax tokens/s (trainer eager)" in t for t in targets)
    assert lines[-1].startswith("SUMMARY: softmax trainer eager ")
    assert "| softmax | sdpa | trainer | eager |" in (tmp_path / "results.md").read_text()


def test_table_skips_what_does_not_fit_the_budget(dataset, tmp_path):
    proc = _table(dataset, tmp_path, "--budget", "0", "--variants", "softmax")  # the last wins
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = _results(tmp_path)
    assert doc["cases"] == [] and len(doc["skipped"]) == 4
    assert all("of the budget left" in s for s in doc["skipped"])
    assert "skip softmax plain eager: needs ~15s" in proc.stdout
    assert "0 cases measured, 0 errors, 4 skipped" in proc.stdout.splitlines()[-1]


@pytest.mark.slow
def test_table_compiled_cases_run(dataset, tmp_path):
    """Both sides compiled (torch.compile on the CPU: a few minutes on 2 cores)."""
    proc = _table(dataset, tmp_path, "--variants", "softmax", "--modes", "compiled")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = _results(tmp_path)["cases"]
    assert len(cases) == 2 and all("error" not in c for c in cases), cases
    assert "TARGET" in proc.stdout and "softmax MFU compiled (trainer)" in proc.stdout


def _bench():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("train_table", ROOT / "bench/train_table.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def _row(variant, side, mode, tps, mfu=0.3):
    return {"variant": variant, "side": side, "mode": mode, "tokens_per_s": tps, "mfu": mfu}


def test_targets_pass_and_fail_at_their_thresholds():
    t = _bench()
    rows = [
        _row("softmax", "plain", "compiled", 100.0, 0.45),
        _row("softmax", "trainer", "compiled", 95.0, 0.40),  # exactly 0.95x, 40%
        _row("bilateral", "trainer", "compiled", 85.4),  # 0.899x of softmax
        _row("softmax", "plain", "eager", 100.0),
        _row("softmax", "trainer", "eager", 94.0),
        {**_row("grc", "trainer", "eager", 1.0), "error": "RuntimeError: boom"},
    ]
    got = dict((line.split(":")[0], status) for status, line in t.targets(rows))
    assert got["trainer/plain tokens/s, softmax compiled"] == "PASS"
    assert got["trainer/plain tokens/s, softmax eager"] == "FAIL"
    assert got["softmax MFU compiled (trainer)"] == "PASS"
    assert got["bilateral/softmax tokens/s (trainer compiled)"] == "FAIL"
    assert not any(k.startswith("trainer/plain tokens/s, grc") for k in got)  # errored row
    none = dict((line, status) for status, line in t.targets([]))
    assert set(none.values()) == {"NOT-MEASURED"} and len(none) == 4

"""The `filtertron` command: help, routing, and config errors before any process starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from filtertron.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "train", "eval", "convert", "demo"):
        assert name in out


def test_unknown_command():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_bad_config_fails_fast_with_field_name(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  n_heads: 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "filtertron.cli", "train", str(cfg), "--nproc", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "model.n_heads=5: must divide d_model=128" in proc.stderr
    assert "deepspeed" not in proc.stdout.lower()  # no launcher was started


def test_every_shipped_config_loads():
    from filtertron.config import load_config
    from filtertron.model.layout import layer_specs

    # configs/sweeps/ holds sweep files (tests/scaling/test_sweep_presets.py loads them).
    files = sorted(f for f in (ROOT / "configs").rglob("*.yaml") if "sweeps" not in f.parts)
    assert len(files) >= 21
    for f in files:
        cfg = load_config(f)
        assert len(layer_specs(cfg.model)) == cfg.model.n_layers, f

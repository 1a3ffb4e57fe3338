"""Fixtures for training tests: a small prepared dataset and tiny run configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from filtertron.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """The bundled sample corpus, cut to its first ~300 KB per split and tokenized (BPE 512)."""
    src = tmp_path_factory.mktemp("corpus")
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        text = (ROOT / "corpus" / "sample" / name).read_text()
        limit = 300_000 if "train" in name else 60_000
        cut = text.find("\n = ", limit)  # end on an article boundary
        (src / name).write_text(text if cut < 0 else text[: cut + 1])
    out = tmp_path_factory.mktemp("data") / "sample"
    from filtertron.cli import main

    assert (
        main(
            [
                "prepare",
                "--source",
                str(src),
                "--output",
                str(out),
                "--vocab-size",
                "512",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return out


def tiny_overrides(dataset: Path, out_dir: Path, **extra: object) -> list[str]:
    base = {
        "model.n_layers": 2,
        "model.d_model": 64,
        "model.n_heads": 4,
        "model.seq_len": 32,
        "model.vocab_size": 512,
        "train.steps": 6,
        "train.micro_batch_size": 4,
        "train.warmup": 2,
        "train.lr": 3e-3,
        "train.min_lr": 3e-4,
        "train.save_every": 2,
        "train.log_every": 100,
        "eval.every": 0,
        "eval.batches": 2,
        "parallel.zero_stage": 0,
        "data.path": str(dataset),
        "train.out_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(dataset: Path, out_dir: Path, **extra: object):
    return load_config(ROOT / "configs" / "tiny.yaml", tiny_overrides(dataset, out_dir, **extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env() -> dict[str, str]:
    env = dict(os.environ)
    # In-process trainers of earlier tests set these for their own process group.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_launcher(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`filtertron train ... --nproc N` in a subprocess (the deepspeed launcher underneath)."""
    cmd = [sys.executable, "-m", "filtertron.cli", "train", *args]
    return subprocess.run(
        cmd, env=launcher_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )

"""Fixtures for sweep tests: a small prepared dataset and a sweep-file writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """The bundled sample corpus cut to ~120 KB of training text, tokenized (BPE 512)."""
    src = tmp_path_factory.mktemp("corpus")
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        text = (ROOT / "corpus" / "sample" / name).read_text()
        limit = 120_000 if "train" in name else 30_000
        cut = text.find("\n = ", limit)
        (src / name).write_text(text if cut < 0 else text[: cut + 1])
    out = tmp_path_factory.mktemp("data") / "sample"
    from filtertron.cli import main

    args = ["prepare", "--source", str(src), "--output", str(out), "--vocab-size", "512"]
    assert main([*args, "--workers", "1"]) == 0
    return out


# A run config small enough that training is mostly process start-up.
TINY_MODEL = {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 32, "vocab_size": 512}
TINY_OVERRIDES = {
    "parallel": {"zero_stage": 0},
    "train": {"micro_batch_size": 4, "log_every": 1000},
    "eval": {"every": 0, "batches": 2},
}


def write_sweep(path: Path, **fields) -> Path:
    """A sweep file over configs/tiny.yaml with one variant and size unless told otherwise."""
    data = {
        "name": "t",
        "base": str(ROOT / "configs" / "tiny.yaml"),
        "variants": {"baseline": {}},
        "sizes": {"a": dict(TINY_MODEL)},
        "budgets": {"kind": "tokens", "values": [1280]},
        "schedule": {"warmup_fraction": 0.1, "checkpoints": 2},
        "overrides": TINY_OVERRIDES,
    }
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

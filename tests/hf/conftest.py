"""Fixtures of the Hugging Face tests: exported directories, a trained ZeRO-2 run, and the
TP = 2 / PP = 2 runs of the parallelism tests.

Everything is local: the hub is switched off (HF_HUB_OFFLINE) and transformers' dynamic-module
cache (where remote code is copied to be imported) lives under the repository's ``.cache``.
The prepared dataset is the evaluation tests' (``tests/eval/conftest.py``: generated corpus,
384-token BPE); the TP / PP runs are ``tests/parallel/conftest.py``'s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_MODULES_CACHE", str(_ROOT / ".cache" / "hf_modules"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from filtertron.config import model_config  # noqa: E402
from filtertron.model import build_model  # noqa: E402
from tests.eval.conftest import _one_thread, dataset, save_checkpoint  # noqa: E402, F401
from tests.parallel.conftest import _close_pools, pp2_run, tp2_run  # noqa: E402, F401

VOCAB = 384
TOL = 1e-5  # fp32 logits, exported vs filtertron (observed 0 to ~1e-6)


def variant_model(seed: int = 0, scale: float = 0.05, **cfg) -> torch.nn.Module:
    """A 2-layer, d=32 GPT (seq_len 32) with every weight moved off its init by ``scale``
    noise, so that GRC's t, the bilateral bandwidths and the LayerNorms all matter."""
    base = {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 32, "vocab_size": VOCAB}
    torch.manual_seed(seed)
    model = build_model(model_config(**{**base, **cfg}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("t_fixed"):
                b.fill_(0.3)
    return model.eval()


def export(run: Path, out: Path, *extra: str) -> Path:
    """``filtertron export RUN --to hf OUT`` through the CLI; returns OUT."""
    from filtertron.cli import main

    assert main(["export", str(run), "--to", "hf", str(out), *extra]) == 0
    return out


def train(*args: str) -> None:
    """``filtertron train ARGS`` in a subprocess (this process keeps no process group)."""
    from tests.train.conftest import run_launcher

    proc = run_launcher(list(args))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> dict:  # noqa: F811
    """configs/tiny.yaml (ALiBi) shrunk to 2 layers, d=64, T=32 and trained 40 steps with
    ZeRO-2 by ``filtertron train`` (one process).

    Returns the run dir, its final step dir (DeepSpeed ZeRO-2 files plus the consolidated
    model.pt the trainer gathers from the engine) and a copy of that step without model.pt
    (readable only through zero_to_fp32).
    """
    from tests.train.conftest import tiny_overrides

    out = tmp_path_factory.mktemp("zero2") / "run"
    extra = {
        "parallel.zero_stage": 2,
        "train.steps": 40,
        "train.save_every": 40,
        "train.warmup": 4,
        "model.vocab_size": VOCAB,
        "model.attention.impl": "auto",
    }
    sets = [a for o in tiny_overrides(dataset, out, **extra) for a in ("--set", o)]
    train(str(_ROOT / "configs" / "tiny.yaml"), *sets)
    step = out / "checkpoints" / "step_00000040"
    assert (step / "model.pt").is_file()
    zero_only = tmp_path_factory.mktemp("zero2_only") / "checkpoints" / step.name
    shutil.copytree(step, zero_only)
    (zero_only / "model.pt").unlink()
    return {"run": out, "step": step, "zero_only": zero_only}


@pytest.fixture(scope="session")
def trained_hf(trained, tmp_path_factory) -> Path:
    """The trained ALiBi run exported (remote code), tokenizer from its data.path."""
    return export(trained["run"], tmp_path_factory.mktemp("trained_hf") / "alibi")

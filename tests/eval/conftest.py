"""Fixtures of the evaluation tests: a small prepared dataset, tiny models, saved checkpoints.

Models are built in-process with random weights (the metrics are checked against independent
computations, so they need no training); checkpoints are written in the trainer's layout
(``RUN/checkpoints/step_*/{model.pt, filtertron.json}``) so the CLI can load them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from filtertron import build_model
from filtertron.checkpoint import files as ckpt
from filtertron.config import RunConfig, model_config
from filtertron.data.prepare import prepare
from filtertron.data.sample import write_corpus

VOCAB = 384


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated sample corpus (about 40 KB train, 12 KB test) with a 384-token BPE."""
    corpus = tmp_path_factory.mktemp("eval_corpus")
    write_corpus(corpus, seed=3, sizes_mb={"train": 0.04, "validation": 0.012, "test": 0.012})
    out = tmp_path_factory.mktemp("eval_data") / "sample"
    prepare(str(corpus), out, vocab_size=VOCAB, workers=0, no_progress=True)
    return out


def tiny_model(
    position: str = "alibi",
    kind: str = "softmax",
    impl: str = "reference",
    seq_len: int = 32,
    seed: int = 0,
    **extra,
):
    """A 2-layer, d=32 GPT over the test vocabulary, in eval mode."""
    attention = {"kind": kind, "impl": impl, **extra.pop("attention", {})}
    cfg = model_config(
        n_layers=2,
        d_model=32,
        n_heads=2,
        seq_len=seq_len,
        vocab_size=VOCAB,
        position=position,
        attention=attention,
        **extra,
    )
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def save_checkpoint(
    model: torch.nn.Module, run_dir: Path, step: int = 1, tokenizer_hash: str | None = None
) -> Path:
    """Write ``model`` as a committed checkpoint of run ``run_dir``; returns the run dir."""
    path = run_dir / "checkpoints" / ckpt.tag_for(step)
    path.mkdir(parents=True)
    ckpt.save_model(path, {k: v.detach().clone() for k, v in model.state_dict().items()})
    meta = {"step": step, "config": RunConfig(model=model.config).to_dict()}
    if tokenizer_hash:
        meta["tokenizer_hash"] = tokenizer_hash
    ckpt.commit(path, meta)
    return run_dir


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

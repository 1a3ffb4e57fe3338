"""``filtertron import``: GPT-2 checkpoints into filtertron, exactly.

- Round trip: a plain filtertron GPT exported (GPT2LMHeadModel) and imported back has
  bit-identical weights and logits, and ``filtertron eval`` gives it the original's numbers on
  the original dataset (the tokenizer hash survives through filtertron_export.json).
- A GPT-2 made by transformers (odd sizes, untied head) imports with its logits.
- The imported run resumes training (``filtertron train ... --resume`` loads it as a
  weights-only checkpoint).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from filtertron.checkpoint.files import resolve
from filtertron.checkpoint.shards import load_model
from filtertron.cli import main
from filtertron.config import load_config
from filtertron.data import load_tokenizer
from tests.hf.conftest import TOL, VOCAB, export, save_checkpoint, train, variant_model


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, dataset) -> dict:
    root = tmp_path_factory.mktemp("round_trip")
    tok = load_tokenizer(dataset)
    model = variant_model(seed=3, scale=0.2, position="learned", tie_embeddings=False)
    run = save_checkpoint(model, root / "orig", tokenizer_hash=tok.hash)
    hf_dir = export(run, root / "hf", "--tokenizer", str(dataset))
    assert main(["import", str(hf_dir), "--out", str(root / "imported")]) == 0
    return {"run": run, "hf": hf_dir, "imported": root / "imported", "root": root}


def test_round_trip_is_exact(round_trip):
    a, _, _ = load_model(round_trip["run"])
    b, cfg, info = load_model(round_trip["imported"])
    assert info.meta["weights_only"] and info.step == 0
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    idx = torch.randint(0, VOCAB, (2, cfg.model.seq_len))
    with torch.no_grad():
        assert torch.equal(a.eval()(idx), b.eval()(idx))


def test_round_trip_evaluates_like_the_original(round_trip, dataset):
    rows = {}
    for name in ("run", "imported"):
        out = round_trip["root"] / f"eval_{name}"
        args = ["eval", str(round_trip[name]), "--data", str(dataset), "--out", str(out)]
        assert main([*args, "--max-tokens", "2000", "--no-progress"]) == 0
        rows[name] = json.loads((out / "results.json").read_text())[0]
    assert rows["imported"]["word_ppl"] == rows["run"]["word_ppl"]
    assert rows["imported"]["tokens"] == rows["run"]["tokens"] > 1000


def test_gpt2_made_by_transformers_imports(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=211,
        n_positions=40,
        n_embd=48,
        n_layer=3,
        n_head=3,
        n_inner=96,
        tie_word_embeddings=False,
        activation_function="gelu_new",
    )
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    assert main(["import", str(tmp_path / "gpt2"), "--out", str(tmp_path / "run")]) == 0
    model, run_cfg, info = load_model(tmp_path / "run")
    m = run_cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.seq_len, m.vocab_size, m.mlp_ratio) == (
        3,
        48,
        3,
        40,
        211,
        2,
    )
    assert not m.tie_embeddings and info.meta["tokenizer_hash"] is None
    idx = torch.randint(0, 211, (2, 40))
    with torch.no_grad():
        assert float((model.eval()(idx) - hf(input_ids=idx).logits).abs().max()) <= TOL


def test_imported_run_resumes_training(round_trip, dataset, tmp_path):
    """``filtertron train RUN/config.yaml --resume`` starts from the imported weights: one
    step at lr 1e-9 leaves them within 1e-6 (a fresh init would be ~0.1 away)."""
    cfg = load_config(round_trip["imported"] / "config.yaml")
    assert cfg.train.out_dir == str(round_trip["imported"].resolve())
    run = tmp_path / "run"  # a copy, so the module's imported run stays at step 0
    shutil.copytree(round_trip["imported"], run)
    sets = [
        f"data.path={dataset}",
        f"train.out_dir={run}",
        "train.steps=1",
        "train.lr=1.0e-9",  # YAML reads 1e-9 as a string
        "train.min_lr=0",
        "train.warmup=0",
        "train.micro_batch_size=2",
        "eval.batches=1",
    ]
    train(str(run / "config.yaml"), *[a for o in sets for a in ("--set", o)], "--resume")
    after = resolve(run)
    assert after.step == 1
    imported, _, _ = load_model(round_trip["run"])
    resumed = torch.load(after.path / "model.pt", weights_only=True)
    for k, v in imported.state_dict().items():
        assert float((resumed[k] - v).abs().max()) <= 1e-6, k

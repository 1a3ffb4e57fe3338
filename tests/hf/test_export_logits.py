"""Exported models give filtertron's logits, for every attention kind, position scheme and
residual kind: fp32, max |difference| <= 1e-5 on a (2, 32) batch and, for positions that
extrapolate, on a (1, 64) batch past the training length.

The filtertron side is the model as loaded from the checkpoint with its default attention
implementation (``impl: auto``: the fused CPU path), so the two sides share no attention code.
Plain models must come out as ``GPT2LMHeadModel`` and load without remote code; every other
variant as the remote-code ``FiltertronForCausalLM``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from filtertron.checkpoint.shards import load_model
from tests.hf.conftest import TOL, VOCAB, export, save_checkpoint, variant_model
from tests.train.conftest import launcher_env

BIL = {"kind": "bilateral", "impl": "auto"}
VARIANTS = {
    # name: (model config, exported kind)
    "gpt2": ({"position": "learned"}, "gpt2"),
    "gpt2-untied": ({"position": "learned", "tie_embeddings": False}, "gpt2"),
    "softmax-sinusoidal": ({"position": "sinusoidal"}, "remote"),
    "softmax-rotary": ({"position": "rotary"}, "remote"),
    "softmax-alibi": ({"position": "alibi"}, "remote"),
    "softmax-alibi-3heads": ({"position": "alibi", "n_heads": 3, "d_model": 48}, "remote"),
    "softmax-none": ({"position": "none"}, "remote"),
    "softmax-learned-nobias": ({"position": "learned", "bias": False}, "remote"),
    "bilateral-dot": ({"position": "none", "attention": BIL}, "remote"),
    "bilateral-gaussian-rotary": (
        {"position": "rotary", "attention": {**BIL, "bilateral": {"content": "gaussian"}}},
        "remote",
    ),
    "bilateral-frozen-learned": (
        {
            "position": "learned",
            "attention": {
                **BIL,
                "bilateral": {
                    "learn_h_y": False,
                    "learn_h_p": False,
                    "allow_absolute_position": True,
                },
            },
        },
        "remote",
    ),
    "twicing-softmax-all-alibi": (
        {"position": "alibi", "attention": {"kind": "twicing"}},
        "remote",
    ),
    "twicing-softmax-last1-learned": (
        {"position": "learned", "attention": {"kind": "twicing", "twicing": {"layers": 1}}},
        "remote",
    ),
    "twicing-bilateral-layer0": (
        {
            "position": "none",
            "attention": {"kind": "twicing", "twicing": {"base": "bilateral", "layers": [0]}},
        },
        "remote",
    ),
    "grc-attn-learned": ({"position": "learned", "residual": {"kind": "generalized"}}, "remote"),
    "grc-both-rotary": (
        {"position": "rotary", "residual": {"kind": "generalized", "apply_to": "both"}},
        "remote",
    ),
    "grc-fixed-sinusoidal": (
        {
            "position": "sinusoidal",
            "residual": {"kind": "generalized", "learnable": False, "t_init": 0.3},
        },
        "remote",
    ),
    "bilateral-twicing-grc": (
        {
            "position": "none",
            "attention": {"kind": "twicing", "twicing": {"base": "bilateral"}},
            "residual": {"kind": "generalized", "apply_to": "both"},
        },
        "remote",
    ),
}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Every variant saved as a checkpoint and exported (model only)."""
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for i, (name, (cfg, _)) in enumerate(VARIANTS.items()):
        cfg = {**cfg, "attention": {"impl": "auto", **cfg.get("attention", {})}}
        run = save_checkpoint(variant_model(seed=i, **cfg), root / name)
        out[name] = (run, export(run, root / f"{name}-hf", "--no-tokenizer"))
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_exported_logits_equal_filtertron(name, exported):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    run, hf_dir = exported[name]
    kind = VARIANTS[name][1]
    model, cfg, _ = load_model(run)
    model.eval()
    marker = json.loads((hf_dir / "filtertron_export.json").read_text())
    assert marker["kind"] == kind
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    if kind == "gpt2":
        assert hf_cfg["model_type"] == "gpt2" and "auto_map" not in hf_cfg
        assert not list(hf_dir.glob("*.py"))
        hf = GPT2LMHeadModel.from_pretrained(hf_dir)
    else:
        assert hf_cfg["model_type"] == "filtertron"
        assert hf_cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_filtertron.")
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True)
        assert type(hf).__name__ == "FiltertronForCausalLM"
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, cfg.model.seq_len), generator=g)
    with torch.no_grad():
        diff = _max_diff(hf(input_ids=idx).logits, model(idx))
        if cfg.model.position != "learned":  # positions defined past the training length
            long = torch.randint(0, VOCAB, (1, 2 * cfg.model.seq_len), generator=g)
            diff = max(diff, _max_diff(hf(input_ids=long).logits, model(long)))
    print(f"{name}: max |logit difference| {diff:.2e}")
    assert diff <= TOL


def test_max_position_embeddings_tells_the_truth(exported):
    from transformers import AutoModelForCausalLM

    learned = json.loads((exported["grc-attn-learned"][1] / "config.json").read_text())
    assert learned["max_position_embeddings"] == learned["train_length"] == 32
    alibi = json.loads((exported["softmax-alibi"][1] / "config.json").read_text())
    assert alibi["max_position_embeddings"] == 2**24 and alibi["train_length"] == 32
    gpt2 = json.loads((exported["gpt2"][1] / "config.json").read_text())
    assert gpt2["n_positions"] == 32
    hf = AutoModelForCausalLM.from_pretrained(
        exported["grc-attn-learned"][1], trust_remote_code=True
    )
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        hf(input_ids=torch.zeros(1, 33, dtype=torch.long))


def test_padding_masks_keys_and_shifts_positions(exported):
    """A left-padded row gives the logits of the same row unpadded (remote code)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        exported["bilateral-twicing-grc"][1], trust_remote_code=True
    )
    idx = torch.randint(0, VOCAB, (1, 12))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), idx], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 12)], dim=1).long()
    with torch.no_grad():
        a = hf(input_ids=idx).logits
        b = hf(input_ids=padded, attention_mask=mask).logits[:, 4:]
    assert _max_diff(a, b) <= TOL


def test_remote_code_runs_without_filtertron(exported, tmp_path):
    """The exported package loads and runs in a process where filtertron cannot be imported."""
    run, hf_dir = exported["bilateral-twicing-grc"]
    idx = torch.randint(0, VOCAB, (2, 32))
    torch.save(idx, tmp_path / "idx.pt")
    script = (
        "import sys, torch\n"
        "sys.modules['filtertron'] = None  # any import of filtertron now fails\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}, trust_remote_code=True)\n"
        f"idx = torch.load({str(tmp_path / 'idx.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(input_ids=idx).logits, {str(tmp_path / 'out.pt')!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=launcher_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _, _ = load_model(run)
    with torch.no_grad():
        ref = model.eval()(idx)
    assert _max_diff(torch.load(tmp_path / "out.pt", weights_only=True), ref) <= TOL

"""Plain filtertron GPTs <-> Hugging Face ``GPT2LMHeadModel``, weights mapped both ways.

A filtertron model is plain GPT-2 when it uses softmax attention in every layer, learned
positions, the standard residual and biases (GELU-tanh MLP and LayerNorm it always has). The
two differ only in layout:

    filtertron  blocks.{i}.attn.qkv  nn.Linear, out features per head (H, 3, D)
    GPT-2       h.{i}.attn.c_attn    Conv1D (weight = Linear weight^T), out features (3, H, D)

and ``mlp.fc/proj``, ``attn.proj`` are Conv1D ``c_fc/c_proj`` (transposed); norms and
embeddings map by name. Both directions are exact (a permutation and transposes).
"""

from __future__ import annotations

from typing import Any

import torch

from filtertron.config import ModelConfig, model_config

GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation
# filtertron Linear <-> GPT-2 Conv1D (transposed), per block
LINEARS = (("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj"))


def plain_problems(cfg: ModelConfig) -> list[str]:
    """Why ``cfg`` is not a plain GPT-2 (empty when it is)."""
    why = []
    if cfg.attention.kind != "softmax":
        why.append(f"attention.kind={cfg.attention.kind}")
    if cfg.position != "learned":
        why.append(f"position={cfg.position}")
    if cfg.residual.kind != "standard":
        why.append(f"residual.kind={cfg.residual.kind}")
    if not cfg.bias:
        why.append("bias=false")
    return why


def _qkv_to_gpt2(w: torch.Tensor, H: int) -> torch.Tensor:
    """Rows (H, 3, D) -> rows (3, H, D); works for weights (3C, C) and biases (3C,)."""
    C3 = w.shape[0]
    return w.reshape(H, 3, C3 // (3 * H), *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _qkv_from_gpt2(w: torch.Tensor, H: int) -> torch.Tensor:
    """Rows (3, H, D) -> rows (H, 3, D)."""
    C3 = w.shape[0]
    return w.reshape(3, H, C3 // (3 * H), *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def gpt2_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``GPT2Config`` arguments for a plain filtertron model config."""
    return {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attention.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def to_gpt2(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A plain filtertron GPT state dict as ``GPT2LMHeadModel`` weights."""
    H = cfg.n_heads
    out = {f"transformer.{k}": state[k] for k in ("wte.weight", "wpe.weight")}
    for i in range(cfg.n_layers):
        f, g = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[g + b + ".weight"] = state[f + a + ".weight"]
            out[g + b + ".bias"] = state[f + a + ".bias"]
        out[g + "attn.c_attn.weight"] = _qkv_to_gpt2(state[f + "attn.qkv.weight"], H).t()
        out[g + "attn.c_attn.bias"] = _qkv_to_gpt2(state[f + "attn.qkv.bias"], H)
        for a, b in LINEARS:
            out[g + b + ".weight"] = state[f + a + ".weight"].t()
            out[g + b + ".bias"] = state[f + a + ".bias"]
    out["transformer.ln_f.weight"] = state["norm_f.weight"]
    out["transformer.ln_f.bias"] = state["norm_f.bias"]
    out["lm_head.weight"] = state["wte.weight" if cfg.tie_embeddings else "lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_problems(hf: dict[str, Any]) -> list[str]:
    """Why a ``config.json`` (as a dict) is not a GPT-2 filtertron can import (empty if it is)."""
    mtype = hf.get("model_type")
    if mtype != "gpt2":
        arch = ", ".join(hf.get("architectures") or []) or "unknown"
        return [f"model_type={mtype!r} (architectures: {arch}); only 'gpt2' is supported"]
    why = []
    if hf.get("activation_function", "gelu_new") not in GPT2_ACTIVATIONS:
        act = hf["activation_function"]
        why.append(f"activation_function={act!r} (filtertron's MLP is GELU-tanh)")
    for key, ok in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if hf.get(key, ok) != ok:
            why.append(f"{key}={hf[key]!r} (filtertron needs {ok})")
    d, inner = hf.get("n_embd", 768), hf.get("n_inner")
    if inner is not None and inner % d:
        why.append(f"n_inner={inner} is not a multiple of n_embd={d}")
    return why


def from_gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    """The filtertron model config of a GPT-2 ``config.json`` (checked by :func:`gpt2_problems`)."""
    d = hf.get("n_embd", 768)
    return model_config(
        n_layers=hf.get("n_layer", 12),
        d_model=d,
        n_heads=hf.get("n_head", 12),
        seq_len=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", 50257),
        position="learned",
        mlp_ratio=(hf.get("n_inner") or 4 * d) // d,
        dropout=float(hf.get("resid_pdrop", 0.1)),
        bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)),
        attention={"kind": "softmax", "dropout": float(hf.get("attn_pdrop", 0.1))},
    )


def from_gpt2(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """``GPT2LMHeadModel`` weights as a filtertron GPT state dict (names of ``cfg``'s model)."""
    H = cfg.n_heads
    out = {k: state[f"transformer.{k}"] for k in ("wte.weight", "wpe.weight")}
    for i in range(cfg.n_layers):
        f, g = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f + a + ".weight"] = state[g + b + ".weight"]
            out[f + a + ".bias"] = state[g + b + ".bias"]
        out[f + "attn.qkv.weight"] = _qkv_from_gpt2(state[g + "attn.c_attn.weight"].t(), H)
        out[f + "attn.qkv.bias"] = _qkv_from_gpt2(state[g + "attn.c_attn.bias"], H)
        for a, b in LINEARS:
            out[f + a + ".weight"] = state[g + b + ".weight"].t()
            out[f + a + ".bias"] = state[g + b + ".bias"]
    out["norm_f.weight"] = state["transformer.ln_f.weight"]
    out["norm_f.bias"] = state["transformer.ln_f.bias"]
    out["lm_head.weight"] = state["lm_head.weight"]  # the same tensor as wte's when tied
    return {k: v.contiguous() for k, v in out.items()}

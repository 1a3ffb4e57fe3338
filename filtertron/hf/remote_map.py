"""Filtertron GPTs -> the remote-code ``FiltertronForCausalLM``: config fields and weight names.

The remote model (``filtertron/hf/remote/modeling_filtertron.py``) keeps filtertron's module
layout under Hugging Face's ``transformer.`` prefix; what changes:

    wte, wpe, norm_f                    transformer.wte, transformer.wpe, transformer.norm_f
    blocks.{i}.X                        transformer.h.{i}.X
    attn.core[.base].log_h_y / log_h_p  attn.log_h_y / log_h_p     (parameter or buffer)
    res{1,2}.tau | res{1,2}.t_fixed     res{1,2}.tau | res{1,2}.t  (GRC, learnable or fixed)
    attn.core[.base].alibi_slopes       dropped: recomputed from n_heads (checked equal)

Per-layer attention kinds come from :func:`filtertron.model.layout.layer_specs`, the one place
that decides which layers twice.
"""

from __future__ import annotations

from typing import Any

import torch

from filtertron.config import ModelConfig
from filtertron.model.layout import layer_specs
from filtertron.model.position import alibi_slopes


def remote_config_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``FiltertronConfig`` arguments describing the model of ``cfg``."""
    att = cfg.attention
    return {
        "vocab_size": cfg.vocab_size,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_ff": cfg.d_ff,
        "train_length": cfg.seq_len,
        "position": cfg.position,
        "rotary_base": cfg.rotary_base,
        "bias": cfg.bias,
        "norm_eps": cfg.norm_eps,
        "dropout": cfg.dropout,
        "attention_dropout": att.dropout,
        "layer_attention": [spec.attention for spec in layer_specs(cfg)],
        "twicing_base": att.twicing.base,
        "bilateral_content": att.bilateral.content,
        "residual": cfg.residual.kind,
        "residual_apply_to": cfg.residual.apply_to,
        "residual_learnable": cfg.residual.learnable,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
    }


def _rename(key: str) -> str | None:
    """The remote model's name for a filtertron state-dict key (None: not stored)."""
    if key.endswith("alibi_slopes"):
        return None
    if key.startswith("blocks."):
        key = "transformer.h." + key[len("blocks.") :]
        key = key.replace(".attn.core.base.", ".attn.").replace(".attn.core.", ".attn.")
        return key.replace(".t_fixed", ".t")
    if key.startswith(("wte.", "wpe.", "norm_f.")):
        return "transformer." + key
    return key  # lm_head.weight


def to_remote(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A filtertron GPT state dict as ``FiltertronForCausalLM`` weights.

    Raises:
        ValueError: a stored ALiBi slope differs from the formula the remote model uses.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("alibi_slopes") and not torch.equal(value, alibi_slopes(cfg.n_heads)):
            raise ValueError(f"{key}: stored ALiBi slopes differ from alibi_slopes(n_heads)")
        name = _rename(key)
        if name is not None and not (name == "lm_head.weight" and cfg.tie_embeddings):
            out[name] = value.contiguous()
    return out

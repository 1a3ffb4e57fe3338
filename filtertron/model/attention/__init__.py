"""Attention: a shell (projections, heads, positions) around a core chosen from a registry.

``ATTENTIONS`` maps a kind to a builder ``(cfg, layer_idx) -> core``; adding a variant is one
file, one line here and one test file. The functional operators are in
:mod:`filtertron.model.attention.functional` (``filtertron.attention``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from filtertron.config import ModelConfig
from filtertron.model.attention.base import AttentionShell
from filtertron.model.attention.bilateral import BilateralAttention
from filtertron.model.attention.softmax import SoftmaxAttention
from filtertron.model.attention.twicing import TwicingAttention
from filtertron.model.position import alibi_slopes


def _softmax(cfg: ModelConfig) -> nn.Module:
    slopes = alibi_slopes(cfg.n_heads) if cfg.position == "alibi" else None
    return SoftmaxAttention(
        cfg.n_heads, cfg.head_dim, cfg.attention.impl, cfg.attention.dropout, slopes
    )


def _bilateral(cfg: ModelConfig) -> nn.Module:
    b = cfg.attention.bilateral
    return BilateralAttention(
        cfg.n_heads,
        cfg.head_dim,
        cfg.attention.impl,
        cfg.attention.dropout,
        b.content,
        b.h_y_init,
        b.h_p_min,
        cfg.h_p_max,
        b.learn_h_y,
        b.learn_h_p,
    )


def _twicing(cfg: ModelConfig) -> nn.Module:
    return TwicingAttention(ATTENTIONS[cfg.attention.twicing.base](cfg), cfg.attention.impl)


ATTENTIONS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "softmax": _softmax,
    "bilateral": _bilateral,
    "twicing": _twicing,
}


def build_attention(cfg: ModelConfig, kind: str) -> AttentionShell:
    """The attention module of one layer, with the core of ``kind``."""
    return AttentionShell(cfg, ATTENTIONS[kind](cfg))


__all__ = [
    "ATTENTIONS",
    "AttentionShell",
    "BilateralAttention",
    "SoftmaxAttention",
    "TwicingAttention",
    "build_attention",
]

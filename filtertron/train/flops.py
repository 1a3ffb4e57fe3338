"""FLOPs accounting and model FLOPs utilisation (MFU).

Training FLOPs per token (forward + backward = 3x forward, matmuls only, as in PaLM):
    6 N  +  6 * 2 * L_eff * T * d
N: parameters in matmuls (blocks + LM head); the attention term counts q.k and A.v
(2 T d multiply-adds per token per layer, halved for causality is *not* applied, following
the common convention). Twicing layers apply the kernel twice, so they count as 2 layers in
L_eff (bilateral's extra spatial term is O(T) per row and ignored).
"""

from __future__ import annotations

from filtertron.config import ModelConfig
from filtertron.model.layout import layer_specs


def flops_per_token(cfg: ModelConfig) -> float:
    """Training (fwd + bwd) FLOPs per token for a model config."""
    d, L = cfg.d_model, cfg.n_layers
    n_matmul = L * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    l_eff = sum(2 if s.attention == "twicing" else 1 for s in layer_specs(cfg))
    return 6.0 * n_matmul + 12.0 * l_eff * cfg.seq_len * d

"""FLOPs accounting and model FLOPs utilisation (MFU).

Training FLOPs per token (forward + backward = 3x forward, matmuls only, as in PaLM):
    6 N  +  6 * 2 * L_eff * T * d
N: parameters in matmuls (blocks + LM head); the attention term counts q.k and A.v
(2 T d multiply-adds per token per layer, halved for causality is *not* applied, following
the common convention). Twicing layers apply the kernel twice, so they count as 2 layers in
L_eff (bilateral's extra spatial term is O(T) per row and ignored).
"""

from __future__ import annotations

import time

import torch

from filtertron.config import ModelConfig
from filtertron.model.layout import layer_specs


def flops_per_token(cfg: ModelConfig) -> float:
    """Training (fwd + bwd) FLOPs per token for a model config."""
    d, L = cfg.d_model, cfg.n_layers
    n_matmul = L * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    l_eff = sum(2 if s.attention == "twicing" else 1 for s in layer_specs(cfg))
    return 6.0 * n_matmul + 12.0 * l_eff * cfg.seq_len * d


_PEAK: dict[str, float] = {}


def measured_peak_flops(n: int = 1024, seconds: float = 0.5) -> float:
    """Matmul throughput of this device in FLOP/s (fp32, square n x n), measured once."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device in _PEAK:
        return _PEAK[device]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    _PEAK[device] = 2.0 * n**3 * reps / (time.perf_counter() - start)
    return _PEAK[device]

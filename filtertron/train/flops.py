"""FLOPs accounting (parameters, training FLOPs per token) and model FLOPs utilisation (MFU).

Training FLOPs per token = 3 x forward (backward = 2 x forward), matmuls plus the
elementwise position-bias terms that set the variants apart:

    C_token = 6 N_mm  +  sum over layers of  3 (4 + 2 [twicing]) sum_h D K_h  +  bias terms

N_mm: weights that multiply activations (blocks' qkv, proj, MLP and the LM head; embedding
lookups are free). Attention per query and head: q.k and A.v are 2 D K FLOPs each over the
K keys the head scores; twicing's second pass A (A V) adds one more A-times-matrix (the
logits are shared), so a twicing layer costs 1.5x a plain one in attention, not 2x.
K_h depends on the convention:

    "full"    K = T          every pair of the T x T matrix (PaLM, Chinchilla; what dense
                             kernels and torch.utils.flop_counter count):  6N + 12 L T d
    "causal"  K = (T + 1)/2  only j <= i (Kaplan, Megatron):  6N + 6 L (T + 1) d ~ 6N + 6LTd

A banded head computes only the keys within its window w (bilateral: sqrt(60) h_p at init,
ALiBi: 30 / m_h, the distances past which the kernel weight is below e^-30, see
``model.attention.sdpa``): K_h is multiplied by its band fraction, the share of causal pairs
with i - j <= w. Bias terms per scored pair and head: bilateral's spatial term (2 forward, 2
backward with a learned h_p) and gaussian content's key-norm bias (1 + 1); ALiBi's fixed
bias (2 forward). Softmax's own exp and sums and O(T d) elementwise work (norms, GELU) are
not counted, as in PaLM and Chinchilla. Scaling-law fits use ``FIT_CONVENTION`` = "full".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from filtertron.config import ModelConfig
from filtertron.model.layout import layer_specs

CONVENTIONS = ("full", "causal")
FIT_CONVENTION = "full"


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs per token, by term (see the module docstring)."""

    convention: str
    dense: float  # 6 N_mm
    attention: float  # q.k, A.v and twicing's extra A pass, band fractions applied
    bias: float  # elementwise position / content bias terms
    band_fraction: float  # mean over attention layers and heads of the scored-pair share

    @property
    def total(self) -> float:
        return self.dense + self.attention + self.bias


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of the built model: all of them, and without the embeddings (token,
    learned position, and an untied LM head)."""

    total: int
    non_embedding: int


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count the parameters of ``build_model(cfg)`` exactly, on the meta device (no memory)."""
    from filtertron.model import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.wte.weight.numel()
    if cfg.position == "learned":
        embedding += model.wpe.weight.numel()
    if not cfg.tie_embeddings:
        embedding += model.lm_head.weight.numel()
    return ParamCounts(total=total, non_embedding=total - embedding)


def band_pairs(T: int, window: float) -> int:
    """Causal pairs (i, j), 0 <= j <= i < T, with i - j <= window."""
    w = int(min(max(window, 0.0), T - 1))
    return (w + 1) * (w + 2) // 2 + (T - 1 - w) * (w + 1)


def head_windows(cfg: ModelConfig, kind: str) -> list[float]:
    """Per-head band width in tokens of a layer's attention kernel (inf: not banded)."""
    from filtertron.model.attention.bilateral import init_h_p
    from filtertron.model.attention.sdpa import ALIBI_WINDOW, WINDOW
    from filtertron.model.position import alibi_slopes

    base = cfg.attention.twicing.base if kind == "twicing" else kind
    if base == "bilateral":
        h_p = init_h_p(cfg.n_heads, cfg.attention.bilateral.h_p_min, cfg.h_p_max)
        return [WINDOW * float(h) for h in h_p]
    if cfg.position == "alibi":
        return [ALIBI_WINDOW / float(m) for m in alibi_slopes(cfg.n_heads)]
    return [float("inf")] * cfg.n_heads


def flops_breakdown(
    cfg: ModelConfig, convention: str = FIT_CONVENTION, band: bool = True
) -> FlopsBreakdown:
    """Training (forward + backward) FLOPs per token of a model config, by term.

    Args:
        cfg: the model config.
        convention: "full" (every pair of T x T) or "causal" (j <= i only).
        band: apply banded heads' band fractions (False: every head scores every pair).

    Returns:
        A :class:`FlopsBreakdown`; ``.total`` is the count.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    d, T, D = cfg.d_model, cfg.seq_len, cfg.head_dim
    n_mm = cfg.n_layers * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    causal = T * (T + 1) // 2
    keys_per_query = T if convention == "full" else (T + 1) / 2
    bil = cfg.attention.bilateral
    attention = bias = 0.0
    fractions = []
    for spec in layer_specs(cfg):
        kernel = cfg.attention.twicing.base if spec.attention == "twicing" else spec.attention
        windows = head_windows(cfg, spec.attention)
        frac = [band_pairs(T, w) / causal if band else 1.0 for w in windows]
        fractions += frac
        keys = keys_per_query * sum(frac)  # summed over heads
        attention += 3 * (4 + (2 if spec.attention == "twicing" else 0)) * D * keys
        if kernel == "bilateral":
            per_pair = 2 + (2 if bil.learn_h_p else 0)
            per_pair += 2 if bil.content == "gaussian" else 0
        else:
            per_pair = 2 if cfg.position == "alibi" else 0
        bias += per_pair * keys
    return FlopsBreakdown(
        convention=convention,
        dense=6.0 * n_mm,
        attention=float(attention),
        bias=float(bias),
        band_fraction=float(sum(fractions) / len(fractions)),
    )


def flops_per_token(cfg: ModelConfig, convention: str = FIT_CONVENTION, band: bool = True) -> float:
    """Training (forward + backward) FLOPs per token (see :func:`flops_breakdown`)."""
    return flops_breakdown(cfg, convention, band).total


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

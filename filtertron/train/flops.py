"""FLOPs accounting: parameters and training FLOPs per token (MFU is in :mod:`.mfu`).

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

A banded head computes only the keys within its window w (bilateral: ceil(sqrt(60) h_p) at
init, ALiBi: ceil(30 / m_h), the distances past which the kernel weight is below e^-30, see
``filtertron.kernels.description``): K_h is multiplied by its band fraction, the share of
causal pairs with i - j <= w. Bias terms per scored pair and head: bilateral's spatial term
(2 forward, 2 backward with a learned h_p) and gaussian content's key-norm bias (1 + 1);
ALiBi's fixed bias (2 forward). Softmax's own exp and sums and O(T d) elementwise work
(norms, GELU) are not counted, as in PaLM and Chinchilla. Scaling-law fits use
``FIT_CONVENTION`` = "full".
"""

from __future__ import annotations

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
    """Per-head band width in tokens of a layer's attention kernel at init (inf: not banded),
    from the kernels' own band rule (:func:`filtertron.kernels.description.band_width`)."""
    from filtertron.kernels.description import DEFAULT_BAND_EPS, band_width
    from filtertron.model.attention.bilateral import init_h_p
    from filtertron.model.position import alibi_slopes

    base = cfg.attention.twicing.base if kind == "twicing" else kind
    T = cfg.seq_len
    if base == "bilateral":
        h_p = init_h_p(cfg.n_heads, cfg.attention.bilateral.h_p_min, cfg.h_p_max).double()
        w = band_width("square", 0.5 / h_p.square(), DEFAULT_BAND_EPS, T)
    elif cfg.position == "alibi":
        w = band_width("linear", alibi_slopes(cfg.n_heads).double(), DEFAULT_BAND_EPS, T)
    else:
        return [float("inf")] * cfg.n_heads
    return [float(x) for x in w]


def _layer_terms(
    cfg: ModelConfig, layer: int, convention: str, band: bool
) -> tuple[float, float, list[float]]:
    """(attention, bias, per-head band fractions) of block ``layer``'s training FLOPs/token."""
    spec = layer_specs(cfg)[layer]
    T, D = cfg.seq_len, cfg.head_dim
    causal = T * (T + 1) // 2
    keys_per_query = T if convention == "full" else (T + 1) / 2
    kernel = cfg.attention.twicing.base if spec.attention == "twicing" else spec.attention
    frac = [band_pairs(T, w) / causal if band else 1.0 for w in head_windows(cfg, spec.attention)]
    keys = keys_per_query * sum(frac)  # summed over heads
    attention = 3 * (4 + (2 if spec.attention == "twicing" else 0)) * D * keys
    bil = cfg.attention.bilateral
    if kernel == "bilateral":
        per_pair = 2 + (2 if bil.learn_h_p else 0) + (2 if bil.content == "gaussian" else 0)
    else:
        per_pair = 2 if cfg.position == "alibi" else 0
    return float(attention), float(per_pair * keys), frac


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")


def block_flops(
    cfg: ModelConfig, layer: int, convention: str = FIT_CONVENTION, band: bool = True
) -> float:
    """Training (forward + backward) FLOPs per token of block ``layer`` alone; its forward is
    a third of it (what activation checkpointing recomputes).

    Args:
        cfg: the model config.
        layer: block index.
        convention, band: as in :func:`flops_breakdown`.
    """
    _check_convention(convention)
    d = cfg.d_model
    attention, bias, _ = _layer_terms(cfg, layer, convention, band)
    return 6.0 * (4 * d * d + 2 * d * cfg.d_ff) + attention + bias


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
    _check_convention(convention)
    d = cfg.d_model
    n_mm = cfg.n_layers * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    attention = bias = 0.0
    fractions: list[float] = []
    for layer in range(cfg.n_layers):
        a, b, frac = _layer_terms(cfg, layer, convention, band)
        attention, bias, fractions = attention + a, bias + b, fractions + frac
    return FlopsBreakdown(
        convention=convention,
        dense=6.0 * n_mm,
        attention=attention,
        bias=bias,
        band_fraction=float(sum(fractions) / len(fractions)),
    )


def flops_per_token(cfg: ModelConfig, convention: str = FIT_CONVENTION, band: bool = True) -> float:
    """Training (forward + backward) FLOPs per token (see :func:`flops_breakdown`)."""
    return flops_breakdown(cfg, convention, band).total

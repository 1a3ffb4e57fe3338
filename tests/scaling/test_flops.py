"""FLOPs accounting against torch.utils.flop_counter, and the band fraction by counting.

flop_counter counts matmuls as executed; the reference attention impl runs every kernel as
dense T x T matmuls, so it is compared with the "full" convention without band fractions:
the matmul part must agree to rounding, the total (which adds the elementwise bias terms
flop_counter does not see) within 5%.
"""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from filtertron.config import model_config
from filtertron.model import build_model
from filtertron.train.flops import (
    band_pairs,
    flops_breakdown,
    flops_per_token,
    head_windows,
    param_counts,
)

VARIANTS = {
    "baseline": {"position": "alibi"},
    "learned": {"position": "learned"},
    "bilateral": {"position": "none", "attention": {"kind": "bilateral"}},
    "bilateral-gaussian": {
        "position": "none",
        "attention": {"kind": "bilateral", "bilateral": {"content": "gaussian"}},
    },
    "twicing": {"position": "alibi", "attention": {"kind": "twicing"}},
    "twicing-last-1": {
        "position": "alibi",
        "attention": {"kind": "twicing", "twicing": {"layers": 1}},
    },
    "bilateral-twicing": {
        "position": "none",
        "attention": {"kind": "twicing", "twicing": {"base": "bilateral"}},
    },
    "grc": {"position": "alibi", "residual": {"kind": "generalized"}},
}
SIZES = {
    "small": dict(n_layers=2, d_model=64, n_heads=4, seq_len=64),
    "larger": dict(n_layers=3, d_model=96, n_heads=4, seq_len=256),
}


def _config(variant, size, impl="reference", **extra):
    kw = {**VARIANTS[variant], **SIZES[size], **extra}
    kw["attention"] = {**kw.get("attention", {}), "impl": impl}
    return model_config(vocab_size=256, **kw)


def counted_per_token(cfg, batch=2) -> float:
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx).backward()
    return counter.get_total_flops() / (batch * cfg.seq_len)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_formula_matches_flop_counter(variant, size):
    cfg = _config(variant, size)
    counted = counted_per_token(cfg)
    b = flops_breakdown(cfg, "full", band=False)
    assert b.dense + b.attention == pytest.approx(counted, rel=1e-9)
    assert b.total == pytest.approx(counted, rel=0.05)


def test_twicing_costs_one_and_a_half_attention_passes():
    plain = flops_breakdown(_config("baseline", "small"), "full", band=False)
    twice = flops_breakdown(_config("twicing", "small"), "full", band=False)
    assert twice.dense == plain.dense
    assert twice.attention == pytest.approx(1.5 * plain.attention)


def test_the_two_conventions():
    # 6N + 12 L T d (full) and 6N + 6 L (T + 1) d (causal) for plain softmax.
    cfg = _config("learned", "larger")
    L, T, d = cfg.n_layers, cfg.seq_len, cfg.d_model
    n_mm = L * (4 * d * d + 2 * d * cfg.d_ff) + d * cfg.vocab_size
    assert flops_per_token(cfg, "full") == pytest.approx(6 * n_mm + 12 * L * T * d)
    assert flops_per_token(cfg, "causal") == pytest.approx(6 * n_mm + 6 * L * (T + 1) * d)
    with pytest.raises(ValueError, match="convention"):
        flops_per_token(cfg, "half")


@pytest.mark.parametrize("T,window", [(64, 3.0), (64, 63.0), (64, 1e9), (100, 17.5), (7, 0.0)])
def test_band_pairs_by_counting(T, window):
    i = torch.arange(T)
    delta = i[:, None] - i[None, :]
    expected = int(((delta >= 0) & (delta <= window)).sum())
    assert band_pairs(T, window) == expected


def test_band_fraction_enters_banded_heads_only():
    cfg = _config("bilateral", "larger")  # h_p from 2 to 256 over 4 heads
    windows = head_windows(cfg, "bilateral")
    assert windows[0] == math.ceil(math.sqrt(60) * 2.0)  # the kernels' band, in whole tokens
    T = cfg.seq_len
    frac = [band_pairs(T, w) / (T * (T + 1) // 2) for w in windows]
    assert frac[0] < 0.2 and frac[-1] == 1.0
    banded = flops_breakdown(cfg, "full", band=True)
    dense = flops_breakdown(cfg, "full", band=False)
    assert banded.band_fraction == pytest.approx(sum(frac) / len(frac))
    assert banded.attention == pytest.approx(dense.attention * sum(frac) / len(frac))
    # No banded head without a position bias.
    assert flops_breakdown(_config("learned", "larger")).band_fraction == 1.0


def test_param_counts_match_the_built_model():
    for variant in ("learned", "bilateral", "grc"):
        cfg = _config(variant, "small")
        model = build_model(cfg)
        counts = param_counts(cfg)
        assert counts.total == sum(p.numel() for p in model.parameters())
        emb = model.wte.weight.numel() + (model.wpe.weight.numel() if model.wpe is not None else 0)
        assert counts.non_embedding == counts.total - emb
    # bilateral adds 2 per head per layer (log h_y, log h_p), GRC one tau per layer.
    base = param_counts(_config("baseline", "small")).non_embedding
    assert param_counts(_config("bilateral", "small")).non_embedding == base + 2 * 4 * 2
    assert param_counts(_config("grc", "small")).non_embedding == base + 2

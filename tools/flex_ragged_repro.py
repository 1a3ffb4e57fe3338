"""Minimal pure-PyTorch repro: compiled CPU FlexAttention at a sequence length that is not a
multiple of its 128 block gives wrong values or NaN (seen with torch 2.13.0, CPU build).

    python tools/flex_ragged_repro.py [--lengths 40,97,128,129,256,300] [--calls 3]

For each T it compiles ``flex_attention`` (``dynamic=False``) with a causal block mask, calls
it ``--calls`` times with fresh random inputs, with and without a score_mod, and prints the
largest difference from SDPA (causal) on each call. Nothing of filtertron is imported, so the
script can go into a PyTorch bug report as it is. Exit status 1 if any call is off by more
than 1e-4 or returns a non-finite value.

filtertron works around it in ``impl="flex"`` by padding T to a multiple of the block (see
``filtertron/model/attention/flex.py``); this script shows the bug itself.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _bias(score, b, h, q_idx, kv_idx):
    return score - 0.01 * (q_idx - kv_idx).to(score.dtype)


def _reference(q, k, v, bias: bool) -> torch.Tensor:
    T = q.shape[-2]
    i = torch.arange(T, dtype=q.dtype)
    mask = torch.where(i[:, None] >= i[None, :], 0.0, float("-inf"))
    if bias:
        mask = mask - 0.01 * (i[:, None] - i[None, :]).clamp_min(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="40,97,128,129,256,300")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    fn = torch.compile(flex_attention, dynamic=False)
    bad = False
    print(f"torch {torch.__version__}; B=1 H=2 D=16 fp32; error = max |flex - SDPA|")
    for T in (int(x) for x in args.lengths.split(",")):
        mask = create_block_mask(_causal, None, None, T, T, device="cpu")
        for score_mod in (None, _bias):
            errs = []
            for _ in range(args.calls):
                q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
                out = fn(q, k, v, score_mod=score_mod, block_mask=mask)
                err = (out - _reference(q, k, v, score_mod is not None)).abs().max().item()
                errs.append(err)
                bad |= not math.isfinite(err) or err > 1e-4
            name = "score_mod" if score_mod else "no score_mod"
            print(f"T={T:4d} {name:13s} " + "  ".join(f"{e:.1e}" for e in errs))
    print("BUG PRESENT" if bad else "all calls match SDPA")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

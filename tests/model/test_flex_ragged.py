"""impl="flex" at ragged lengths: every call of the compiled CPU kernel against the reference.

torch 2.13's compiled CPU FlexAttention reads uninitialised memory when T is not a multiple of
its 128 block (``tools/flex_ragged_repro.py``); flex pads every T to its length bucket (a
multiple of the block, ``flex.length_bucket``) on every device. This test calls
it three times per length with new values each time, because the bug shows as a wrong or NaN
*later* call. Forward runs compiled (torch.no_grad); the backward runs FlexAttention's eager
CPU backward with torch's guard lifted (the only flex backward CPU has), through the same
padding. Tolerance: the rule of test_attention_ops (at most 2x the fp32 reference's error
against float64, plus REL of the scale).
"""

from __future__ import annotations

import pytest
import torch

from tests.model.test_attention_ops import (
    CASES,
    REL_FLEX_BUFFER,
    assert_matches,
    flex_grad,  # noqa: F401  (fixture)
    literal,
    run,
)

LENGTHS = (1, 40, 97, 129, 300)
CALLS = 3
SHAPE = (1, 3, 16)  # B, H, D; T varies


def _tensors(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    B, H, D = SHAPE
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("case", CASES)
def test_compiled_flex_forward_every_call(case, T):
    for call in range(CALLS):
        tensors = _tensors(T, seed=100 * T + call)
        ref64, ref32 = (
            literal(case, tensors, dtype)[0] for dtype in (torch.float64, torch.float32)
        )
        with torch.no_grad():
            out = run("flex", case, tensors, torch.float32)[0]
        assert out.shape == ref64.shape
        assert torch.isfinite(out).all(), f"call {call}: non-finite output at T={T}"
        assert_matches([out], [ref32], [ref64], [f"out (T={T}, call {call})"])


@pytest.mark.parametrize("T", (40, 129))
@pytest.mark.parametrize("case", CASES)
def test_flex_backward_through_padding(case, T, flex_grad):  # noqa: F811
    for call in range(CALLS):
        tensors = _tensors(T, seed=7 * T + call)
        g = torch.randn(SHAPE[0], SHAPE[1], T, SHAPE[2], dtype=torch.float64)
        ref64, ref32 = (
            literal(case, tensors, dtype, grad_out=g) for dtype in (torch.float64, torch.float32)
        )
        fast = run("flex", case, tensors, torch.float32, grad_out=g)
        names = ["out", "dq", "dk", "dv", "dh_y", "dh_p"][: len(ref64)]
        assert_matches(fast, ref32, ref64, names, REL_FLEX_BUFFER)

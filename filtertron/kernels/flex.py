"""impl="flex": every kernel as one FlexAttention score_mod plus a banded block mask.

    logit_ij = (s_h q_i) . k_j + s_h b_j - (r_h (i - j))^2 - a_h |i - j|,  lo_h <= i - j <= hi_h

read off the kernel description (:mod:`filtertron.kernels.description`): the per-head scale
is folded into q (FlexAttention gets scale 1, so every kernel shares one compiled graph per
shape and dtype), r_h = sqrt(c_h) for the "square" position function, a_h = c_h for
"linear", and the band w_h is both the mask (hi = w_h; lo = 0 causal, -w_h two-sided) and
the block mask, so FlexAttention skips the key blocks beyond it and masks the rest token by
token, like every impl. Twicing: two passes with the same mods, out = 2 O1 - O2. Mods are in
:mod:`filtertron.kernels.mods`.

Where it runs: CUDA forward and backward through torch.compile(flex_attention); CPU forward
through torch.compile (inductor's fused C++ kernel, memory linear in T). Torch refuses flex
backward on CPU; :func:`unsupported` then names the impls that can. (Tests lift torch's
private guard to check the eager backward; that runs materialised and is never used here.)
Compiled shapes are static (a dynamic T fails to build on CPU in torch 2.13): each new
(B, H, T, D, dtype) compiles once, and past torch._dynamo.config.recompile_limit (8) shapes in
one process dynamo warns and runs flex eagerly, materialised. The block mask is built per
call from the band tensor on q's device, O(H (T / 128)^2), with no host copy.

Ragged T on CPU: torch 2.13's compiled CPU kernel (inductor's C++ flex template) reads
uninitialised memory when T is not a multiple of its 128 block, returning wrong values or NaN
from one call or machine to the next (``tools/flex_ragged_repro.py`` shows it with torch
alone). On CPU q, k, v (and the per-key bias) are therefore zero-padded to the next multiple
of 128; the mask keeps keys j < T only and the padded query rows are sliced off. That is
exact: a padded key has weight 0 for every real query, and a dropped row's zero gradient adds
nothing to the backward. On CUDA the Triton kernel masks the ragged block itself and nothing
is padded. A side effect: every T in one 128-bucket shares one compiled graph.
Shapes: q, k (B, H, T, D), v (B, H, T, Dv); out (B, H, T, Dv).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import flex_attention as _fa

from filtertron.kernels import mods
from filtertron.kernels.description import Kernel

BLOCK = 128  # FlexAttention's default block size
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _compiled():
    # Static shapes: inductor's CPU flex kernel fails to build with a dynamic T (torch 2.13,
    # "cur_qSplitSize5 was not declared"), so every new T compiles once.
    return torch.compile(_fa.flex_attention, dynamic=False)


def padded_length(T: int, device: torch.device) -> int:
    """The length flex runs at: T on CUDA, T rounded up to the 128 block on CPU (see above)."""
    return T if device.type != "cpu" else BLOCK * math.ceil(T / BLOCK)


def block_mask(T: int, n_keys: int, hi: Tensor, causal: bool) -> _fa.BlockMask:
    """Banded block mask lo_h <= i - j <= hi_h, j < n_keys, with lo = 0 (causal) or -hi.

    T is the (possibly padded) length the kernel runs at, n_keys <= T the real keys, hi an
    (H,) int32 tensor. Built from the band's block bounds: create_block_mask evaluates the
    mask on all H T^2 pairs (over 17 GB of index tensors at T = 16K), this is O(H (T / 128)^2).
    """
    device = hi.device
    hi = hi.to(torch.int32)
    lo = torch.zeros_like(hi) if causal else -hi
    start = torch.arange(0, T, BLOCK, device=device, dtype=torch.int32)
    end = (start + BLOCK - 1).clamp_max(T - 1)  # last position of each block
    d_min, d_max = start[:, None] - end[None, :], end[:, None] - start[None, :]  # (nQ, nK)
    lo3, up3 = lo[:, None, None], hi[:, None, None]  # (H, 1, 1)
    # A block cut short by T, or a key block holding padded keys (j >= n_keys), is never
    # "full": its mask must be evaluated.
    whole_q = end - start == BLOCK - 1
    whole_k = whole_q & (end < n_keys)
    full = (d_min >= lo3) & (d_max <= up3) & whole_q[:, None] & whole_k[None, :]
    partial = (d_max >= lo3) & (d_min <= up3) & ~full
    (kv_num, kv_idx), (full_num, full_idx) = (
        _fa._dense_to_ordered(m[None])
        for m in (partial, full)  # (1, H, nQ[, nK])
    )
    # Always per head: one block-mask shape for all kernels means one compiled graph.
    n = torch.tensor(n_keys, device=device, dtype=torch.int32)  # a graph input, not a constant
    return _fa.BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK, mods.band(lo, hi, n), seq_lengths=(T, T)
    )


def _run(qs, k, v, kb, r, ab, mask, needs_grad) -> Tensor:
    """One FlexAttention pass; compiled unless CPU backward is needed (tests only)."""
    B, H, T, _ = qs.shape
    # Real zeros, not expanded views: inductor's CPU kernel rejects stride-0 captured buffers.
    kb = qs.new_zeros(B, H, T) if kb is None else kb
    r = qs.new_zeros(H) if r is None else r
    ab = qs.new_zeros(H) if ab is None else ab
    if not needs_grad:  # torch rejects CPU inputs that merely require grad, even in no_grad
        qs, k, v, kb, r, ab = (t.detach() for t in (qs, k, v, kb, r, ab))
    eager = needs_grad and qs.device.type == "cpu"
    fn = _fa.flex_attention if eager else _compiled()
    return fn(qs, k, v, score_mod=mods.positional_score(kb, r, ab), block_mask=mask, scale=1.0)


def attend(kernel: Kernel) -> Tensor:
    """The kernel through FlexAttention, (B, H, T, Dv)."""
    q, k, v = kernel.q, kernel.k, kernel.v
    H, T, dtype = q.shape[1], q.shape[2], q.dtype
    qs = q * kernel.scale.to(dtype)[:, None, None]
    kb = None if kernel.key_bias is None else (kernel.key_bias * kernel.scale[:, None]).to(dtype)
    r = ab = None
    if kernel.position == "square":
        r = kernel.coef.to(dtype).sqrt()
    elif kernel.position == "linear":
        ab = kernel.coef.to(dtype)
    hi = kernel.band
    if hi is None:
        hi = torch.full((H,), T, dtype=torch.int32, device=q.device)
    pad = padded_length(T, q.device) - T
    if pad:  # CPU ragged T: see module docstring
        qs, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (qs, k, v))
        kb = None if kb is None else F.pad(kb, (0, pad))
    mask = block_mask(T + pad, T, hi, kernel.causal)
    needs_grad = kernel.needs_grad
    out = o1 = _run(qs, k, v, kb, r, ab, mask, needs_grad)
    if kernel.twice:
        out = 2 * o1 - _run(qs, k, o1, kb, r, ab, mask, needs_grad)
    return out[..., :T, :] if pad else out


def unsupported(kernel: Kernel) -> str | None:
    """Why impl="flex" cannot serve ``kernel``, or None."""
    q = kernel.q
    if kernel.dropout_p > 0.0:
        return "impl='flex' has no attention dropout; use impl='sdpa' or 'reference'"
    if q.device.type != "cpu":
        return None
    if q.dtype not in _CPU_DTYPES:
        return (
            f"impl='flex' on CPU runs float32/float16/bfloat16 (got {q.dtype}); "
            "use impl='sdpa' or impl='reference'"
        )
    if kernel.needs_grad:
        try:  # torch's own guard: tests may lift it to check the eager backward
            _fa._validate_device(q.detach().requires_grad_(), q, q)
        except NotImplementedError:
            return (
                "impl='flex' has no backward on CPU (torch refuses it); train on CPU with "
                "impl='sdpa' (or 'reference'), or call flex under torch.no_grad()"
            )
    return None

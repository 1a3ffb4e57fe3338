"""FlexAttention path: every kernel as one score_mod plus a banded block mask.

    logit_ij = qs_i . k_j + kb_j - (r_h (i - j))^2 - m_h |i - j|,  lo_h <= i - j <= hi_h

(see :mod:`filtertron.model.attention.mods`). softmax: qs = q / sqrt(D) (or q scale), optional
ALiBi slopes m_h; bilateral: qs, kb from :func:`reference.split_content`,
r_h = 1 / (sqrt(2) h_p); twicing: two passes with the same mods, out = 2 O1 - O2. FlexAttention
always gets scale 1, so every kernel shares one compiled graph per shape and dtype.

Bilateral heads also mask |i - j| > sqrt(60) h_p (spatial weight below e^-30, SPEC's fast
bilateral approximation), so far key blocks are skipped per head. The window is rounded up
to a multiple of 128 (FlexAttention's block size) before it enters the block mask, so block
masks are cached per (T, device, causal, window) and a slowly learning h_p rarely rebuilds.

Where it runs: CUDA forward and backward through torch.compile(flex_attention); CPU forward
through torch.compile (inductor's fused C++ kernel, memory linear in T). Torch refuses flex
backward on CPU; this module then raises and names the impls that can. (Tests lift torch's
private guard to check the eager backward; that runs materialised and is never used here.)
Compiled shapes are static (a dynamic T fails to build on CPU in torch 2.13): each new
(B, H, T, D, dtype) compiles once, and past torch._dynamo.config.recompile_limit (8) shapes in
one process dynamo warns and runs flex eagerly, materialised.

Ragged T on CPU: torch 2.13's compiled CPU kernel (inductor's C++ flex template) reads
uninitialised memory when T is not a multiple of its 128 block, returning wrong values or NaN
from one call or machine to the next (``tools/flex_ragged_repro.py`` shows it with torch
alone). On CPU q, k, v (and the per-key bias) are therefore zero-padded to the next multiple
of 128; the mask keeps keys j < T only and the padded query rows are sliced off. That is
exact: a padded key has weight 0 for every real query, and a dropped row's zero gradient adds
nothing to the backward. On CUDA the Triton kernel masks the ragged block itself and nothing
is padded. A side effect: every T in one 128-bucket shares one compiled graph.
Shapes: q, k (B, H, T, D), v (B, H, T, Dv); h_y, h_p, alibi_slopes (H,); out (B, H, T, Dv).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import flex_attention as _fa

from filtertron.model.attention import mods
from filtertron.model.attention.reference import split_content

WINDOW = math.sqrt(60.0)  # in units of h_p
_BLOCK = 128  # FlexAttention's default block size; windows are rounded up to it
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _compiled():
    # Static shapes: inductor's CPU flex kernel fails to build with a dynamic T (torch 2.13,
    # "cur_qSplitSize5 was not declared"), so every new T compiles once.
    return torch.compile(_fa.flex_attention, dynamic=False)


def padded_length(T: int, device: torch.device) -> int:
    """The length flex runs at: T on CUDA, T rounded up to the 128 block on CPU (see above)."""
    return T if device.type != "cpu" else _BLOCK * math.ceil(T / _BLOCK)


@functools.lru_cache(maxsize=64)
def _block_mask(
    T: int, n_keys: int, device: str, causal: bool, hi: tuple[int, ...]
) -> _fa.BlockMask:
    """Banded block mask lo_h <= i - j <= hi_h, j < n_keys, with lo = 0 (causal) or -hi; cached.

    T is the (possibly padded) length the kernel runs at, n_keys <= T the real keys. Built
    from the band's block bounds: create_block_mask evaluates the mask on all H T^2 pairs
    (over 17 GB of index tensors at T = 16K), this is O(H (T / 128)^2).
    """
    hi_t = torch.tensor(hi, device=device, dtype=torch.int32)
    lo_t = torch.zeros_like(hi_t) if causal else -hi_t
    start = torch.arange(0, T, _BLOCK, device=device, dtype=torch.int32)
    end = (start + _BLOCK - 1).clamp_max(T - 1)  # last position of each block
    d_min, d_max = start[:, None] - end[None, :], end[:, None] - start[None, :]  # (nQ, nK)
    lo, up = lo_t[:, None, None], hi_t[:, None, None]  # (H, 1, 1)
    # A block cut short by T, or a key block holding padded keys (j >= n_keys), is never
    # "full": its mask must be evaluated.
    whole_q = end - start == _BLOCK - 1
    whole_k = whole_q & (end < n_keys)
    full = (d_min >= lo) & (d_max <= up) & whole_q[:, None] & whole_k[None, :]
    partial = (d_max >= lo) & (d_min <= up) & ~full
    (kv_num, kv_idx), (full_num, full_idx) = (
        _fa._dense_to_ordered(m[None])
        for m in (partial, full)  # (1, H, nQ[, nK])
    )
    # Always per head: one block-mask shape for all kernels means one compiled graph.
    n = torch.tensor(n_keys, device=device, dtype=torch.int32)  # a graph input, not a constant
    return _fa.BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, _BLOCK, mods.band(lo_t, hi_t, n), seq_lengths=(T, T)
    )


def _bands(T: int, H: int, h_p: Tensor | None, skip_far: bool) -> tuple[int, ...]:
    if h_p is None or not skip_far:
        return (T,) * H
    w = (WINDOW * h_p.detach().double()).tolist()
    return tuple(min(T, _BLOCK * math.ceil((x + 1) / _BLOCK)) for x in w)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check(q: Tensor, needs_grad: bool, dropout_p: float) -> None:
    if dropout_p > 0.0:
        raise ValueError("impl='flex' has no attention dropout; use impl='sdpa' or 'reference'")
    if q.device.type != "cpu":
        return
    if q.dtype not in _CPU_DTYPES:
        raise NotImplementedError(
            f"impl='flex' on CPU runs float32/float16/bfloat16 (got {q.dtype}); "
            "use impl='sdpa' or impl='reference'"
        )
    if needs_grad:
        try:  # torch's own guard: tests may lift it to check the eager backward
            _fa._validate_device(q.detach().requires_grad_(), q, q)
        except NotImplementedError as err:
            raise NotImplementedError(
                "impl='flex' has no backward on CPU (torch refuses it); train on CPU with "
                "impl='sdpa' (or 'reference'), or call flex under torch.no_grad()"
            ) from err


def _run(qs, k, v, kb, r, ab, scale, causal, bands, needs_grad, n_keys) -> Tensor:
    """One FlexAttention pass over the first ``n_keys`` keys; compiled unless CPU backward is
    needed (tests only). Inputs may be padded past ``n_keys`` (CPU, see module docstring)."""
    B, H, T, _ = qs.shape
    # Real zeros, not expanded views: inductor's CPU kernel rejects stride-0 captured buffers.
    kb = qs.new_zeros(B, H, T) if kb is None else kb
    r = qs.new_zeros(H) if r is None else r.to(qs.dtype)
    ab = qs.new_zeros(H) if ab is None else ab.to(qs.dtype)
    if not needs_grad:  # torch rejects CPU inputs that merely require grad, even in no_grad
        qs, k, v, kb, r, ab = (t.detach() for t in (qs, k, v, kb, r, ab))
    mask = _block_mask(T, n_keys, str(qs.device), causal, bands)
    eager = needs_grad and qs.device.type == "cpu"
    fn = _fa.flex_attention if eager else _compiled()
    return fn(qs, k, v, score_mod=mods.positional_score(kb, r, ab), block_mask=mask, scale=scale)


def _kernel(q, k, base, h_y, h_p, content, scale, alibi_slopes, skip_far):
    """(qs, k, kb, r, ab, scale, bands) of the base kernel."""
    T, D = q.shape[-2:]
    if base == "softmax":  # scale folded into q: a Python float would specialise the graph
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        return q * scale, k, None, None, alibi_slopes, 1.0, _bands(T, q.shape[1], None, False)
    qs, kb = split_content(q, k, h_y, content)
    r = 1.0 / (math.sqrt(2.0) * h_p)
    return qs, k, kb, r, None, 1.0, _bands(T, q.shape[1], h_p, skip_far)


def _attend(
    q, k, v, base, twice, causal, h_y, h_p, content, scale, alibi_slopes, dropout_p, skip_far
) -> Tensor:
    needs_grad = _needs_grad(q, k, v, h_y, h_p, alibi_slopes)
    _check(q, needs_grad, dropout_p)
    qs, k, kb, r, ab, scale, bands = _kernel(
        q, k, base, h_y, h_p, content, scale, alibi_slopes, skip_far
    )
    T = q.shape[-2]
    pad = padded_length(T, q.device) - T
    if pad:  # CPU ragged T: see module docstring
        qs, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (qs, k, v))
        kb = None if kb is None else F.pad(kb, (0, pad))
    kernel = (kb, r, ab, scale, causal, bands, needs_grad, T)
    out = o1 = _run(qs, k, v, *kernel)
    if twice:
        out = 2 * o1 - _run(qs, k, o1, *kernel)
    return out[..., :T, :] if pad else out


def softmax(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention (optionally ALiBi) through FlexAttention.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        causal: mask j > i.
        scale: logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes, or None.
        dropout_p: must be 0.

    Returns:
        (B, H, T, Dv).
    """
    args = (None, None, "dot", scale, alibi_slopes, dropout_p, False)
    return _attend(q, k, v, "softmax", False, causal, *args)


def bilateral(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    h_y: Tensor | None,
    h_p: Tensor,
    content: str = "dot",
    causal: bool = True,
    dropout_p: float = 0.0,
    *,
    skip_far: bool = True,
) -> Tensor:
    """Bilateral self-attention through FlexAttention, (B, H, T, Dv).

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        h_y: (H,) content bandwidths, None for the default init.
        h_p: (H,) spatial bandwidths.
        content: "dot" or "gaussian".
        causal: mask j > i.
        dropout_p: must be 0.
        skip_far: mask |i - j| > sqrt(60) h_p (weight < e^-30) so far blocks are skipped.

    Returns:
        (B, H, T, Dv).
    """
    args = (h_y, h_p, content, None, None, dropout_p, skip_far)
    return _attend(q, k, v, "bilateral", False, causal, *args)


def twicing(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    base: str = "softmax",
    causal: bool = True,
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    *,
    skip_far: bool = True,
) -> Tensor:
    """Twicing 2 O1 - O2 over the ``base`` kernel, two FlexAttention passes.

    Args:
        q, k: (B, H, T, D) queries and keys; v: (B, H, T, Dv) values.
        base: "softmax" (with ``scale``, ``alibi_slopes``) or "bilateral" (with ``h_y``,
            ``h_p``, ``content``, ``skip_far``), as in :func:`softmax` and :func:`bilateral`.
        causal: mask j > i.

    Returns:
        (B, H, T, Dv).
    """
    args = (h_y, h_p, content, scale, alibi_slopes, 0.0, skip_far)
    return _attend(q, k, v, base, True, causal, *args)

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

Compile policy (compiled once per length bucket, never eager):

- Length buckets. q, k, v (and the per-key bias) are zero-padded from T to
  :func:`length_bucket` (T), the smallest of 128, 256, 384, 512, 768, 1024, 1536, ... (128 2^k
  and 192 2^k) that holds T; the mask keeps queries and keys i, j < T, the block mask leaves
  out every block wholly in the padding (so padded rows cost no attention work) and the
  padded rows are sliced off. That is exact: a padded key has weight 0 for every real query,
  and a dropped row's zero gradient adds nothing to the backward. q, k, v are made contiguous
  (dynamo guards on strides too, and a model passes views). Shapes stay static (a
  dynamic T fails to build on CPU in torch 2.13, "cur_kvSplitSize5 was not declared", and so
  does a dynamic batch), so each bucket compiles once per (B, H, D, dtype, grad mode): an
  evaluation over lengths 1x-8x of 1024 compiles 6 buckets, and T = 1, 2, ..., 1000 (decoding)
  compiles 6. A T on a bucket (512, 1024, 1536, 2048, ...) runs unpadded.
- Its own recompile limit. The compiled callable is ``fullgraph=True`` with
  :data:`RECOMPILE_LIMIT` (64) compiles of its own (``torch.compile(recompile_limit=...)``
  where torch has it, else that limit patched around each call), so the process-wide limit of
  8 never sends flex to its eager path; past 64 (or on any graph break) dynamo raises,
  reported as :class:`FlexCompileError`.
- Never eager. Whatever runs the unfused path (a limit hit, a graph break,
  ``torch.compiler.set_stance("force_eager")``, TORCHDYNAMO_DISABLE) makes FlexAttention
  announce "called without torch.compile()"; every call checks for that and raises
  :class:`FlexCompileError`.
- Inside a compiled model (``train.compile``) flex is traced into the model's graph on CUDA,
  static shapes (:func:`filtertron.train.parallelize.compile_model`: ``dynamic=False``). On
  CPU the model's graph breaks around flex, which runs as its own compiled call: inductor's
  CPU flex template cannot take the input layouts of a larger graph.

Ragged T on CPU also needs the padding: torch 2.13's compiled CPU kernel reads uninitialised
memory when T is not a multiple of its 128 block (``tools/flex_ragged_repro.py``). The first
call at a new shape logs a console line (compiles take seconds to a minute). The block mask
is built per call from the band tensor on q's device, O(H (T / 128)^2), with no host copy.
Shapes: q, k (B, H, T, D), v (B, H, T, Dv); out (B, H, T, Dv).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import flex_attention as _fa

from filtertron.kernels import mods
from filtertron.kernels.description import Kernel

log = logging.getLogger(__name__)
BLOCK = 128  # FlexAttention's default block size
RECOMPILE_LIMIT = 64  # flex's own compiles per process (buckets x batch shapes x grad modes)
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EAGER_ID = "flex_attention_performance"  # torch's warning id for the unfused path
_EAGER_TEXT = "flex_attention called without torch.compile()"
_seen: set[tuple] = set()  # shapes announced on the console


class FlexCompileError(RuntimeError):
    """FlexAttention would run (or ran) its unfused, materialising path."""


def length_bucket(T: int) -> int:
    """The length flex runs T at: the smallest 128 2^k or 192 2^k (>= 384) that holds T.

    128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, ...: multiples of the 128 block, two per
    doubling of T, at most 1.5 T for T > 256 (2 T below).
    """
    if T <= BLOCK:
        return BLOCK
    p = BLOCK << math.ceil(math.log2(T / BLOCK))  # power-of-two bucket >= T
    return 3 * p // 4 if p >= 4 * BLOCK and 3 * p // 4 >= T else p


# torch >= 2.13 gives a compiled callable its own recompile limit; older torch gets the limit
# patched around each call (the same check, read while dynamo compiles).
_OWN_LIMIT = "recompile_limit" in inspect.signature(torch.compile).parameters


@functools.cache
def _compiled() -> tuple[object, bool]:
    """(compiled flex_attention, whether it carries its own recompile limit)."""
    # Static shapes: see the module docstring. fullgraph: a graph break or a limit hit raises.
    kwargs: dict[str, object] = {"dynamic": False, "fullgraph": True}
    if _OWN_LIMIT:
        kwargs.update(recompile_limit=RECOMPILE_LIMIT, isolate_recompiles=True)
    return torch.compile(_fa.flex_attention, **kwargs), _OWN_LIMIT


def block_mask(T: int, n: int, hi: Tensor, causal: bool) -> _fa.BlockMask:
    """Banded block mask lo_h <= i - j <= hi_h, i < n, j < n, with lo = 0 (causal) or -hi.

    T is the (padded) length the kernel runs at, n <= T the real length, hi an (H,) int32
    tensor. Built from the band's block bounds: create_block_mask evaluates the mask on all
    H T^2 pairs (over 17 GB of index tensors at T = 16K), this is O(H (T / 128)^2). Blocks
    wholly in the padding (start >= n) are left out, so padded rows cost nothing.
    """
    device = hi.device
    hi = hi.to(torch.int32)
    lo = torch.zeros_like(hi) if causal else -hi
    start = torch.arange(0, T, BLOCK, device=device, dtype=torch.int32)
    end = (start + BLOCK - 1).clamp_max(T - 1)  # last position of each block
    d_min, d_max = start[:, None] - end[None, :], end[:, None] - start[None, :]  # (nQ, nK)
    lo3, up3 = lo[:, None, None], hi[:, None, None]  # (H, 1, 1)
    # A block cut short by T or holding padded positions (>= n) is never "full": its mask
    # must be evaluated; one wholly in the padding is not visited at all.
    whole = (end - start == BLOCK - 1) & (end < n)
    live = start < n
    full = (d_min >= lo3) & (d_max <= up3) & whole[:, None] & whole[None, :]
    partial = (d_max >= lo3) & (d_min <= up3) & ~full & live[:, None] & live[None, :]
    (kv_num, kv_idx), (full_num, full_idx) = (
        _fa._dense_to_ordered(m[None])
        for m in (partial, full)  # (1, H, nQ[, nK])
    )
    # Always per head: one block-mask shape for all kernels means one compiled graph.
    # A graph input, not a constant; filled on the device (torch.tensor(n) would copy from
    # the host and synchronise the stream on CUDA).
    n_t = torch.full((), n, device=device, dtype=torch.int32)
    return _fa.BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK, mods.band(lo, hi, n_t), seq_lengths=(T, T)
    )


def _announce(qs: Tensor, v: Tensor, T: int, needs_grad: bool) -> None:
    """A console line at the first call of each shape: that call compiles (seconds to minutes)."""
    B, H, Tp, D = qs.shape
    key = (B, H, Tp, D, v.shape[-1], qs.dtype, qs.device.type, torch.is_grad_enabled(), needs_grad)
    if key in _seen:
        return
    _seen.add(key)
    grad = "with backward" if needs_grad else "forward only"
    log.info(
        "FlexAttention: compiling for B=%d H=%d T=%d (bucket of T=%d) D=%d %s on %s, %s "
        "(once per shape; can take a minute)",
        B, H, Tp, T, D, str(qs.dtype).removeprefix("torch."), qs.device.type, grad,
    )  # fmt: skip


def _eager_error(shape: tuple[int, ...], why: str) -> FlexCompileError:
    return FlexCompileError(
        f"FlexAttention at q shape {shape} {why}; filtertron never runs flex unfused (it "
        "materialises T x T scores: 100x slower, O(T^2) memory). If torch.compile is disabled "
        "(TORCHDYNAMO_DISABLE, set_stance('force_eager')) use impl='sdpa' instead"
    )


def _warned_ids() -> set[str] | None:
    """torch's set of flex warnings already shown (torch >= 2.9), or None."""
    return getattr(_fa, "_WARNINGS_SHOWN", None)


def _call(*args, **kwargs) -> Tensor:
    """The compiled flex_attention; raises instead of running the unfused path."""
    if torch.compiler.is_compiling():  # traced into the caller's graph, compiled with it
        return _fa.flex_attention(*args, **kwargs)
    fn, own_limit = _compiled()
    shape = tuple(args[0].shape)
    limit = (
        contextlib.nullcontext()
        if own_limit
        else torch._dynamo.config.patch(
            recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
        )
    )
    shown = _warned_ids()
    try:
        if shown is not None:  # cheap: the unfused path adds its warning id to the set
            shown.discard(_EAGER_ID)
            with limit:
                out = fn(*args, **kwargs)
            eager = _EAGER_ID in shown
        else:
            with warnings.catch_warnings(record=True) as seen, limit:
                warnings.simplefilter("always")
                out = fn(*args, **kwargs)
            eager = any(_EAGER_TEXT in str(w.message) for w in seen)
            for w in seen:  # everything else is passed on
                if _EAGER_TEXT not in str(w.message):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except torch._dynamo.exc.FailOnRecompileLimitHit as err:
        raise _eager_error(
            shape,
            f"needs more than {RECOMPILE_LIMIT} compiled shapes in this process (every new "
            "(B, H, length bucket, D, dtype, grad mode) is one; raise "
            "filtertron.kernels.flex.RECOMPILE_LIMIT if that many are meant)",
        ) from err
    if eager:
        raise _eager_error(shape, "ran without torch.compile (the unfused path)")
    return out


def _run(qs, k, v, kb, r, ab, mask, needs_grad) -> Tensor:
    """One FlexAttention pass: compiled; eager only for a CPU backward (tests, guard lifted)."""
    B, H, T, _ = qs.shape
    # Real zeros, not expanded views: inductor's CPU kernel rejects stride-0 captured buffers.
    kb = qs.new_zeros(B, H, T) if kb is None else kb
    r = qs.new_zeros(H) if r is None else r
    ab = qs.new_zeros(H) if ab is None else ab
    if not needs_grad:  # torch rejects CPU inputs that merely require grad, even in no_grad
        qs, k, v, kb, r, ab = (t.detach() for t in (qs, k, v, kb, r, ab))
    score = mods.positional_score(kb, r, ab)
    if needs_grad and qs.device.type == "cpu":
        # Reached only where a test lifted torch's CPU guard (unsupported() refuses it
        # otherwise): FlexAttention's eager backward, materialised by design.
        return _fa.flex_attention(qs, k, v, score_mod=score, block_mask=mask, scale=1.0)
    return _call(qs, k, v, score_mod=score, block_mask=mask, scale=1.0)


def attend(kernel: Kernel) -> Tensor:
    """The kernel through FlexAttention, (B, H, T, Dv)."""
    if torch.compiler.is_compiling() and kernel.q.device.type == "cpu":
        return _attend_outside_graph(kernel)
    return _attend(kernel)


@torch.compiler.disable
def _attend_outside_graph(kernel: Kernel) -> Tensor:
    """A graph break around flex in a compiled CPU model: inductor's CPU flex template finds
    no kernel for the layouts a larger graph gives its inputs ("No choices exist for
    backend", torch 2.13), so flex runs as its own compiled call (one per bucket)."""
    return _attend(kernel)


def _attend(kernel: Kernel) -> Tensor:
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
    pad = length_bucket(T) - T
    if pad:
        qs, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (qs, k, v))
        kb = None if kb is None else F.pad(kb, (0, pad))
    # One memory layout: dynamo guards on strides, and a model's q, k, v are views of its
    # projection (padded ones, O1 of twicing and kb are contiguous). Costs a copy of k and v.
    qs, k, v = (t.contiguous() for t in (qs, k, v))
    mask = block_mask(T + pad, T, hi, kernel.causal)
    needs_grad = kernel.needs_grad
    if not (torch.compiler.is_compiling() or (needs_grad and q.device.type == "cpu")):
        _announce(qs, v, T, needs_grad)
    out = o1 = _run(qs, k, v, kb, r, ab, mask, needs_grad)
    if kernel.twice:
        # Padded rows of O1 are fully masked (0 on CUDA, undefined on CPU): they are values of
        # padded keys in the second pass, weight 0, but 0 * NaN is NaN, so they are zeroed.
        v2 = F.pad(o1[..., :T, :], (0, 0, 0, pad)) if pad else o1
        out = 2 * o1 - _run(qs, k, v2, kb, r, ab, mask, needs_grad)
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

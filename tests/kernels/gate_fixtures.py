"""Kernels the compile gate must reject (tests/kernels/test_compile_gate.py), no GPU needed.

Each is a small case of a fault the Triton interpreter accepts and a GPU does not: the two
compile errors filtertron's kernels first had on the H200, a tile whose shared memory exceeds
the per-block limit, and an accumulator too large for the register file (spills).
"""

from __future__ import annotations

import triton
import triton.language as tl

BAD: tl.constexpr = -1.0e30  # annotated, not tl.constexpr(...): not visible to the compiler


@triton.jit
def global_annotated(X, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.zeros([BLOCK], dtype=tl.float32) + BAD, mask=offs < N)


@triton.jit
def _fill(X, N, BLOCK: tl.constexpr, VALUE: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.zeros([BLOCK], dtype=tl.float32) + VALUE, mask=offs < N)


@triton.jit
def constexpr_tuple(X, N, BLOCK: tl.constexpr):
    consts = (BLOCK, 1.0)
    _fill(X, N, *consts)  # constexprs through a tuple: not constexprs to the compiler


@triton.jit
def matmul(A, B, C, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A pipelined matmul. Launched with large tiles and 4 stages it needs more shared memory
    than sm_90 has per block; with one warp its float32 accumulator spills registers."""
    rm, rn, rk = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(A + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(B + (k + rk)[:, None] * BLOCK_N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(C + rm[:, None] * BLOCK_N + rn[None, :], acc)

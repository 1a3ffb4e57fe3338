"""FlexAttention compiled once per length bucket, never eager (CPU; test_gpu_flex.py on CUDA).

Dynamo's compiles are counted with ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``
(one per graph dynamo builds). The process-wide recompile limit is lowered to 2 here, below
the number of 128-blocks the lengths fall in (3) and the number of flex compiles (6): flex
must carry its own limit, and ``fail_on_recompile_limit_hit`` (tests/conftest.py) makes any
hit an error instead of the eager fallback. Forward only in both grad modes: CPU flex has no
backward. Every output is checked against the float64 literal reference (the rule of
tests/model/test_attention_ops.py), so a wrong padding shows. About 20 s, mostly the three
compiles of the buckets 128, 256 and 384 (the rest hit the on-disk inductor cache).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn.attention import flex_attention as fa

from filtertron.kernels import flex
from filtertron.logs import ConsoleFilter
from filtertron.model.attention.functional import attention
from tests.model.test_attention_ops import assert_matches, literal, run

# 9 distinct lengths (more than the default limit of 8) in 3 128-blocks -> buckets 128, 256, 384.
LENGTHS = (1, 100, 128, 129, 200, 256, 257, 300, 384)
CASE = "twicing-bilateral-gaussian"  # key bias, square position, two passes: every term


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def tensors(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, T, 16, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.fixture
def fresh_flex(monkeypatch):
    """Empty dynamo caches and a new compiled flex callable (undone afterwards)."""
    monkeypatch.setattr(flex, "_seen", set())
    torch._dynamo.reset()
    flex._compiled.cache_clear()
    with torch._dynamo.config.patch(recompile_limit=2):  # (monkeypatch would delete it)
        yield
    flex._compiled.cache_clear()
    torch._dynamo.reset()


def test_length_buckets():
    assert [flex.length_bucket(T) for T in (1, 128, 129, 256, 257, 384, 385, 512)] == [
        128, 128, 256, 256, 384, 384, 512, 512,
    ]  # fmt: skip
    assert [flex.length_bucket(T) for T in (513, 768, 769, 1000, 1025, 1536, 1537)] == [
        768, 768, 1024, 1024, 1536, 1536, 2048,
    ]  # fmt: skip
    for T in range(1, 20000, 37):
        b = flex.length_bucket(T)
        assert b >= T and b % flex.BLOCK == 0 and b <= max(2 * T, 128)
        assert T <= 256 or b <= 1.5 * T
    # 1x-8x of 1024: six buckets; decoding T = 1..1000: six as well.
    assert len({flex.length_bucket(n * 1024) for n in range(1, 9)}) == 6
    assert len({flex.length_bucket(T) for T in range(1, 1001)}) == 6


def _check_lengths(grad: bool, seed: int) -> None:
    for T in LENGTHS:
        qkv = tensors(T, seed)
        ref64, ref32 = (literal(CASE, qkv, dt)[0] for dt in (torch.float64, torch.float32))
        with torch.set_grad_enabled(grad):
            out = run("flex", CASE, qkv)[0]
        assert_matches([out], [ref32], [ref64], [f"out (T={T}, grad mode {grad})"])


def test_one_compile_per_bucket_and_grad_mode(fresh_flex):
    """9 lengths x 2 grad modes, twice: 3 buckets x 2 grad modes = 6 compiles, no more."""
    before = graphs()
    for grad in (False, True):
        _check_lengths(grad, seed=0)
    assert graphs() - before == 6
    for grad in (True, False):  # new values, same shapes: nothing compiles again
        _check_lengths(grad, seed=1)
    assert graphs() - before == 6
    assert flex._EAGER_ID not in fa._WARNINGS_SHOWN


def test_own_limit_patched_around_each_call_on_older_torch(fresh_flex, monkeypatch):
    """torch < 2.13 has no torch.compile(recompile_limit=): the limit is patched per call."""
    monkeypatch.setattr(flex, "_OWN_LIMIT", False)
    before = graphs()
    with torch.no_grad():
        for T in (100, 200, 300):  # 3 buckets, over the process-wide limit of 2
            run("flex", CASE, tensors(T))
    assert graphs() - before == 3


@pytest.mark.parametrize("own_limit", [True, False], ids=["compile-kwarg", "patched-limit"])
def test_past_its_limit_flex_raises_instead_of_running_eager(fresh_flex, monkeypatch, own_limit):
    monkeypatch.setattr(flex, "_OWN_LIMIT", own_limit and flex._OWN_LIMIT)
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 1)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        run("flex", CASE, tensors(100))  # bucket 128: the one compile allowed
        with pytest.raises(flex.FlexCompileError, match=r"more than 1 compiled shapes"):
            run("flex", CASE, tensors(200))  # bucket 256


@pytest.mark.parametrize("registry", [True, False], ids=["warn-once-registry", "warnings"])
def test_an_eager_flex_call_is_an_error(monkeypatch, registry):
    """force_eager makes torch.compile a no-op: flex runs unfused, and filtertron refuses."""
    if not registry:  # as on a torch without the warn-once set: warnings are recorded instead
        monkeypatch.setattr(fa, "_WARNINGS_SHOWN", set())
        monkeypatch.setattr(flex, "_warned_ids", lambda: None)
    q, k, v = (t.float() for t in tensors(40))
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        with pytest.raises(flex.FlexCompileError, match="without torch.compile"):
            attention(q, k, v, impl="flex")


def test_each_new_shape_is_announced_on_the_console_once(monkeypatch, caplog):
    monkeypatch.setattr(flex, "_seen", set())
    q, k, v = (t.float() for t in tensors(300))
    with caplog.at_level(logging.INFO, logger="filtertron"), torch.no_grad():
        for T in (300, 290, 300, 100):  # buckets 384, 384, 384, 128
            attention(q[..., :T, :], k[..., :T, :], v[..., :T, :], impl="flex")
    lines = [r for r in caplog.records if r.name == "filtertron.kernels.flex"]
    assert [("T=384" in r.getMessage(), "T=128" in r.getMessage()) for r in lines] == [
        (True, False),
        (False, True),
    ]
    assert all(ConsoleFilter(rank=0, verbose=False).filter(r) for r in lines)

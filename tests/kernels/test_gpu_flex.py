"""On CUDA: compiled FlexAttention (``impl="flex"``, auto's CUDA choice for ALiBi, bilateral
and twicing) against the literal reference, and its compiles counted, forward and backward.

Skipped without a GPU (marker ``gpu``; ``pytest -m "gpu and not slow"`` in tools/gpu/check.sh).
Never run by us: written without a GPU. Tolerance: the rule of tests/model/test_attention_ops.py
(error against float64 <= 2x the fp32 reference's + rel * scale; dh_y, dh_p 5e-5, flex's
scatter-add), TF32 off. Compiles are counted with dynamo's ``unique_graphs`` counter (one per
graph dynamo builds; backward graphs are AOTAutograd's and ride with their forward); the
process-wide recompile limit is lowered to 2 so only flex's own limit can keep the count
within bounds, and tests/conftest.py makes any limit hit an error instead of the eager path.

Not slow (about 4 flex compiles, forward+backward at one bucket and forward at three):
one ragged case against the reference, auto's choice, and the training / validation /
evaluation sequence. Slow: the full matrix of cases x lengths (about 20 compiles), the
evaluation over 1x-8x, and ``train.compile``'s model with flex traced into its graph.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from torch.nn.attention import flex_attention as fa

from filtertron.kernels import describe, flex, registry
from tests.model.test_attention_ops import CASES, assert_matches, literal, run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
NAMES = ["out", "dq", "dk", "dv", "dh_y", "dh_p"]
CASE = "twicing-bilateral-gaussian"  # key bias, square position, two passes, grads to h_y, h_p
TRAIN_T = 384  # a bucket: trains unpadded


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    """The fp32 references must be fp32 (no TF32), and the kernels follow the same switch."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def tensors(T, D=64, B=2, H=3, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn(B, H, T, D, generator=g, device="cuda", dtype=torch.float64) for _ in range(3)
    ]


def check(case, T, seed, grad=True):
    """flex against the literal reference at T: forward+backward (grad) or forward only."""
    qkv = tensors(T, seed=seed)
    g = torch.randn_like(qkv[0]) if grad else None
    ref64, ref32 = (literal(case, qkv, dt, True, g) for dt in (torch.float64, torch.float32))
    if grad:
        fast = run("flex", case, qkv, torch.float32, True, g)
        assert_matches(fast, ref32, ref64, NAMES[: len(ref64)], rel_buffer=5e-5)
    else:
        with torch.no_grad():
            out = run("flex", case, qkv, torch.float32, True)[0]
        assert_matches([out], ref32[:1], ref64[:1], [f"out no grad (T={T}, seed {seed})"])


def test_flex_matches_reference_at_a_ragged_length():
    """T = 300 runs padded to its bucket 384: padded rows and keys must change nothing."""
    check(CASE, 300, seed=0)
    check(CASE, 300, seed=1, grad=False)


def test_auto_picks_flex_for_bilateral_on_cuda():
    q, k, v = (t.float() for t in tensors(300))
    kernel = describe(q, k, v, "bilateral", h_p=torch.tensor([2.0, 8.0, 300.0], device="cuda"))
    assert registry.resolve("auto", kernel) == "flex"
    with torch.no_grad():
        fused = registry.attend(kernel)
        ref = registry.attend(kernel, "reference")
    assert (fused - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize(
    "multiples",
    [(1, 2, 8), pytest.param(tuple(range(1, 9)), marks=pytest.mark.slow)],
    ids=["1x-2x-8x", "1x-8x"],
)
def test_training_validation_and_evaluation_compile_once_per_bucket(multiples):
    """Training (one shape, backward) and validation (no_grad) at TRAIN_T, then evaluation
    lengths L = m TRAIN_T with a ragged last window L - 37, twice: one compile per (bucket,
    grad mode), nothing eager, far fewer compiles than lengths."""
    torch._dynamo.reset()
    flex._compiled.cache_clear()
    before = counters["stats"]["unique_graphs"]
    lengths = [m * TRAIN_T for m in multiples]
    with torch._dynamo.config.patch(recompile_limit=2):
        for rnd in range(2):
            for step in range(3):  # training steps: new values, one shape
                check(CASE, TRAIN_T, seed=10 * rnd + step)
            check(CASE, TRAIN_T, seed=rnd, grad=False)  # validation
            for L in lengths:
                for T in (L, L - 37):  # a full window and the ragged last one
                    check(CASE, T, seed=rnd, grad=False)
            buckets = {flex.length_bucket(T) for L in lengths for T in (L, L - 37)}
            assert counters["stats"]["unique_graphs"] - before == 1 + len(buckets | {TRAIN_T})
    shown = getattr(fa, "_WARNINGS_SHOWN", set())
    assert flex._EAGER_ID not in shown


@pytest.mark.slow  # about 20 compiles: cases differ in which inputs need grad, 3 buckets
@pytest.mark.parametrize("T", (1, 40, 97, 129, 300))
@pytest.mark.parametrize("case", CASES)
def test_compiled_flex_forward_and_backward(case, T):
    """Compiled CUDA FlexAttention (padded to its bucket), three calls with new values each."""
    for call in range(3):
        check(case, T, seed=call)
        check(case, T, seed=call, grad=False)


@pytest.mark.slow  # inductor compiles a whole (tiny) model, forward and backward
def test_compiled_model_with_flex_trains_validates_and_decodes():
    """train.compile on CUDA: flex inside the model's graph (no graph break), one graph per
    (shape, grad mode, training flag); losses and h_p's gradient as the uncompiled model's."""
    from filtertron.generate import generate
    from filtertron.train.parallelize import compile_model
    from tests.eval.conftest import VOCAB, tiny_model

    torch._dynamo.reset()
    model = tiny_model(kind="bilateral", position="none", impl="flex").cuda()
    eager = copy.deepcopy(model)
    compile_model(model)
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randint(0, VOCAB, (2, 129), device="cuda", generator=g)
    before = counters["stats"]["unique_graphs"]
    breaks = sum(counters["graph_break"].values())
    for _ in range(2):
        for m in (model, eager):
            m.train()
            m.zero_grad()
            m(idx[:, :-1], idx[:, 1:]).backward()
        pairs = zip(model.named_parameters(), eager.parameters(), strict=True)
        h_p = [(n, a.grad, b.grad) for (n, a), b in pairs if "h_p" in n]
        assert h_p  # the bilateral layers' log h_p
        for name, a, b in h_p:
            assert (a - b).abs().max() <= 1e-4 * b.abs().max(), name
        with torch.no_grad():
            model.eval()
            eager.eval()
            val, ref = model(idx[:, :-1], idx[:, 1:]), eager(idx[:, :-1], idx[:, 1:])
        assert abs(float(val) - float(ref)) <= 1e-4 * abs(float(ref))
    assert counters["stats"]["unique_graphs"] - before == 2  # training, validation
    prompt = idx[:1, :8]
    out = generate(model, prompt, 40)  # contexts of 8..47 tokens: one bucket (128)
    assert counters["stats"]["unique_graphs"] - before == 3
    assert torch.equal(out, generate(eager, prompt, 40))
    assert sum(counters["graph_break"].values()) == breaks  # flex stayed in the graph

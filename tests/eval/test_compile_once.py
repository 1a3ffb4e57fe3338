"""Evaluation and decoding compile once per length bucket, never once per ragged shape.

Every batch of a length has one shape (the short last batch and the ragged last window are
padded, their padding not scored); FlexAttention pads lengths to its buckets; a compiled
model (``train.compile``) decodes with its context padded to buckets. Compiles are counted
with dynamo's ``unique_graphs`` counter; tests/conftest.py makes a recompile-limit hit an
error, so the eager fallback cannot pass. Results are compared with the same weights run
through ``impl="sdpa"`` uncompiled. About 40 s (four flex compiles on the CPU).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from filtertron.eval.evaluate import EvalOptions, evaluate_model
from filtertron.eval.perplexity import batches, load_span, sliding_windows
from filtertron.generate import generate
from filtertron.kernels import flex
from filtertron.train.parallelize import compile_model
from tests.eval.conftest import VOCAB, tiny_model

PROMPT = torch.tensor([[5, 17, 3, 99, 41, 7, 250, 12]])


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    """Count from empty caches (later compiles of a shape seen before hit the disk cache)."""
    torch._dynamo.reset()
    flex._compiled.cache_clear()
    yield


@pytest.mark.parametrize("n, L, S, size", [(999, 64, 48, 4), (150, 64, 64, 8), (63, 64, 8, 3)])
def test_every_batch_of_a_length_has_one_shape(n, L, S, size):
    stream = (np.arange(n + 1) * 7) % 97
    windows = sliding_windows(n, L, S)
    got = list(batches(stream, windows, size))
    T, B = max(w.length for w in windows), min(size, len(windows))
    assert {tuple(b.inputs.shape) for b in got} == {(B, T)}
    assert sum(b.scored for b in got) == n  # every target once, padding never
    real = [(b, r) for b in got for r in range(b.rows)]
    assert len(real) == len(windows)
    for w, (b, r) in zip(windows, real, strict=True):
        assert b.starts[r] == w.start and b.score_from == w.score_from
        end = T if b.score_to is None else b.score_to
        assert end == w.length
        assert b.inputs[r, :end].tolist() == stream[w.start : w.start + w.length].tolist()
        assert b.targets[r, :end].tolist() == stream[w.start + 1 : w.start + w.length + 1].tolist()


def _ppl(rows):
    return [(r["length"], r["tokens"], r["token_ppl"]) for r in rows]


def test_flex_evaluation_over_1x_to_8x_compiles_once_per_bucket(dataset, fresh_dynamo):
    span = load_span(dataset, "test", max_tokens=2000)
    opts = EvalOptions(lengths="1x,2x,3x,4x,5x,6x,7x,8x", batch_size=2, progress=False)
    model = tiny_model(impl="flex")  # seq_len 32: lengths 32..256, every last window ragged
    before = graphs()
    rows = evaluate_model(model, span, opts)
    assert graphs() - before == 2  # buckets 128 (L = 32..128) and 256 (L = 160..256)
    assert _ppl(evaluate_model(model, span, opts)) == _ppl(rows)
    assert graphs() - before == 2
    ref = evaluate_model(tiny_model(impl="sdpa"), span, opts)
    for (L, n, ppl), (L_ref, n_ref, ppl_ref) in zip(_ppl(rows), _ppl(ref), strict=True):
        assert (L, n) == (L_ref, n_ref) and abs(ppl - ppl_ref) <= 1e-5 * ppl_ref


def test_flex_decoding_compiles_once_per_bucket(fresh_dynamo):
    model = tiny_model(impl="flex")
    before = graphs()
    out = generate(model, PROMPT, 130)  # contexts of 8..137 tokens: buckets 128 and 256
    assert graphs() - before == 2
    assert torch.equal(out, generate(tiny_model(impl="sdpa"), PROMPT, 130))


def test_compiled_model_trains_validates_evaluates_and_decodes(dataset, fresh_dynamo):
    """train.compile's model: a training step and validation compile once each, evaluation
    runs the uncompiled hidden-state path, decoding compiles once per context bucket."""
    model = tiny_model(impl="auto")  # CPU: the tiled engine's custom op
    eager = copy.deepcopy(model)
    compile_model(model, backend="aot_eager")  # as parallelize does (inductor there)
    idx = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    before = graphs()
    for _ in range(2):
        model.train()
        model(idx[:, :-1], idx[:, 1:]).backward()
        model.eval()
        with torch.no_grad():
            val = model(idx[:, :-1], idx[:, 1:])
    assert graphs() - before == 2  # grad mode and training flag: one graph each
    with torch.no_grad():
        assert abs(float(val) - float(eager(idx[:, :-1], idx[:, 1:]))) <= 1e-5
    span = load_span(dataset, "test", max_tokens=2000)
    opts = EvalOptions(lengths="1x,2x,3x", batch_size=2, progress=False)
    assert _ppl(evaluate_model(model, span, opts)) == _ppl(evaluate_model(eager, span, opts))
    assert graphs() - before == 2
    out = generate(model, PROMPT, 40)  # 8..47 tokens: padded to one bucket
    assert graphs() - before == 3
    assert torch.equal(out, generate(eager, PROMPT, 40))


@pytest.mark.slow  # inductor compiles of the whole model: about a minute on the CPU
def test_compiled_flex_model_validates_and_decodes(dataset, fresh_dynamo):
    """On CPU the compiled model's graph breaks around flex (see kernels/flex.py): a fixed
    number of graphs per input shape, however many steps decode."""
    model = tiny_model(impl="flex")
    eager = copy.deepcopy(model)
    compile_model(model)  # inductor
    idx = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    before = graphs()
    with torch.no_grad():
        for _ in range(2):
            val = model(idx[:, :-1], idx[:, 1:])
        assert abs(float(val) - float(eager(idx[:, :-1], idx[:, 1:]))) <= 1e-5
    per_shape = graphs() - before  # the model's pieces and flex's own graph
    out = generate(model, PROMPT, 130)  # 8..137 tokens: buckets 128 and 256 (B = 1)
    assert graphs() - before == 3 * per_shape
    assert torch.equal(out, generate(model, PROMPT, 130))
    assert graphs() - before == 3 * per_shape
    assert torch.equal(out, generate(eager, PROMPT, 130))

"""Context lengths: parsing, refusal of unrepresentable lengths, fused eval impl = reference."""

import pytest
import torch

from filtertron.eval.evaluate import EvalOptions, evaluate_model
from filtertron.eval.long_context import (
    UnsupportedLengthError,
    check_length,
    parse_lengths,
    resolve_impl,
    with_impl,
)
from filtertron.eval.perplexity import load_span, score, sliding_windows
from tests.eval.conftest import tiny_model


def test_parse_lengths():
    assert parse_lengths("128, 4K,2x,1x", 64) == [128, 4096, 64]  # 2x = 128 kept once
    assert parse_lengths(None, 256) == [256]
    assert parse_lengths("0.5x", 64) == [32]
    for bad in ("abc", "0", "1.5", "-4", "0.5x"):
        with pytest.raises(ValueError, match="--lengths"):
            parse_lengths(bad, 3)


def test_learned_positions_refuse_longer_contexts(dataset):
    model = tiny_model(position="learned", seq_len=32)
    check_length(model.config, 32)
    with pytest.raises(
        UnsupportedLengthError,
        match=r"context length 64 exceeds its learned "
        r"position table \(model.seq_len=32",
    ):
        check_length(model.config, 64)
    span = load_span(dataset, "test")
    with pytest.raises(UnsupportedLengthError, match="does not truncate silently"):
        evaluate_model(model, span, EvalOptions(lengths="1x,2x", progress=False))
    # Positions defined for any length pass the check.
    for position in ("alibi", "rotary", "sinusoidal", "none"):
        check_length(tiny_model(position=position, seq_len=32).config, 16 * 1024)


def test_resolve_impl():
    cfg = tiny_model(impl="reference").config
    assert resolve_impl("auto", cfg) == "sdpa"  # never the materialised (T, T) kernel
    assert resolve_impl("reference", cfg) == "reference"  # explicit requests are kept
    flex = tiny_model(impl="flex").config
    assert resolve_impl("auto", flex) == "flex"
    assert resolve_impl("auto", flex, needs_grad=True) == "sdpa"  # no flex backward on CPU
    with pytest.raises(ValueError, match="--impl"):
        resolve_impl("fast", cfg)


def test_with_impl_keeps_the_weights():
    model = tiny_model(impl="reference")
    assert with_impl(model, "reference") is model
    other = with_impl(model, "sdpa")
    assert other.config.attention.impl == "sdpa"
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "kind,position,extra",
    [
        ("softmax", "alibi", {}),
        ("softmax", "rotary", {}),
        ("bilateral", "none", {}),
        ("twicing", "alibi", {"residual": {"kind": "generalized"}}),
    ],
)
def test_fused_impl_beyond_training_length_equals_reference(dataset, kind, position, extra):
    """At 4x the training length the memory-linear impl gives the reference's perplexity."""
    stream = load_span(dataset, "test").tokens[:300]
    model = tiny_model(kind=kind, position=position, seq_len=16, **extra)
    windows = sliding_windows(len(stream) - 1, 64, 24)
    ref = score(model, stream, windows, batch_size=2)
    fused = score(with_impl(model, "sdpa"), stream, windows, batch_size=2)
    assert fused.tokens == ref.tokens == len(stream) - 1
    assert abs(fused.nll_sum - ref.nll_sum) <= 1e-5 * ref.nll_sum

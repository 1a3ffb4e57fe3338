"""The GPT model over every attention kind x impl x residual: shapes, causality, gradients,
agreement of impls with the reference at model level, bad inputs, and overfitting."""

import dataclasses
import itertools

import pytest
import torch

from filtertron import build_model
from filtertron.config import model_config

KINDS = {
    "softmax": dict(position="learned"),
    "softmax-alibi": dict(position="alibi"),
    "softmax-rotary": dict(position="rotary"),
    "bilateral": dict(position="none", attention=dict(kind="bilateral")),
    "bilateral-gaussian": dict(
        position="none", attention=dict(kind="bilateral", bilateral=dict(content="gaussian"))
    ),
    "twicing": dict(position="learned", attention=dict(kind="twicing", twicing=dict(layers=1))),
    "twicing-bilateral": dict(
        position="none",
        attention=dict(kind="twicing", twicing=dict(base="bilateral", layers="all")),
    ),
}
RESIDUALS = {
    "standard": dict(kind="standard"),
    "generalized": dict(kind="generalized", apply_to="both"),
}


def tiny(kind: str, residual: str = "standard", impl: str = "reference", **kw):
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in KINDS[kind].items()}
    spec.setdefault("attention", {})
    spec["attention"] = dict(spec["attention"], impl=impl)
    base = dict(
        n_layers=2, d_model=48, n_heads=3, seq_len=40, vocab_size=61, residual=RESIDUALS[residual]
    )
    base.update(spec)
    base.update(kw)
    return model_config(**base)


@pytest.mark.parametrize(
    "kind,residual,impl",
    [(k, r, i) for k, r, i in itertools.product(KINDS, RESIDUALS, ["reference", "sdpa"])],
)
def test_shapes_causality_grads(kind, residual, impl):
    model = build_model(tiny(kind, residual, impl))
    idx = torch.randint(0, 61, (2, 37))
    logits = model(idx)
    assert logits.shape == (2, 37, 61) and logits.dtype == torch.float32
    # Changing tokens after position t leaves logits at <= t unchanged.
    t = 20
    idx2 = idx.clone()
    idx2[:, t + 1 :] = torch.randint(0, 61, (2, 37 - t - 1))
    logits2 = model(idx2)
    torch.testing.assert_close(logits2[:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(logits2[:, t + 1 :], logits[:, t + 1 :])
    loss = model(idx, idx)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", list(KINDS))
def test_flex_forward_matches_reference_in_model(kind):
    ref = build_model(tiny(kind, "generalized", "reference"))
    flex = build_model(tiny(kind, "generalized", "flex"))
    flex.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 61, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(flex(idx), ref(idx), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_sdpa_matches_reference_with_parameter_grads(kind):
    """Model-level check that gradients of h_y, h_p and t agree between impls (fp32)."""
    ref = build_model(tiny(kind, "generalized", "reference"))
    fast = build_model(tiny(kind, "generalized", "sdpa"))
    fast.load_state_dict(ref.state_dict())
    idx = torch.randint(0, 61, (2, 37))
    ref(idx, idx).backward()
    fast(idx, idx).backward()
    for (name, p_ref), (_, p_fast) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_grc_t0_equals_standard_exactly():
    std = build_model(tiny("bilateral", "standard"))
    grc_cfg = tiny("bilateral", "standard")
    grc_cfg = dataclasses.replace(
        grc_cfg,
        residual=dataclasses.replace(
            grc_cfg.residual, kind="generalized", t_init=0.0, learnable=False, apply_to="both"
        ),
    )
    grc = build_model(grc_cfg)
    missing, unexpected = grc.load_state_dict(std.state_dict(), strict=False)
    assert all("t_fixed" in k for k in missing) and not unexpected
    idx = torch.randint(0, 61, (2, 37))
    assert torch.equal(grc(idx), std(idx))


def test_grc_matches_formula():
    """One GRC block against X <- (1 - t)(X + Attn(LN1 X)) + t Y0 built by hand."""
    model = build_model(tiny("softmax", "generalized"))
    block = model.blocks[0]
    x = torch.randn(2, 9, 48)
    y0 = torch.randn(2, 9, 48)
    t = torch.sigmoid(block.res1.tau)
    h = (1 - t) * (x + block.attn(block.norm1(x))) + t * y0
    t2 = torch.sigmoid(block.res2.tau)
    expected = (1 - t2) * (h + block.mlp(block.norm2(h))) + t2 * y0
    torch.testing.assert_close(block(x, y0), expected, rtol=0, atol=1e-6)


def test_y0_gets_gradient_through_grc():
    model = build_model(tiny("softmax", "generalized"))
    idx = torch.randint(0, 61, (1, 10))
    model(idx, idx).backward()
    for block in model.blocks:
        assert block.res1.tau.grad is not None and block.res1.tau.grad.abs() > 0


def test_bad_inputs_name_the_tensor():
    model = build_model(tiny("softmax"))
    with pytest.raises(ValueError, match=r"idx: expected shape \(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx: .*exceeds the learned position table.*T <= 40"):
        model(torch.zeros(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match="targets: expected shape"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="idx: expected an integer tensor"):
        model(torch.zeros(1, 5))


def test_non_learned_positions_extrapolate():
    for kind in ("softmax-rotary", "softmax-alibi", "bilateral"):
        model = build_model(tiny(kind, impl="sdpa"))
        assert model(torch.zeros(1, 90, dtype=torch.long)).shape == (1, 90, 61)


def test_tied_embeddings():
    model = build_model(tiny("softmax"))
    assert model.lm_head.weight is model.wte.weight
    untied = build_model(tiny("softmax", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_bilateral_init_follows_spec():
    model = build_model(tiny("bilateral"))
    core = model.blocks[0].attn.core
    D = 16
    torch.testing.assert_close(core.h_y, torch.full((3,), D**0.5))
    torch.testing.assert_close(core.h_p, torch.tensor([2.0, (2.0 * 40) ** 0.5, 40.0]))
    g = build_model(tiny("bilateral-gaussian")).blocks[0].attn.core
    torch.testing.assert_close(g.h_y, torch.full((3,), D**0.25))


def test_frozen_bandwidths_are_buffers():
    cfg = tiny(
        "bilateral",
        attention=dict(
            kind="bilateral", impl="sdpa", bilateral=dict(learn_h_y=False, learn_h_p=False)
        ),
    )
    core = build_model(cfg).blocks[0].attn.core
    names = {n for n, _ in core.named_parameters()}
    assert "log_h_y" not in names and "log_h_p" not in names
    assert {"log_h_y", "log_h_p"} <= {n for n, _ in core.named_buffers()}


@pytest.mark.parametrize(
    "kind,residual",
    [
        ("softmax", "standard"),
        ("softmax-rotary", "standard"),
        ("bilateral", "generalized"),
        ("twicing", "standard"),
        ("twicing-bilateral", "generalized"),
    ],
)
def test_overfits_fixed_batch(kind, residual):
    torch.manual_seed(1)
    model = build_model(tiny(kind, residual, "sdpa", vocab_size=32, seq_len=24))
    idx = torch.randint(0, 32, (4, 24))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = model(x, y).item()
    for _ in range(150):
        opt.zero_grad()
        loss = model(x, y)
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.05, (first, loss.item())

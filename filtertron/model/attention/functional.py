"""The attention operator: validate once, resolve the implementation, dispatch.

    attention(q, k, v, kind, impl, causal, base, h_y, h_p, content) -> (B, H, T, Dv)

kind "softmax" (optional ALiBi), "bilateral" (BSA) or "twicing" (2 A V - A A V over the
``base`` kernel); the math is in :mod:`filtertron.model.attention.reference`. Implementations
live in one module each with the same three functions (``softmax``, ``bilateral``,
``twicing``): ``reference`` (materialised, defines correctness), ``sdpa`` (fused SDPA plus a
tiled engine; CPU and GPU), ``flex`` (FlexAttention), ``triton`` (not built yet).

An explicit ``impl`` is used as asked or fails with a reason and the impls that can do it; it
never falls back. ``impl="auto"`` picks per (device, kind, requires_grad, dropout) once and
logs the choice on the "filtertron" logger.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import Tensor

KINDS = ("softmax", "bilateral", "twicing")
BASES = ("softmax", "bilateral")
CONTENTS = ("dot", "gaussian")
IMPLS = ("reference", "sdpa", "flex", "triton")

# (device type, kind) -> impl for "auto", from bench/attention.py on CPU (sdpa is fastest with
# grads; compiled flex is faster for bilateral inference but compiles 10-60 s per new T, so
# it is an explicit choice). CUDA entries follow FlexAttention's fused backward; not measured.
_AUTO_TABLE = {
    ("cpu", "softmax"): "sdpa",
    ("cpu", "bilateral"): "sdpa",
    ("cpu", "twicing"): "sdpa",
    ("cuda", "softmax"): "sdpa",
    ("cuda", "bilateral"): "flex",
    ("cuda", "twicing"): "flex",
}
_KIND_ARGS = {
    "softmax": ("causal", "scale", "alibi_slopes", "dropout_p"),
    "bilateral": ("h_y", "h_p", "content", "causal", "dropout_p"),
    "twicing": ("base", "causal", "h_y", "h_p", "content", "scale", "alibi_slopes"),
}
_resolved: dict[tuple, str] = {}
log = logging.getLogger("filtertron")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a tensor of shape (B, H, T, D), got {got}")
    B, H, T, D = q.shape
    if not q.is_floating_point():
        raise ValueError(f"q: expected a floating-point (B, H, T, D) tensor, got {q.dtype}")
    if k.shape != q.shape:
        raise ValueError(
            f"k: expected shape (B, H, T, D) = {tuple(q.shape)} like q, got {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v: expected shape (B, H, T, Dv) = ({B}, {H}, {T}, Dv) like q, got {tuple(v.shape)}"
        )
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name}: expected dtype {q.dtype} on {q.device} like q, "
                f"got {t.dtype} on {t.device}"
            )


def _check_head_tensor(name: str, t: Tensor | None, q: Tensor, positive: bool) -> None:
    if t is None:
        return
    H = q.shape[1]
    if not isinstance(t, Tensor) or t.shape != (H,) or not t.is_floating_point():
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"{name}: expected a floating-point tensor of shape (H,) = ({H},), got {got}"
        )
    if t.device != q.device:
        raise ValueError(f"{name}: expected a ({H},) tensor on {q.device} like q, got {t.device}")
    # A value check syncs a GPU; on CPU it is free and catches a log/exp mix-up early.
    if positive and t.device.type == "cpu" and not bool((t.detach() > 0).all()):
        raise ValueError(f"{name}: expected a positive ({H},) tensor, got {t.detach().tolist()}")


def _validate(
    q, k, v, kind, impl, causal, base, h_y, h_p, content, scale, alibi_slopes, dropout_p
) -> None:
    _one_of("kind", kind, KINDS)
    _one_of("impl", impl, (*IMPLS, "auto"))
    _one_of("base", base, BASES)
    _one_of("content", content, CONTENTS)
    _check_qkv(q, k, v)
    if not isinstance(causal, bool):
        raise ValueError(f"causal: expected a bool, got {causal!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected 0 <= dropout_p < 1, got {dropout_p}")
    if kind == "twicing" and dropout_p > 0.0:
        raise ValueError("dropout_p: twicing needs 0 (both passes must use the same kernel)")
    kernel = base if kind == "twicing" else kind
    if kernel == "bilateral":
        if h_p is None:
            raise ValueError(
                f"h_p: the bilateral kernel needs a tensor of shape (H,) = "
                f"({q.shape[1]},), got None"
            )
        for name, value in (("alibi_slopes", alibi_slopes), ("scale", scale)):
            if value is not None:
                raise ValueError(
                    f"{name}: not used by the bilateral kernel (h_y sets its "
                    "content scale, h_p its positions); pass None"
                )
    else:
        for name, value in (("h_y", h_y), ("h_p", h_p)):
            if value is not None:
                raise ValueError(f"{name}: belongs to the bilateral kernel, not {kernel!r}")
        if content != "dot":
            raise ValueError(f"content: {content!r} is a bilateral option; softmax uses 'dot'")
    _check_head_tensor("h_y", h_y, q, positive=True)
    _check_head_tensor("h_p", h_p, q, positive=True)
    _check_head_tensor("alibi_slopes", alibi_slopes, q, positive=False)


def resolve_impl(
    impl: str, device: torch.device, kind: str, base: str, requires_grad: bool, dropout: bool
) -> str:
    """The implementation that serves a request; ``"auto"`` is resolved once per key and logged.

    Args:
        impl: an entry of :data:`IMPLS` or "auto".
        device: device of q.
        kind: "softmax", "bilateral" or "twicing".
        base: the twicing base kernel.
        requires_grad: whether a backward pass will be needed.
        dropout: whether attention dropout is on.

    Returns:
        An entry of :data:`IMPLS`.
    """
    if impl != "auto":
        return impl
    key = (device.type, kind, base if kind == "twicing" else None, requires_grad, dropout)
    if key not in _resolved:
        choice = _AUTO_TABLE.get((device.type, kind), "sdpa")
        if kind == "twicing" and base == "softmax" and choice == "flex":
            choice = "sdpa"  # two fused SDPA passes
        if dropout and kind == "bilateral":
            choice = "reference"  # the only bilateral impl with attention dropout
        _resolved[key] = choice
        log.info(
            "attention impl='auto' -> %r for device=%s kind=%s base=%s requires_grad=%s dropout=%s",
            choice,
            *key[:2],
            base,
            requires_grad,
            dropout,
        )
    return _resolved[key]


def _impl_module(name: str):
    if name == "triton":
        raise NotImplementedError(
            "triton kernels are not built yet; use impl='sdpa' (CPU and GPU), 'flex' or 'reference'"
        )
    return importlib.import_module(f"filtertron.model.attention.{name}")


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kind: str = "softmax",
    impl: str = "auto",
    causal: bool = True,
    base: str = "softmax",
    h_y: Tensor | None = None,
    h_p: Tensor | None = None,
    content: str = "dot",
    *,
    scale: float | None = None,
    alibi_slopes: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention of one kind through one implementation.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H, T, D) keys.
        v: (B, H, T, Dv) values.
        kind: "softmax", "bilateral" or "twicing".
        impl: "reference", "sdpa", "flex", "triton" or "auto".
        causal: attend to j <= i only.
        base: kernel that twicing applies twice, "softmax" or "bilateral".
        h_y: (H,) positive content bandwidths of the bilateral kernel; None: sqrt(D) for
            "dot", D^(1/4) for "gaussian".
        h_p: (H,) positive spatial bandwidths of the bilateral kernel (required there).
        content: bilateral content kernel, "dot" or "gaussian".
        scale: softmax logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes m_h for the softmax kernel.
        dropout_p: attention dropout (softmax and bilateral; twicing needs 0).

    Returns:
        (B, H, T, Dv), dtype and device of q.

    Raises:
        ValueError: a bad argument; names it and the expected shape or values.
        NotImplementedError: ``impl`` cannot serve this request; says why and which impl can.
    """
    _validate(q, k, v, kind, impl, causal, base, h_y, h_p, content, scale, alibi_slopes, dropout_p)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, h_y, h_p, alibi_slopes)
    )
    name = resolve_impl(impl, q.device, kind, base, grad, dropout_p > 0.0)
    args = {
        "causal": causal,
        "base": base,
        "h_y": h_y,
        "h_p": h_p,
        "content": content,
        "scale": scale,
        "alibi_slopes": alibi_slopes,
        "dropout_p": dropout_p,
    }
    fn = getattr(_impl_module(name), kind)
    return fn(q, k, v, **{key: args[key] for key in _KIND_ARGS[kind]})

"""The attention operator: validate once, describe the kernel once, dispatch to an impl.

    attention(q, k, v, kind, impl, causal, base, h_y, h_p, content) -> (B, H, T, Dv)

kind "softmax" (optional ALiBi), "bilateral" (BSA) or "twicing" (2 A V - A A V over the
``base`` kernel); the math is in :mod:`filtertron.model.attention.reference`. The arguments
are checked here, turned into one :class:`~filtertron.kernels.description.Kernel` (content
scale and key bias, position function and coefficient, band) and handed to the impl registry
(:mod:`filtertron.kernels.registry`): "reference" (materialised), "sdpa" (PyTorch SDPA for
plain softmax, the tiled engine for the rest), "tiled" (the tiled engine), "flex"
(FlexAttention), "triton" (fused Triton kernels, CUDA).

An explicit ``impl`` is used as asked or fails with a reason and the impls that can do it; it
never falls back. ``impl="auto"`` picks per (device, kind) from one table and logs the choice
on the "filtertron" logger.
"""

from __future__ import annotations

import torch
from torch import Tensor

from filtertron.kernels import registry
from filtertron.kernels.description import DEFAULT_BAND_EPS, describe

KINDS = ("softmax", "bilateral", "twicing")
BASES = ("softmax", "bilateral")
CONTENTS = ("dot", "gaussian")
IMPLS = tuple(registry.IMPLS)


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
    if positive and t.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool((t.detach() > 0).all()):
            return
        raise ValueError(f"{name}: expected a positive ({H},) tensor, got {t.detach().tolist()}")


def _validate(
    q, k, v, kind, impl, causal, base, h_y, h_p, content, scale, alibi_slopes, dropout_p, band_eps
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
    if band_eps is not None and not 0.0 < band_eps < 1.0:
        raise ValueError(f"band_eps: expected None or 0 < band_eps < 1, got {band_eps}")
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
    """The implementation that would serve a request of this kind (``auto`` as it resolves).

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
    q = torch.zeros(1, 1, 8, 64, device=device, requires_grad=requires_grad)
    kernel = base if kind == "twicing" else kind
    h_p = torch.ones(1, device=device) if kernel == "bilateral" else None
    with torch.enable_grad():
        desc = describe(q, q, q, kind, True, base, None, h_p, "dot", None, None, 0.1 * dropout)
        return registry.resolve("auto", desc)


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
    band_eps: float | None = DEFAULT_BAND_EPS,
) -> Tensor:
    """Attention of one kind through one implementation.

    Args:
        q: (B, H, T, D) queries.
        k: (B, H, T, D) keys.
        v: (B, H, T, Dv) values.
        kind: "softmax", "bilateral" or "twicing".
        impl: "reference", "sdpa", "tiled", "flex", "triton" or "auto".
        causal: attend to j <= i only.
        base: kernel that twicing applies twice, "softmax" or "bilateral".
        h_y: (H,) positive content bandwidths of the bilateral kernel; None: sqrt(D) for
            "dot", D^(1/4) for "gaussian".
        h_p: (H,) positive spatial bandwidths of the bilateral kernel (required there).
        content: bilateral content kernel, "dot" or "gaussian".
        scale: softmax logit scale, default 1/sqrt(D).
        alibi_slopes: (H,) ALiBi slopes m_h for the softmax kernel.
        dropout_p: attention dropout (softmax and bilateral; twicing needs 0).
        band_eps: bilateral and ALiBi heads drop keys whose position weight is below
            ``band_eps`` relative to the diagonal, |i - j| > ceil(sqrt(2 ln(1/eps)) h_p) or
            ceil(ln(1/eps) / m_h) (default e^-30); None keeps every key. The band is the only
            approximation of any impl (see :mod:`filtertron.kernels.description`).

    Returns:
        (B, H, T, Dv), dtype and device of q.

    Raises:
        ValueError: a bad argument; names it and the expected shape or values.
        NotImplementedError: ``impl`` cannot serve this request; says why and which impl can.
    """
    _validate(
        q, k, v, kind, impl, causal, base, h_y, h_p, content, scale, alibi_slopes, dropout_p,
        band_eps,
    )  # fmt: skip
    kernel = describe(
        q, k, v, kind, causal, base, h_y, h_p, content, scale, alibi_slopes, dropout_p, band_eps
    )
    return registry.attend(kernel, impl)

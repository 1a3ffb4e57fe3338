"""The impl registry: which implementation serves a kernel description, and ``auto``.

    IMPLS = {"reference", "sdpa", "tiled", "flex", "triton"}  (a dict of name -> Impl)

Each :class:`Impl` has ``attend(kernel) -> out`` and ``unsupported(kernel) -> reason | None``;
optional backends are imported when first used (Triton only on a request for it). An explicit
impl serves the kernel or raises NotImplementedError with its reason and the impls that can;
it never falls back. ``auto`` takes the first impl of :data:`AUTO` for (device type, kernel
family) that serves the kernel (e.g. the one with dropout, or one that is installed), and logs
its choice once per (device, family, dropout, grad) on the "filtertron" logger (again only
if the choice changes, e.g. for a head dim an impl cannot take).

What each name runs: "reference" the materialised kernel; "tiled" the tiled PyTorch engine
(a custom op); "sdpa" PyTorch SDPA for plain softmax and the tiled engine for the rest (see
:mod:`filtertron.kernels.sdpa`); "flex" FlexAttention; "triton" filtertron's fused Triton
kernels (CUDA; on CPU only under TRITON_INTERPRET=1, for tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from filtertron.kernels import materialised
from filtertron.kernels.description import Kernel

log = logging.getLogger("filtertron")


class Impl:
    """One implementation: ``load()`` returns its module, which has attend and unsupported."""

    def __init__(self, name: str, load: Callable[[], object]) -> None:
        self.name, self._load = name, load
        self._module = self._error = None

    def module(self):
        """The impl's module, imported on first use (an ImportError is kept, not retried)."""
        if self._module is None and self._error is None:
            try:
                self._module = self._load()
            except ImportError as err:
                self._error = err
        if self._error is not None:
            raise ImportError(str(self._error))
        return self._module

    def unsupported(self, kernel: Kernel) -> str | None:
        """Why this impl cannot serve ``kernel``, or None."""
        try:
            module = self.module()
        except ImportError as err:
            return f"impl={self.name!r} is not available here ({err})"
        return module.unsupported(kernel)

    def attend(self, kernel: Kernel) -> Tensor:
        """out (B, H, T, Dv) of ``kernel``."""
        return self.module().attend(kernel)


def _sdpa():
    from filtertron.kernels import sdpa

    return sdpa


def _tiled():
    from filtertron.kernels import tiled

    return tiled


def _flex():
    from filtertron.kernels import flex

    return flex


def _triton():
    from filtertron.kernels import triton_op

    return triton_op


IMPLS: dict[str, Impl] = {
    "reference": Impl("reference", lambda: materialised),
    "sdpa": Impl("sdpa", _sdpa),
    "tiled": Impl("tiled", _tiled),
    "flex": Impl("flex", _flex),
    "triton": Impl("triton", _triton),
}

# (device type, kernel family) -> impls to try, best first; auto takes the first that serves.
# CPU, from bench/attention.py: SDPA for plain softmax, the tiled engine for the rest (with
# grads and without; compiled flex is faster for bilateral inference but compiles 10-60 s per
# new T, so it is an explicit choice). CUDA: SDPA's flash backend for plain softmax, the Triton
# kernels for the rest -- not measured here (no GPU); the GPU check measures them.
# "reference" ends every row: the one impl with bilateral dropout.
AUTO: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "softmax"): ("sdpa", "reference"),
    ("cpu", "alibi"): ("sdpa", "reference"),
    ("cpu", "bilateral"): ("sdpa", "reference"),
    ("cpu", "twicing"): ("sdpa", "reference"),
    ("cuda", "softmax"): ("sdpa", "reference"),
    ("cuda", "alibi"): ("triton", "flex", "sdpa", "reference"),
    ("cuda", "bilateral"): ("triton", "flex", "sdpa", "reference"),
    ("cuda", "twicing"): ("triton", "sdpa", "reference"),
}
_DEFAULT = ("sdpa", "reference")
_logged: dict[tuple, str] = {}  # auto's last logged choice per key


def resolve(impl: str, kernel: Kernel) -> str:
    """The impl that serves ``kernel``: ``impl`` itself, or the ``auto`` choice (logged once).

    Args:
        impl: a key of :data:`IMPLS` or "auto".
        kernel: the call's description.

    Returns:
        A key of :data:`IMPLS`.

    Raises:
        NotImplementedError: an explicit ``impl`` cannot serve the kernel (says why, and
            which impls can).
    """
    if impl != "auto":
        reason = IMPLS[impl].unsupported(kernel)
        if reason is not None:
            can = [n for n, i in IMPLS.items() if n != impl and i.unsupported(kernel) is None]
            raise NotImplementedError(f"{reason} (impls that can: {', '.join(can)})")
        return impl
    device = kernel.q.device.type
    rows = AUTO.get((device, kernel.family), _DEFAULT)
    choice = next(n for n in rows if IMPLS[n].unsupported(kernel) is None)
    key = (device, kernel.family, kernel.dropout_p > 0.0, kernel.needs_grad)
    if _logged.get(key) != choice and not torch.compiler.is_compiling():
        _logged[key] = choice  # (dynamo would break the graph on a log call)
        log.info(
            "attention impl='auto' -> %r for device=%s kind=%s dropout=%s requires_grad=%s",
            choice,
            *key,
        )
    return choice


def attend(kernel: Kernel, impl: str = "auto") -> Tensor:
    """Run ``kernel`` on ``impl`` (or the ``auto`` choice), (B, H, T, Dv)."""
    return IMPLS[resolve(impl, kernel)].attend(kernel)

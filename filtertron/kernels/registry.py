"""The impl registry: which implementation serves a kernel description, and ``auto``.

    IMPLS = {"reference", "sdpa", "tiled", "flex", "triton"}  (a dict of name -> Impl)

Each :class:`Impl` has ``attend(kernel) -> out`` and ``unsupported(kernel) -> reason | None``;
optional backends are imported when first used (Triton only on a request for it). An explicit
impl serves the kernel or raises NotImplementedError with its reason and the impls that can;
it never falls back. ``auto`` picks only what has run correctly on the device type: the
first impl of its :data:`VERIFIED` row (:mod:`filtertron.kernels.verified`, one table of
(device type, kernel family) -> impls with the date and run that verified each) that serves
the kernel. It logs its choice once per (device, family, dropout, grad) on the "filtertron"
logger (the log file), and when it passes over the row's first impl (not importable, no
dropout, a head dim or dtype it cannot take, a device type with no verified impl) it says so
once on the console (a WARNING): a fall to a materialised O(T^2) path is a cliff to see.

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
from filtertron.kernels.verified import VERIFIED

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

_noted: set[tuple] = set()  # (level, key) already logged


@torch.compiler.assume_constant_result
def _note(level: int, key: tuple, message: str) -> bool:
    """Log ``message`` on the "filtertron" logger once per ``key``; True if it did.

    assume_constant_result makes dynamo run it while tracing (no graph break, nothing in the
    graph, no guard on :data:`_noted`), so a compiled model reports auto's choice too.
    """
    if (level, key) in _noted:
        return False
    _noted.add((level, key))
    log.log(level, message)
    return True


def _materialises(choice: str, kernel: Kernel) -> bool:
    """Whether ``choice`` builds (H or B H, T, T) scores for this kernel."""
    position_mask = choice == "sdpa" and kernel.dropout_p > 0.0 and kernel.position is not None
    return choice == "reference" or position_mask


def _auto(kernel: Kernel) -> str:
    """auto's choice for ``kernel`` (see the module docstring); warns once when it falls."""
    device, family = kernel.q.device.type, kernel.family
    row = [v.impl for v in VERIFIED.get((device, family), ())]
    reason = f"no impl is verified on device type {device!r}"
    choice = None
    for name in row:
        why = IMPLS[name].unsupported(kernel)
        if why is None:
            choice = name
            break
        if name == row[0]:
            reason = why
    if choice is None:  # no row, or nothing in it serves: plain PyTorch
        choice = "reference"
    if not row or choice != row[0]:
        first = f"{row[0]!r} cannot serve this call ({reason})" if row else reason
        cliff = " (materialised: T x T scores, O(T^2) memory, much slower)"
        _note(
            logging.WARNING,
            (device, family, choice),
            f"attention impl='auto' for {family} on {device}: {first}; using {choice!r}"
            + (cliff if _materialises(choice, kernel) else ""),
        )
    return choice


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
    choice = _auto(kernel)
    key = (kernel.q.device.type, kernel.family, kernel.dropout_p > 0.0, kernel.needs_grad)
    _note(
        logging.INFO,
        (*key, choice),
        "attention impl='auto' -> {!r} for device={} kind={} dropout={} requires_grad={}".format(
            choice, *key
        ),
    )
    return choice


def attend(kernel: Kernel, impl: str = "auto") -> Tensor:
    """Run ``kernel`` on ``impl`` (or the ``auto`` choice), (B, H, T, Dv)."""
    return IMPLS[resolve(impl, kernel)].attend(kernel)

"""Make megatron-core's tensor-parallel helpers run on CPU (gloo) exactly as they run on CUDA.

megatron-core 0.16.1's column/row-parallel linears, vocab-parallel embedding and cross-entropy
are device-agnostic, but a few helpers they call name CUDA directly (seen on CPU-only torch
2.13, see shared/notes/cpu-stack.md):

- the output buffers of the sequence-parallel all-gather / reduce-scatter and of the
  last-dimension gather are allocated with ``device=torch.cuda.current_device()``
  (``tensor_parallel.mappings``, the backward of ``tensor_parallel.layers``' linear, and
  ``utils.GlobalMemoryBuffer``, the all-gather buffer of sequence parallelism);
- the RNG tracker and ``model_parallel_cuda_manual_seed`` (``tensor_parallel.random``) save,
  seed and restore the CUDA generator.

:func:`install` redirects those calls *inside those four megatron modules only* by giving each
of them a ``torch`` whose ``cuda.current_device()`` is the CPU device and whose CUDA generator is
the CPU default generator; everything else is the real ``torch``. No megatron logic is copied,
so the collectives and their autograd pairs stay megatron's own. On a machine with CUDA,
:func:`install` does nothing, so the same filtertron code runs unpatched on NCCL.

On CPU the "CUDA" generator *is* the CPU generator, so in ``tensor_parallel.random`` the
separate CPU-state save/restore (and the tracker's "CPU RNG state changed inside a fork"
warning) is made a no-op: restoring the "CUDA" state already restores the CPU one.

Not patched, because filtertron uses DeepSpeed's instead: megatron's pipeline schedules and
optimizer.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import torch

_PATCHED_MODULES = (
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.utils",
)
_RANDOM = "megatron.core.tensor_parallel.random"
_installed = False
# (module, attribute) pairs install() replaces; tests/parallel/test_deepspeed_workarounds.py
# fails if one disappears in another megatron-core version (the patch would silently miss).
RELIES_ON: tuple[tuple[str, str], ...] = (
    *((name, "torch") for name in _PATCHED_MODULES),
    (_RANDOM, "torch"),
    (_RANDOM, "_get_cuda_rng_state"),
    (_RANDOM, "_set_cuda_rng_state"),
    (_RANDOM, "get_cuda_rng_tracker"),
    ("megatron.core.tensor_parallel", "model_parallel_cuda_manual_seed"),
    ("megatron.core.parallel_state", "get_global_memory_buffer"),
)


class _CudaOnCpu:
    """Stands in for ``torch.cuda``: the current device is the CPU, the generator the CPU's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def get_rng_state(device: Any = "cuda") -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = "cuda") -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)


class _TorchOnCpu:
    """Stands in for the ``torch`` module inside one megatron module."""

    def __init__(self, **overrides: Any) -> None:
        self.cuda = _CudaOnCpu()
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


_CPU_STATE_PLACEHOLDER = torch.zeros(1, dtype=torch.uint8)


def _get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def needed() -> bool:
    """True when the patch applies: this process has no CUDA device."""
    return not torch.cuda.is_available()


def install() -> bool:
    """Redirect megatron-core's CUDA-only helpers to the CPU; idempotent.

    Call before building megatron layers (``filtertron.parallel.state.initialize`` does).

    Returns:
        True if the patch is (now) active, False on a machine with CUDA (nothing changed).
    """
    global _installed
    if not needed():
        return False
    if _installed:
        return True
    for name in _PATCHED_MODULES:
        importlib.import_module(name).torch = _TorchOnCpu()
    random = importlib.import_module(_RANDOM)
    random.torch = _TorchOnCpu(
        get_rng_state=lambda: _CPU_STATE_PLACEHOLDER.clone(),
        set_rng_state=lambda state: None,
    )
    random._get_cuda_rng_state = _get_rng_state
    random._set_cuda_rng_state = _set_rng_state
    _installed = True
    return True


def status() -> SimpleNamespace:
    """What :func:`install` changed, for logs and tests."""
    return SimpleNamespace(
        active=_installed, modules=(*_PATCHED_MODULES, _RANDOM) if _installed else ()
    )

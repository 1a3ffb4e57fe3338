"""Every collective filtertron calls, with tensors on the device the backend needs.

NCCL reduces only CUDA tensors and gloo (in practice) only CPU ones, so a collective on a
tensor built without a device (``torch.tensor([1.0])``) is right on our CPU machines and an
error on a GPU cluster. Each function here moves its input to the backend's device
(:func:`device_for`: the current CUDA device for NCCL, the CPU for gloo), runs the collective
there and returns the result on the input's own device; a tensor already on the right device
is not copied (beyond the clone that keeps the caller's tensor unchanged). Without an
initialised process group each function is the identity.

Nothing else in the package calls a ``torch.distributed`` collective
(tests/parallel/test_collectives.py fails if something does); megatron-core and DeepSpeed call
their own, on tensors that already live on the model's device. The ``dist.*`` functions are
looked up at call time, so bench/parallel.py's byte counter sees these calls too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}
# Backends that reduce device tensors only: backend name -> torch device type.
_DEVICE_BACKENDS = {"nccl": "cuda", "xccl": "xpu", "hccl": "hpu"}


def active(group: Any = None) -> bool:
    """True when a process group is initialised (also with one process: a world of one runs
    the real collective, so a single-GPU run exercises the NCCL path)."""
    return dist.is_available() and dist.is_initialized()


def device_for(group: Any = None) -> torch.device:
    """The device whose tensors the group's backend reduces.

    ``dist.get_backend`` names one backend ("nccl", "gloo") or, for a group with several,
    a "cpu:gloo,cuda:nccl" list; a device backend anywhere in it wins, since it is the one
    that cannot take CPU tensors.
    """
    backend = str(dist.get_backend(group)).lower()
    for name, device_type in _DEVICE_BACKENDS.items():
        if name in backend:
            module = getattr(torch, device_type)
            return torch.device(device_type, module.current_device())
    return torch.device("cpu")


def _op(op: str):
    if op not in _OPS:
        raise ValueError(f"op: expected one of {sorted(_OPS)}, got {op!r}")
    return getattr(dist.ReduceOp, _OPS[op])


def _staged(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """A private copy of ``tensor`` on the group's device, contiguous."""
    device = device_for(group)
    if tensor.device == device:
        return tensor.detach().clone(memory_format=torch.contiguous_format)
    return tensor.detach().to(device, copy=True).contiguous()


def all_reduce(tensor: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """The elementwise reduction of ``tensor`` over ``group``, on ``tensor``'s device.

    Args:
        tensor: Any device and dtype the backend supports (NCCL and gloo: float64 too).
        op: "sum", "min" or "max".
        group: A process group, or None for the default one.

    Returns:
        A new tensor (the input is not modified); no gradient flows through it.
    """
    if not active(group):
        return tensor.detach().clone()
    staged = _staged(tensor, group)
    dist.all_reduce(staged, op=_op(op), group=group)
    return staged.to(tensor.device)


def all_gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on all ranks), in rank order, on its device."""
    if not active(group):
        return [tensor.detach().clone()]
    staged = _staged(tensor, group)
    parts = [torch.empty_like(staged) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, staged, group=group)
    return [p.to(tensor.device) for p in parts]


def all_reduce_floats(
    values: list[float], op: str = "sum", group: Any = None, dtype: torch.dtype = torch.float64
) -> list[float]:
    """Reduce a list of Python numbers over ``group`` (in ``dtype``, float64 by default)."""
    if not active(group):
        return list(values)
    t = torch.tensor(values, dtype=dtype, device=device_for(group))
    dist.all_reduce(t, op=_op(op), group=group)
    return t.tolist()


def all_true(flag: bool, group: Any = None) -> bool:
    """True if ``flag`` is true on every rank of ``group``."""
    return all_reduce_floats([1.0 if flag else 0.0], "min", group)[0] == 1.0


def mean(value: torch.Tensor | float, group: Any = None) -> float:
    """The mean over ``group``'s ranks of one number (a 0-dim tensor or a float)."""
    v = float(value.detach().float()) if isinstance(value, torch.Tensor) else float(value)
    if not active(group):
        return v
    return all_reduce_floats([v], "sum", group)[0] / dist.get_world_size(group)


def barrier(group: Any = None) -> None:
    """Wait for every rank of ``group``.

    Under NCCL the barrier is an all-reduce on a device tensor; without ``device_ids`` torch
    guesses the device from the rank, which is wrong whenever ranks do not map one-to-one
    onto local devices, so the current device is named.
    """
    if not active(group):
        return
    device = device_for(group)
    if device.type == "cuda":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank of ``group``."""
    if not active(group):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group, device=device_for(group))
    return box[0]

"""Attention kernels behind one seam: a kernel description, an impl registry, custom ops.

- :mod:`~filtertron.kernels.description`: :class:`Kernel`, built once per call by
  :func:`describe` (content scale and key bias, position function and coefficient, band);
- :mod:`~filtertron.kernels.registry`: ``IMPLS`` (reference, sdpa, tiled, flex, triton),
  ``auto``, :func:`attend`; :mod:`~filtertron.kernels.verified`: ``VERIFIED``, the one table
  of what ``auto`` may pick per device type, with the run that verified each impl;
- :mod:`~filtertron.kernels.ops`: the custom-op pair (forward, backward with fake impls and
  registered autograd) that the tiled engine and the Triton kernels share;
- impls: :mod:`materialised` (reference), :mod:`sdpa`, :mod:`tiled` (+ :mod:`tiles`),
  :mod:`flex` (+ :mod:`mods`), :mod:`triton_op` (+ :mod:`triton_kernels`, imported lazily).

The public function is :func:`filtertron.attention`, which validates its arguments first.
"""

from filtertron.kernels.description import DEFAULT_BAND_EPS, Kernel, describe
from filtertron.kernels.registry import IMPLS, attend, resolve
from filtertron.kernels.verified import VERIFIED

__all__ = ["DEFAULT_BAND_EPS", "IMPLS", "VERIFIED", "Kernel", "attend", "describe", "resolve"]

"""Attention kernels behind one seam: a kernel description, an impl registry, custom ops.

- :mod:`~filtertron.kernels.description`: :class:`Kernel`, built once per call by
  :func:`describe` (content scale and key bias, position function and coefficient, band);
- :mod:`~filtertron.kernels.registry`: ``IMPLS`` (reference, sdpa, tiled, flex, triton), the
  ``auto`` table, :func:`attend`;
- :mod:`~filtertron.kernels.ops`: the custom-op pair (forward, backward with fake impls and
  registered autograd) that the tiled engine and the Triton kernels share;
- impls: :mod:`materialised` (reference), :mod:`sdpa`, :mod:`tiled` (+ :mod:`tiles`),
  :mod:`flex` (+ :mod:`mods`), :mod:`triton_op` (+ :mod:`triton_kernels`, imported lazily).

The public function is :func:`filtertron.attention`, which validates its arguments first.
"""

from filtertron.kernels.description import DEFAULT_BAND_EPS, Kernel, describe
from filtertron.kernels.registry import AUTO, IMPLS, attend, resolve

__all__ = ["AUTO", "DEFAULT_BAND_EPS", "IMPLS", "Kernel", "attend", "describe", "resolve"]

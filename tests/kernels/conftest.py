"""Kernel tests: without a GPU the Triton kernels run in Triton's interpreter.

TRITON_INTERPRET is read when a kernel is defined, so it is set here, at collection, before
any test imports :mod:`filtertron.kernels.triton_op`. On a CUDA machine it is left alone:
the kernels compile for the GPU and the interpreter tests skip (test_gpu.py runs instead).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

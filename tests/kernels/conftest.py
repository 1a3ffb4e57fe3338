"""Kernel tests: without a GPU the Triton kernels run in Triton's interpreter.

TRITON_INTERPRET is set in tests/conftest.py, before anything imports triton (torch._dynamo
does): set later, triton.language's helpers are already compiled-mode functions and every
interpreted kernel fails ("Cannot call @triton.jit'd outside of the scope of a kernel").
"""

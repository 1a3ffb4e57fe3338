"""A fake GPU for running tools/gpu/check.sh on a CPU (tests/test_gpu_check.py).

With ``FILTERTRON_FAKE_GPU=1`` in the environment and this folder on PYTHONPATH, ``torch.cuda``
answers as if one GPU were present: ``is_available``, ``device_count``, ``get_device_name``,
``get_device_capability``, ``get_device_properties`` and ``torch.cuda.nccl.version``. Nothing
can run on it: the commands that need a GPU are stubbed by ``tests/fake_gpu/stub.py``. torch
is patched right after it is imported (an import hook), so processes that never import torch
pay nothing.
"""

import importlib.abc
import importlib.util
import os
import sys
import types

NAME = "Fake GPU (CPU shim)"


def _patch(torch) -> None:
    import torch.cuda.nccl as nccl

    props = types.SimpleNamespace(
        name=NAME, total_memory=141 * 2**30, major=9, minor=0, multi_processor_count=132
    )
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_name = lambda device=None: NAME
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_device_properties = lambda device=None: props
    nccl.version = lambda: (0, 0, 0)


class _PatchTorch(importlib.abc.MetaPathFinder):
    """Finds torch the usual way, then patches it once it has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FILTERTRON_FAKE_GPU") == "1":
    sys.meta_path.insert(0, _PatchTorch())

"""Shared test set-up: persistent compile caches, deterministic seeds, small thread counts.

No test may pass on dynamo's eager fallback: past a recompile limit dynamo raises
(``fail_on_recompile_limit_hit``), instead of running the frame uncompiled (for FlexAttention
that is the unfused, materialising path). Dynamo's code caches are cleared between test
modules, so a module's compiles count against the limit and nobody else's do.
"""

import glob
import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".cache"
for var, sub in (
    ("TORCH_EXTENSIONS_DIR", "torch_extensions"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("TRITON_CACHE_DIR", "triton"),
    ("MPLCONFIGDIR", "matplotlib"),
):
    os.environ.setdefault(var, str(_CACHE / sub))

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU the Triton kernels run in Triton's interpreter. TRITON_INTERPRET is read when
# triton defines a kernel, including triton.language's own helpers at import, and
# torch._dynamo imports triton (just below): so it is set here, first. On a CUDA machine it
# is left alone: the kernels compile for the GPU (tests/kernels/test_gpu.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch._dynamo.config.fail_on_recompile_limit_hit = True


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module", autouse=True)
def _fresh_dynamo_caches():
    """Each test module starts with empty dynamo caches (the on-disk inductor cache stays)."""
    torch._dynamo.reset()
    yield


@pytest.fixture(scope="session", autouse=True)
def _clean_shm():
    """DeepSpeed's CPU all-reduce leaves 66 MB /dev/shm buffers behind; remove ours."""
    before = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))
    yield
    for f in set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*")) - before:
        try:
            os.remove(f)
        except OSError:
            pass


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)

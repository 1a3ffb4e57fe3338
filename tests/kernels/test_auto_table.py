"""``impl="auto"`` picks only what the VERIFIED table records for the device type, and says on
the console, once, when it passes over a row's first impl.

CUDA kernels are described on fake tensors (torch's FakeTensorMode: tensors with device
"cuda" and no data), so auto's CUDA choices are checked without a GPU; nothing is run there.
"""

from __future__ import annotations

import datetime
import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from filtertron.kernels import IMPLS, describe, registry
from filtertron.kernels.verified import H200_2026_12_04, VERIFIED
from filtertron.logs import ConsoleFilter

FAMILIES = ("softmax", "alibi", "bilateral", "twicing")
# family -> describe() arguments (built inside the fake mode, on the kernel's device)
ARGS = {
    "softmax": lambda d: {},
    "alibi": lambda d: {"alibi_slopes": torch.tensor([0.5, 0.25], device=d)},
    "bilateral": lambda d: {"kind": "bilateral", "h_p": torch.tensor([2.0, 8.0], device=d)},
    "twicing": lambda d: {
        "kind": "twicing",
        "base": "bilateral",
        "h_p": torch.tensor([2.0, 8.0], device=d),
    },
}


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    monkeypatch.setattr(registry, "_noted", set())


def cuda_kernel(family, dtype=torch.bfloat16, D=64, grad=True, dropout=0.0):
    """A fake CUDA kernel description of ``family`` (no GPU needed)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(2, 2, 256, D, device="cuda", dtype=dtype, requires_grad=grad)
        args = ARGS[family]("cuda")
        kernel = describe(q, q, q, dropout_p=dropout, **args)
        assert kernel.family == family and kernel.q.device.type == "cuda"
        return kernel


def test_every_entry_names_its_impl_check_date_and_evidence():
    assert {d for d, _ in VERIFIED} == {"cpu", "cuda"}
    for device in ("cpu", "cuda"):
        assert {f for d, f in VERIFIED if d == device} == set(FAMILIES)
    for (device, family), row in VERIFIED.items():
        names = [v.impl for v in row]
        assert names and names[-1] == "reference" and len(set(names)) == len(names)
        for v in row:
            assert v.impl in IMPLS, (device, family, v)
            datetime.date.fromisoformat(v.check.date)  # a real date
            assert len(v.check.run) > 20 and v.check.record and len(v.evidence) > 20
    cuda = {v.impl for (d, _), row in VERIFIED.items() if d == "cuda" for v in row}
    assert "triton" not in cuda  # no GPU check has shown the Triton kernels correct yet
    assert {v.check for (d, _), row in VERIFIED.items() if d == "cuda" for v in row} == {
        H200_2026_12_04
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("D", [64, 80, 128, 256])
def test_auto_on_cuda_never_picks_an_unverified_impl(family, grad, dtype, D):
    kernel = cuda_kernel(family, dtype, D, grad)
    choice = registry.resolve("auto", kernel)
    assert choice in [v.impl for v in VERIFIED[("cuda", family)]]
    # What the 2026-12-04 H200 run verified: SDPA for plain softmax, flex for the rest.
    assert choice == ("sdpa" if family == "softmax" else "flex")


def test_auto_on_cuda_with_dropout_falls_to_what_serves_it():
    assert registry.resolve("auto", cuda_kernel("softmax", dropout=0.1)) == "sdpa"
    assert registry.resolve("auto", cuda_kernel("alibi", dropout=0.1)) == "sdpa"  # (H, T, T) mask
    assert registry.resolve("auto", cuda_kernel("bilateral", dropout=0.1)) == "reference"


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "filtertron" and r.levelno == logging.WARNING]


def test_passing_over_the_first_choice_is_said_once_on_the_console(caplog):
    console = ConsoleFilter(rank=0, verbose=False)
    with caplog.at_level(logging.INFO, logger="filtertron"):
        for _ in range(3):
            assert registry.resolve("auto", cuda_kernel("bilateral", dropout=0.1)) == "reference"
        for _ in range(2):
            assert registry.resolve("auto", cuda_kernel("alibi", dropout=0.1)) == "sdpa"
        registry.resolve("auto", cuda_kernel("bilateral"))  # flex serves: nothing to say
    warned = _warnings(caplog)
    assert len(warned) == 2
    bilateral, alibi = (r.getMessage() for r in warned)
    assert "'flex' cannot serve" in bilateral and "no attention dropout" in bilateral
    assert "using 'reference'" in bilateral and "O(T^2)" in bilateral
    assert "alibi on cuda" in alibi and "using 'sdpa'" in alibi and "O(T^2)" in alibi
    assert all(console.filter(r) for r in warned)  # shown on the quiet console (rank 0)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert infos and not any(console.filter(r) for r in infos)  # the choice: log file only


def test_an_impl_that_cannot_load_is_passed_over_with_a_warning(monkeypatch, caplog):
    flex = IMPLS["flex"]
    monkeypatch.setattr(flex, "_module", None)
    monkeypatch.setattr(flex, "_error", ImportError("no flex_attention in this torch"))
    with caplog.at_level(logging.INFO, logger="filtertron"):
        assert registry.resolve("auto", cuda_kernel("twicing")) == "reference"
    (msg,) = (r.getMessage() for r in _warnings(caplog))
    assert "impl='flex' is not available here" in msg and "no flex_attention" in msg


def test_a_device_type_without_a_row_gets_the_reference_with_a_warning(caplog):
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(1, 2, 16, 8, device="meta")
        kernel = describe(q, q, q)
    with caplog.at_level(logging.INFO, logger="filtertron"):
        assert registry.resolve("auto", kernel) == "reference"
    (msg,) = (r.getMessage() for r in _warnings(caplog))
    assert "no impl is verified on device type 'meta'" in msg


def test_the_warning_comes_once_from_a_compiled_caller_too(caplog):
    """Under torch.compile the note runs while dynamo traces: once, and no graph break."""
    from filtertron.model.attention.functional import attention

    q, k, v = (torch.randn(1, 2, 24, 8) for _ in range(3))
    h_p = torch.tensor([2.0, 8.0])

    def f(q, k, v):
        return attention(q, k, v, "bilateral", h_p=h_p, dropout_p=0.1)  # sdpa refuses: reference

    compiled = torch.compile(f, backend="eager", fullgraph=True)  # a graph break would raise
    with caplog.at_level(logging.INFO, logger="filtertron"):
        for T in (24, 24, 20):
            compiled(q[..., :T, :], k[..., :T, :], v[..., :T, :])
    (msg,) = (r.getMessage() for r in _warnings(caplog))
    assert "bilateral on cpu" in msg and "using 'reference'" in msg

"""Collectives on the backend's device: the placement helper, real gloo collectives, and a
scan that fails if package code calls a torch.distributed collective directly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from filtertron.parallel import collectives
from tests.parallel.conftest import spawn, tiny_config

PACKAGE = Path(__file__).resolve().parents[2] / "filtertron"
ALLOWED = {PACKAGE / "parallel" / "collectives.py"}
COLLECTIVES = {
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "inference_all_reduce",
}
DIST_MODULES = {"torch.distributed", "deepspeed.comm"}


def direct_collectives(source: str) -> list[str]:
    """Calls of a torch.distributed / deepspeed.comm collective in ``source``."""
    tree = ast.parse(source)
    aliases: set[str] = set()  # names bound to a distributed module
    direct: set[str] = set()  # collective functions imported by name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in DIST_MODULES:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if f"{node.module}.{a.name}" in DIST_MODULES:
                    aliases.add(a.asname or a.name)
                elif node.module in DIST_MODULES and a.name in COLLECTIVES:
                    direct.add(a.asname or a.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in direct:
            found.append(f"line {node.lineno}: {f.id}")
        elif isinstance(f, ast.Attribute) and f.attr in COLLECTIVES:
            owner = ast.unparse(f.value)
            if owner in aliases or owner in DIST_MODULES:
                found.append(f"line {node.lineno}: {owner}.{f.attr}")
    return found


def test_no_collective_outside_the_collectives_module():
    bad = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in ALLOWED:
            calls = direct_collectives(path.read_text())
            if calls:
                bad[str(path.relative_to(PACKAGE.parent))] = calls
    assert not bad, f"call filtertron.parallel.collectives instead: {bad}"


def test_the_scan_sees_every_spelling():
    src = """
import torch
import torch.distributed as dist
import torch.distributed
from torch import distributed as tdist
from torch.distributed import all_gather as gather_all
import deepspeed.comm as dscomm

def f(t):
    dist.all_reduce(t)
    torch.distributed.barrier()
    tdist.broadcast(t, 0)
    gather_all([t], t)
    dscomm.all_reduce(t)
    dist.get_rank()
"""
    assert len(direct_collectives(src)) == 5


def _fake_nccl(monkeypatch, calls: list) -> None:
    """A 2-rank NCCL group on cuda:0, with the collectives recording what they are given."""
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def all_reduce(t, op=None, group=None):
        calls.append(("all_reduce", t.device, t.dtype, op))

    def all_gather(parts, t, group=None):
        calls.append(("all_gather", t.device, [p.device for p in parts]))

    def barrier(group=None, device_ids=None):
        calls.append(("barrier", device_ids))

    def broadcast_object_list(box, src=0, group=None, device=None):
        calls.append(("broadcast_object_list", device))

    for name, fn in [
        ("all_reduce", all_reduce),
        ("all_gather", all_gather),
        ("barrier", barrier),
        ("broadcast_object_list", broadcast_object_list),
    ]:
        monkeypatch.setattr(dist, name, fn)


def test_cpu_tensors_go_to_the_nccl_device_and_back(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls: list = []
    _fake_nccl(monkeypatch, calls)
    cuda0 = torch.device("cuda", 0)
    assert collectives.device_for() == cuda0
    with FakeTensorMode(allow_non_fake_inputs=True):  # CUDA tensors without a GPU
        x = torch.ones(3, dtype=torch.float64)
        out = collectives.all_reduce(x, "min")
        parts = collectives.all_gather(torch.ones(2))
        on_gpu = collectives.all_reduce(torch.ones(2, device=cuda0))
    assert calls[0] == ("all_reduce", cuda0, torch.float64, dist.ReduceOp.MIN)
    assert out.device == torch.device("cpu") and out.dtype == torch.float64
    assert calls[1] == ("all_gather", cuda0, [cuda0, cuda0])
    assert [p.device for p in parts] == [torch.device("cpu")] * 2
    assert calls[2][1] == cuda0 and on_gpu.device == cuda0
    calls.clear()
    collectives.barrier()
    collectives.broadcast_object({"step": 3})
    assert calls == [("barrier", [0]), ("broadcast_object_list", cuda0)]


class _Stop(Exception):
    pass


def test_float_lists_are_built_on_the_nccl_device(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls: list = []
    _fake_nccl(monkeypatch, calls)

    def all_reduce(t, op=None, group=None):
        calls.append((t.device, t.dtype, t.shape))
        raise _Stop  # a fake tensor has no values to read back

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(_Stop):
        collectives.all_reduce_floats([1.0, 2.0])
    assert calls == [(torch.device("cuda", 0), torch.float64, (2,))]


def test_a_multi_backend_group_uses_its_device_backend(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collectives.device_for() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert collectives.device_for() == torch.device("cpu")


def test_without_a_process_group_everything_is_the_identity():
    assert not dist.is_initialized()
    x = torch.arange(3.0)
    y = collectives.all_reduce(x)
    assert torch.equal(x, y) and y is not x
    assert collectives.all_reduce_floats([1.5, 2.5]) == [1.5, 2.5]
    assert collectives.all_true(False) is False and collectives.mean(torch.tensor(2.0)) == 2.0
    assert collectives.broadcast_object("a") == "a"
    collectives.barrier()


def _gloo_job(rank: int, world: int) -> dict:
    x = torch.tensor([1.0 + rank, 10.0 * rank], dtype=torch.float64)
    original = x.clone()
    out = {
        "sum": collectives.all_reduce(x),
        "min": collectives.all_reduce(x, "min"),
        "max": collectives.all_reduce(x, "max"),
        "gather": collectives.all_gather(torch.full((2,), float(rank))),
        "floats": collectives.all_reduce_floats([0.25 * (rank + 1), 1e300]),
        "all_true": collectives.all_true(rank == 0),
        "all_true_both": collectives.all_true(True),
        "mean": collectives.mean(torch.tensor(float(rank))),
        "object": collectives.broadcast_object({"rank": rank}),
        "unchanged": torch.equal(x, original),
    }
    collectives.barrier()
    return out


@pytest.mark.distributed
def test_gloo_collectives_on_two_ranks():
    for r in spawn(_gloo_job, 2):
        torch.testing.assert_close(r["sum"], torch.tensor([3.0, 10.0], dtype=torch.float64))
        torch.testing.assert_close(r["min"], torch.tensor([1.0, 0.0], dtype=torch.float64))
        torch.testing.assert_close(r["max"], torch.tensor([2.0, 10.0], dtype=torch.float64))
        assert [p.tolist() for p in r["gather"]] == [[0.0, 0.0], [1.0, 1.0]]
        assert r["floats"] == [0.75, 2e300]  # float64: 1e300 survives the sum
        assert r["all_true"] is False and r["all_true_both"] is True
        assert r["mean"] == 0.5 and r["object"] == {"rank": 0} and r["unchanged"]


def _eval_sums_job(rank: int, world: int) -> dict:
    """Evaluation's reduction of rank-dependent partial sums, and a perplexity split over the
    ranks (each scores every world-th window of one stream)."""
    from filtertron.eval.perplexity import all_reduce_sums, score, sliding_windows
    from filtertron.model import build_model

    # 2^40 + 1 + rank: float64 holds every such integer exactly, float32 rounds it to 2^40
    sums = all_reduce_sums([2.0**40 + 1.0 + rank, 0.1 * (rank + 1), float(rank)])
    torch.manual_seed(0)
    model = build_model(tiny_config().model)
    stream = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(2)).numpy()
    totals = score(
        model, stream, sliding_windows(len(stream) - 1, 16, 8), 2, rank=rank, world=world
    )
    return {"sums": sums, "nll": totals.nll_sum, "tokens": totals.tokens}


@pytest.mark.distributed
def test_evaluation_sums_reduce_in_float64_over_two_gloo_ranks():
    """Rank r contributes (2^40 + 1 + r, 0.1 (r + 1), r): every rank must get the float64 sums
    (2^41 + 3, 0.1 + 0.2, 1), which differ from each rank's own values and which float32 would
    round (2^41 + 3 is not a float32). A perplexity scored over the two ranks equals the
    single-process one (reference: the same windows in this process, no process group)."""
    from filtertron.eval.perplexity import score, sliding_windows
    from filtertron.model import build_model

    got = spawn(_eval_sums_job, 2)
    expected = [2.0**41 + 3.0, 0.1 + 0.2, 1.0]
    assert float(torch.tensor(expected[0], dtype=torch.float32)) != expected[0]
    for r in got:
        assert r["sums"] == expected, r["sums"]
    torch.manual_seed(0)
    model = build_model(tiny_config().model)
    stream = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(2)).numpy()
    one = score(model, stream, sliding_windows(len(stream) - 1, 16, 8), 2)
    for r in got:
        assert r["tokens"] == one.tokens
        # the same windows, split over two ranks: float32 per-window sums, added in float64
        assert r["nll"] == pytest.approx(one.nll_sum, rel=1e-6, abs=0), (r, one)

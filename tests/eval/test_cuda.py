"""GPU only (``pytest -m gpu``): evaluation's reduction on CUDA with NCCL, and perplexity of a
model on CUDA against the same model on the CPU.

With one GPU the NCCL world has one rank: the test checks where the tensors go (a CPU tensor
reduced on NCCL comes back on the CPU, float64 survives), not the arithmetic of an all-reduce,
which is the identity there. The sums over ranks are checked on two gloo ranks on every machine
(tests/parallel/test_collectives.py) and, with two GPUs or more, on two NCCL ranks here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import torch
from filtertron.eval.perplexity import all_reduce_sums
from filtertron.parallel import collectives
from filtertron.parallel.distributed import init_distributed

info = init_distributed()
values = [0.1, 2.0**40 + 1.0, 3.0]  # float64 holds 2**40 + 1 exactly; float32 would not
out = all_reduce_sums(values)
t = collectives.all_reduce(torch.arange(3, dtype=torch.float64))  # a CPU tensor on NCCL
print("RESULT " + json.dumps({"backend": info.backend, "device": str(collectives.device_for()),
                  "sums": out, "exact": out[1] == 2.0**40 + 1.0, "cpu_back": str(t.device),
                  "t": t.tolist()}))
"""


def test_eval_reduction_on_cuda_with_nccl():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert r["backend"] == "nccl" and r["device"].startswith("cuda")
    assert r["sums"] == [0.1, 2.0**40 + 1.0, 3.0] and r["exact"]
    assert r["cpu_back"] == "cpu" and r["t"] == [0.0, 1.0, 2.0]


def test_perplexity_on_cuda_equals_cpu(dataset):
    from filtertron.eval.perplexity import load_span, score, sliding_windows
    from tests.eval.conftest import tiny_model

    span = load_span(dataset, "test", max_tokens=2000)
    windows = sliding_windows(span.num_targets, 32, 16)
    model = tiny_model(impl="sdpa")
    cpu = score(model, span.tokens, windows, 4)
    gpu = score(model.to("cuda"), span.tokens, windows, 4)
    assert gpu.tokens == cpu.tokens
    assert abs(gpu.nll_sum - cpu.nll_sum) <= 1e-5 * cpu.nll_sum, (gpu, cpu)
    assert torch.cuda.max_memory_allocated() > 0


TWO_RANKS = r"""
import json
from filtertron.eval.perplexity import all_reduce_sums
from filtertron.parallel.distributed import init_distributed

info = init_distributed()
out = all_reduce_sums([2.0**40 + 1.0 + info.rank, 0.1 * (info.rank + 1)])
print("RESULT " + json.dumps({"backend": info.backend, "sums": out}))
"""


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two GPUs (NCCL refuses two ranks on one device)",
)
def test_eval_sums_over_two_nccl_ranks():
    """Rank r adds (2^40 + 1 + r, 0.1 (r + 1)): both ranks get (2^41 + 3, 0.1 + 0.2)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_RANKS],
            env={
                **base,
                "RANK": str(r),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(r),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for r in range(2)
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-5000:]
        r = json.loads(next(x for x in stdout.splitlines() if x.startswith("RESULT "))[7:])
        assert r["backend"] == "nccl" and r["sums"] == [2.0**41 + 3.0, 0.1 + 0.2]

"""Step time and bytes communicated per step for DP=2, TP=2 and PP=2, against the analytic volume.

Each layout trains a small GPT (configs/tiny.yaml's model unless --config; attention sdpa) in
2 gloo processes on this machine with DeepSpeed: DP through the plain engine (ZeRO-0 and ZeRO-1),
TP through megatron-core layers in the plain engine, PP through the pipeline engine (both
ZeRO-1, which moves nothing with one data-parallel rank). Every
torch.distributed collective and point-to-point call in the worker processes is wrapped (before
megatron-core or DeepSpeed import them) and charged the bytes a rank sends with a
bandwidth-optimal algorithm on a group of n ranks, for a tensor of S bytes:

    all_reduce 2 (n-1)/n S,  all_gather / reduce_scatter (n-1)/n S (S: the full tensor),
    broadcast (n-1)/n S,  send / isend S (on the sender), recv 0.

Measured: these charges over the timed steps, averaged over ranks, per step. Analytic (fp32,
4 bytes; m micro-batches of B x T tokens, width C, L blocks, vocabulary V, P parameters,
A = 4 B T C, ring factor r = 2 (n-1)/n):

    DP, ZeRO-0: r * 4 P               gradients all-reduced once per step
    DP, ZeRO-1: (r + (n-1)/n) * 4 P   DeepSpeed's stage 1 partitions only the optimizer state:
                                      gradients are still all-reduced, then the updated weight
                                      partitions all-gathered (1.5x ZeRO-0 for n = 2; a
                                      reduce-scatter of gradients would make it 1.0x)
    TP: r * m * ((4 L + 2) A + 12 B T) forward: embedding + 2 row outputs per block, the
                                      cross-entropy's max / target-logit / sum-exp (B, T) each;
                                      backward: input gradients of qkv, fc and the LM head
    PP: m * k A + r' * 4 V C          k = 1 (+1 if GRC's y0 travels): stage 0 sends
                                      activations, stage 1 their gradients (averaged over the
                                      two ranks); plus the tied embedding's gradient all-reduce
                                      over the two stages (r' = 1 for n = 2) if tied

Scalars (loss, gradient norm) are measured but not modelled; they are bytes against megabytes.
Prints per layout: median step time, measured and analytic MB per step and rank, their ratio
(target within 10%) and the measured breakdown by call.

    python bench/parallel.py [--config configs/tiny.yaml] [--steps 5] [--micro-batch 4]
        [--grad-accum 4] [--layouts DP=2/Z0,DP=2/Z1,TP=2,PP=2] [--set model.key=value ...]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import socket
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"DP=2/Z0": {"zero_stage": 0}, "DP=2/Z1": {"zero_stage": 1},
           "TP=2": {"tp": 2, "zero_stage": 1}, "PP=2": {"pp": 2, "zero_stage": 1}}
_FACTORS = {  # bytes a rank sends, as a fraction of the payload, for a group of n ranks
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather_into_tensor": lambda n: (n - 1) / n, "_all_gather_base": lambda n: (n - 1) / n,
    "reduce_scatter_tensor": lambda n: (n - 1) / n, "_reduce_scatter_base": lambda n: (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n, "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: (n - 1) / n, "send": lambda n: 1.0, "isend": lambda n: 1.0,
    "recv": lambda n: 0.0, "irecv": lambda n: 0.0,
}
# the parameter holding the full-size tensor (S) of each call; "tensor" for the others
_FULL_ARG = {"all_gather_into_tensor": "output_tensor", "_all_gather_base": "output_tensor",
             "all_gather": "tensor_list", "reduce_scatter_tensor": "input",
             "_reduce_scatter_base": "input", "reduce_scatter": "input_list"}


class CommCounter:
    """Wraps torch.distributed's collectives and p2p calls; charges each outermost call."""

    def __init__(self) -> None:
        self.bytes: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = threading.local()

    def install(self) -> None:
        for name in _FACTORS:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()

    def _wrap(self, name: str, fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth = getattr(self._depth, "d", 0)
            if depth == 0:
                self._charge(name, signature.bind_partial(*args, **kwargs).arguments)
            self._depth.d = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.d = depth

        return wrapper

    def _charge(self, name: str, arguments: dict) -> None:
        full = arguments[_FULL_ARG.get(name, "tensor")]
        tensors = full if isinstance(full, (list, tuple)) else [full]
        size = sum(t.numel() * t.element_size() for t in tensors)
        group = arguments.get("group")
        n = dist.get_world_size(group) if group is not None else dist.get_world_size()
        self.bytes[name] += _FACTORS[name](n) * size
        self.calls[name] += 1


def analytic_bytes(cfg, layout: str, micro_batch: int, grad_accum: int) -> float:
    """Bytes sent per rank per step predicted for ``layout`` (see the module docstring)."""
    from filtertron.model import build_model

    m = cfg.model
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(m).parameters())
    A = 4 * micro_batch * m.seq_len * m.d_model
    if layout.startswith("DP"):
        # ZeRO-1 in DeepSpeed partitions only the optimizer state: gradients are still
        # all-reduced, then each rank's updated weight partition is all-gathered.
        return 4 * params * (1.0 if cfg.parallel.zero_stage == 0 else 1.5)
    if layout == "TP=2":
        return grad_accum * ((4 * m.n_layers + 2) * A + 12 * micro_batch * m.seq_len)
    k = 2 if m.residual.kind == "generalized" else 1
    return grad_accum * k * A + (4 * m.vocab_size * m.d_model if m.tie_embeddings else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg, layout: str, args, out: str) -> None:
    if not args.verbose:  # DeepSpeed's and megatron's start-up logs would bury the table
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    counter = CommCounter()
    counter.install()  # before megatron-core binds torch.distributed functions at import
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import deepspeed

    from filtertron.model import build_model
    from filtertron.parallel import pipeline, state, tensor
    from filtertron.parallel.distributed import init_distributed

    init_distributed()
    lay = state.initialize(cfg, world)
    params_of = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    ds = {"train_micro_batch_size_per_gpu": args.micro_batch,
          "gradient_accumulation_steps": args.grad_accum,
          "train_batch_size": args.micro_batch * args.grad_accum * lay.dp_size,
          "gradient_clipping": 1.0, "steps_per_print": 10**9,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
          "zero_optimization": {"stage": cfg.parallel.zero_stage},
          **pipeline.deepspeed_config_overrides(cfg)}
    if cfg.parallel.pp > 1:
        model = pipeline.build_pipeline(cfg, lay)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params_of(model),
                                          config=ds)
    else:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model)
        if cfg.parallel.tp > 1:
            tensor.apply_tensor_parallel(model, cfg.model)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params_of(model),
                                          config=ds, mpu=lay.mpu)
    g = torch.Generator().manual_seed(lay.dp_rank)
    data = (torch.randint(0, cfg.model.vocab_size, (args.micro_batch, cfg.model.seq_len + 1),
                          generator=g) for _ in iter(int, 1))
    it = pipeline.split_batches(data)

    def step() -> None:
        if cfg.parallel.pp > 1:
            engine.train_batch(it)
            return
        for _ in range(args.grad_accum):
            idx, tgt = next(it)
            engine.backward(engine(idx, tgt))
            engine.step()

    step()  # warm-up: first-step metadata exchange and buffer allocation are not per-step
    dist.barrier()
    counter.reset()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    torch.save({"times": times, "bytes": dict(counter.bytes), "calls": dict(counter.calls)},
               Path(out) / f"{layout.replace('/', '_')}.{rank}.pt")
    dist.barrier()


def run_layout(cfg, layout: str, args, out: str) -> list[dict]:
    mp.start_processes(_worker, args=(2, _free_port(), cfg, layout, args, out), nprocs=2,
                       start_method="spawn")
    return [torch.load(Path(out) / f"{layout.replace('/', '_')}.{r}.pt") for r in range(2)]


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from filtertron.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated subset of {', '.join(LAYOUTS)}")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--verbose", action="store_true", help="show the workers' logs")
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    base = ["model.attention.impl=sdpa", *args.overrides]
    m = load_config(args.config, base).model
    print(f"model: L={m.n_layers} C={m.d_model} H={m.n_heads} T={m.seq_len} V={m.vocab_size} "
          f"attention={m.attention.kind} residual={m.residual.kind} tied={m.tie_embeddings}; "
          f"micro-batch {args.micro_batch} x {args.grad_accum} per step, fp32, gloo, "
          f"{args.steps} timed steps")
    print(f"{'layout':8} {'step ms':>8} {'measured MB':>12} {'analytic MB':>12} {'ratio':>6}  "
          "measured by call (MB per step and rank, calls)")
    worst = 0.0
    with tempfile.TemporaryDirectory() as out:
        for layout in args.layouts.split(","):
            par = LAYOUTS[layout]
            cfg = load_config(args.config, base + [f"parallel.{k}={v}" for k, v in par.items()])
            ranks = run_layout(cfg, layout, args, out)
            per_rank = [sum(r["bytes"].values()) / args.steps for r in ranks]
            measured = statistics.mean(per_rank)
            analytic = analytic_bytes(cfg, layout, args.micro_batch, args.grad_accum)
            step_ms = 1e3 * statistics.median(t for r in ranks for t in r["times"])
            names = sorted({k for r in ranks for k in r["bytes"]})
            detail = ", ".join(
                f"{k} {statistics.mean(r['bytes'].get(k, 0) for r in ranks) / args.steps / 1e6:.3f}"
                f" ({sum(r['calls'].get(k, 0) for r in ranks) // (2 * args.steps)})"
                for k in names)
            ratio = measured / analytic
            worst = max(worst, abs(ratio - 1))
            print(f"{layout:8} {step_ms:8.1f} {measured / 1e6:12.3f} {analytic / 1e6:12.3f} "
                  f"{ratio:6.3f}  {detail}")
    print(f"largest deviation from the analytic volume: {100 * worst:.1f}% (target <= 10%)")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())

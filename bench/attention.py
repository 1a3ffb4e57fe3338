"""Time and memory of every attention kind x impl, as ratios to SDPA causal softmax, one run.

Defaults: B=4 H=8 T=1024 D=64 float32, causal, on this machine's CPU threads. Forward runs
under torch.no_grad() (flex cannot do backward on CPU); forward+backward takes gradients of
q, k, v and of the learnable h_y, h_p (bilateral h_p is the SPEC init: geometric from 2 to T
over the heads). Times are medians over --reps interleaved repetitions after a warm-up, so a
load change on a shared machine hits every row alike; "x(min)" uses the best repetition.

Peak memory is the high-water mark of tensor bytes allocated during one call, read from the
allocation events of torch's profiler (profile_memory=True); inputs are excluded. Targets for
the best impl of each kind, forward+backward: bilateral <= 2.0x, twicing <= 1.6x (checked per
content and base). Then the forward memory of flex over T = 1K..16K, which must grow linearly.

    python bench/attention.py [--quick] [--batch 4 --heads 8 --seq 1024 --dim 64] [--reps 7]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "inductor"
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_CACHE))  # flex compiles once per T

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from filtertron.model.attention.functional import attention  # noqa: E402

CASES = {  # label -> (kind, kernel arguments builder)
    "softmax": ("softmax", lambda H, T: {}),
    "softmax alibi": ("softmax", lambda H, T: {"alibi_slopes": 2.0 ** -torch.arange(1.0, H + 1)}),
    "bilateral dot": ("bilateral", lambda H, T: {"h_p": _h_p(H, T)}),
    "bilateral gaussian": ("bilateral", lambda H, T: {"h_p": _h_p(H, T), "content": "gaussian"}),
    "twicing softmax": ("twicing", lambda H, T: {}),
    "twicing bilateral": ("twicing", lambda H, T: {"base": "bilateral", "h_p": _h_p(H, T)}),
}
IMPLS = ("sdpa", "flex", "reference")
TARGETS = {  # label -> fwd+bwd ratio to SDPA softmax that its best impl must reach
    "bilateral dot": 2.0,
    "bilateral gaussian": 2.0,
    "twicing softmax": 1.6,
    "twicing bilateral": 1.6,
}


def _h_p(H: int, T: int) -> torch.Tensor:
    return torch.logspace(math.log10(2.0), math.log10(T), H)


def make_call(label, impl, shape, dtype, grad):
    """A closure running one forward (no grad) or forward+backward (autograd.grad)."""
    kind, build = CASES[label]
    B, H, T, D = shape
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=grad) for _ in range(3))
    args = build(H, T)
    if "h_p" in args:
        content = args.get("content", "dot")
        args["h_y"] = torch.full((H,), math.sqrt(D) if content == "dot" else D**0.25)
    leaves = [q, k, v]
    for name in ("h_y", "h_p"):
        if name in args:
            args[name] = args[name].to(dtype).requires_grad_(grad)
            leaves.append(args[name])
    args = {key: (t.to(dtype) if torch.is_tensor(t) else t) for key, t in args.items()}

    def call():
        if not grad:
            with torch.no_grad():
                return attention(q, k, v, kind, impl, **args)
        out = attention(q, k, v, kind, impl, **args)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return call


def peak_mb(fn) -> float:
    """High-water mark of bytes allocated inside fn, from the profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def time_all(calls: dict, reps: int) -> dict:
    """Median and min ms per call; repetitions interleaved across calls."""
    for fn in calls.values():
        fn()
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
    return {key: (statistics.median(ts), min(ts)) for key, ts in times.items()}


def fmt(x, spec: str) -> str:
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset")
    p.add_argument("--sweep", default="1024,2048,4096,8192,16384", help="flex memory T values")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.heads, a.seq, a.dim, a.reps, a.sweep = 1, 2, 256, 32, 2, "256,512"
    shape, dtype = (a.batch, a.heads, a.seq, a.dim), getattr(torch, a.dtype)
    impls = a.impls.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}; B={a.batch} H={a.heads} T={a.seq} D={a.dim} "
        f"{a.dtype}, causal, median of {a.reps}"
    )
    print("peak memory: bytes allocated during the call (profiler allocation events), MiB")

    fwd, fb = {}, {}
    for label in CASES:
        for impl in impls:
            fwd[label, impl] = make_call(label, impl, shape, dtype, grad=False)
            if impl != "flex":  # torch has no FlexAttention backward on CPU
                fb[label, impl] = make_call(label, impl, shape, dtype, grad=True)
    t_fwd, t_fb = time_all(fwd, a.reps), time_all(fb, a.reps)
    base_f, base_b = t_fwd["softmax", "sdpa"], t_fb["softmax", "sdpa"]

    head = (
        f"{'kind':20s} {'impl':9s} {'fwd ms':>8s} {'fwd x':>6s} {'f+b ms':>8s} {'f+b x':>6s} "
        f"{'x(min)':>6s} {'mem fwd':>8s} {'mem f+b':>8s}"
    )
    print(head)
    print("-" * len(head))
    best: dict[str, float] = {}
    for label in CASES:
        for impl in impls:
            tf = t_fwd[label, impl]
            tb = t_fb.get((label, impl))
            mf = peak_mb(fwd[label, impl])
            mb = peak_mb(fb[label, impl]) if tb else None
            rb = tb[0] / base_b[0] if tb else None
            if tb:
                best[label] = min(best.get(label, math.inf), rb)
            print(
                f"{label:20s} {impl:9s} {tf[0]:8.1f} {tf[0] / base_f[0]:6.2f} "
                f"{fmt(tb and tb[0], '8.1f')} {fmt(rb, '6.2f')} "
                f"{fmt(tb and tb[1] / base_b[1], '6.2f')} {mf:8.1f} {fmt(mb, '8.1f')}"
            )
    for label, target in TARGETS.items():
        if a.quick:
            print("targets apply to the default size; --quick only smoke-tests the table")
            break
        if label in best:
            verdict = "meets" if best[label] <= target else "MISSES"
            print(f"target {label}: best fwd+bwd {best[label]:.2f}x <= {target}x? {verdict}")

    if "flex" in impls:
        print("\nflex forward memory (compiled, no grad), bilateral dot, B/H/D as above:")
        for T in map(int, a.sweep.split(",")):
            call = make_call("bilateral dot", "flex", (a.batch, a.heads, T, a.dim), dtype, False)
            call()  # compile for this T
            mb = peak_mb(call)
            print(f"  T={T:6d}  peak {mb:8.1f} MiB  ({mb * 2**20 / T / 1024:.2f} KiB per token)")


if __name__ == "__main__":
    main()

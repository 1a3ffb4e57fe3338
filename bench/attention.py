"""Time and memory of every attention kind x impl, as ratios to a baseline measured in one run.

CPU (default; fp32, this machine's threads):
  1. B=4 H=8 T=1024 D=64: forward (no grad) and forward+backward (grads of q, k, v, h_y, h_p)
     of every kind x impl, as ratios to SDPA causal softmax. Targets for the best impl of each
     kind, forward+backward: bilateral <= 2.0x, twicing <= 1.6x.
  2. Band sweep, B=1 H=8 D=64, forward+backward: banded bilateral on the tiled engine (every
     h_p <= 64: bands <= 496) at T = 1K, 4K, 16K against SDPA causal at the same T. Targets:
     <= 0.5x at 4K, <= 0.15x at 16K, 16K / 4K time <= 4.5x (linear in T); and at 1K local
     heads (h_p <= 64) no slower than global ones (h_p = 1e4, dense).
  3. Forward memory of compiled flex over T = 1K..16K (must grow linearly).
CUDA (--device cuda; bf16, D = 64 and 128, T = 1K..16K, B = 16K / T, H = 2048 / D): time,
  TFLOP/s and peak memory of every kind x impl, forward and forward+backward, as ratios to
  SDPA's flash backend (causal softmax) at the same shape. TFLOP/s counts causal attention
  FLOPs for every kind (forward 2 B H T^2 D, backward 2.5x that), so ratios are speed ratios.
  Measurements run in priority order (flash and Triton first, then flex, then the tiled
  engine and the reference at small T) within --budget-s seconds; the rest is listed as
  skipped. GPU targets (recorded, never claimed from a CPU run): dense bilateral >= 0.9x
  FlashAttention-2 forward and >= 0.8x backward throughput at T = 2K-8K; twicing forward +
  backward <= 2.1x; banded (bands <= 1K) >= 3x faster than dense at T = 8K.

Times are medians over --reps interleaved repetitions after a warm-up; peak memory is the
high-water mark of bytes allocated during one call (CPU: profiler allocation events; CUDA:
max_memory_allocated), inputs excluded. ``--out DIR`` also writes results.json and results.md.

    python bench/attention.py [--quick] [--reps 7] [--device cuda --out DIR --budget-s 110]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "inductor"
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_CACHE))  # flex compiles once per T
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the memory profiler's start/stop lines

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from filtertron.model.attention.functional import attention  # noqa: E402


def _h_p(lo: float, hi: float):
    return lambda H, T: torch.logspace(math.log10(lo), math.log10(hi), H)


SPEC_H_P = lambda H, T: torch.logspace(math.log10(2.0), math.log10(T), H)  # noqa: E731
CASES = {  # label -> (kind, kernel arguments builder (H, T) -> dict)
    "softmax": ("softmax", lambda H, T: {}),
    "softmax alibi": ("softmax", lambda H, T: {"alibi_slopes": 2.0 ** -torch.arange(1.0, H + 1)}),
    "bilateral dot": ("bilateral", lambda H, T: {"h_p": SPEC_H_P(H, T)}),
    "bilateral gaussian": (
        "bilateral",
        lambda H, T: {"h_p": SPEC_H_P(H, T), "content": "gaussian"},
    ),
    "bilateral dense": ("bilateral", lambda H, T: {"h_p": SPEC_H_P(H, T), "band_eps": None}),
    "bilateral banded": ("bilateral", lambda H, T: {"h_p": _h_p(2.0, 128.0)(H, T)}),
    "twicing softmax": ("twicing", lambda H, T: {}),
    "twicing bilateral": ("twicing", lambda H, T: {"base": "bilateral", "h_p": SPEC_H_P(H, T)}),
}
CPU_CASES = [c for c in CASES if c not in ("bilateral dense", "bilateral banded")]
TARGETS = {"bilateral dot": 2.0, "bilateral gaussian": 2.0, "twicing softmax": 1.6}
TARGETS["twicing bilateral"] = 1.6


def make_call(label, impl, shape, dtype, grad, device="cpu", args=None):
    """A closure running one forward (no grad) or forward+backward (autograd.grad)."""
    kind, build = CASES[label]
    B, H, T, D = shape
    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=grad) for _ in "qkv")
    args = dict(build(H, T) if args is None else args)
    if "h_p" in args:
        content = args.get("content", "dot")
        args["h_y"] = torch.full((H,), math.sqrt(D) if content == "dot" else D**0.25)
    leaves = [q, k, v]
    for name, value in list(args.items()):
        if torch.is_tensor(value):
            args[name] = value.to(device, dtype).requires_grad_(grad and name != "alibi_slopes")
            if args[name].requires_grad:
                leaves.append(args[name])

    def call():
        if not grad:
            with torch.no_grad():
                return attention(q, k, v, kind, impl, **args)
        out = attention(q, k, v, kind, impl, **args)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return call


def flash(shape, dtype, grad, device="cuda"):
    """SDPA causal softmax on its flash backend (CUDA) or its fused CPU kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=grad) for _ in "qkv")
    backend = SDPBackend.FLASH_ATTENTION

    def call():
        with sdpa_kernel(backend), torch.set_grad_enabled(grad):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return torch.autograd.grad(out, (q, k, v), torch.ones_like(out)) if grad else out

    return call


def peak_mb(fn, device="cpu") -> float:
    """High-water mark of MiB allocated inside fn (inputs excluded)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _clock(fn, device) -> float:
    if device != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_all(calls: dict, reps: int, device: str = "cpu") -> dict:
    """Median and min ms per call; repetitions interleaved across calls, after a warm-up."""
    for fn in calls.values():
        fn()
    times = {key: [] for key in calls}
    for _ in range(reps):
        for key, fn in calls.items():
            times[key].append(_clock(fn, device))
    return {key: (statistics.median(ts), min(ts)) for key, ts in times.items()}


def fmt(x, spec: str) -> str:
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def cpu_table(a, impls, rows) -> None:
    """Section 1: every kind x impl at one shape, ratios to SDPA causal softmax."""
    shape, dtype = (a.batch, a.heads, a.seq, a.dim), torch.float32
    fwd, fb = {}, {}
    for label in CPU_CASES:
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
    print(f"\n1. B={a.batch} H={a.heads} T={a.seq} D={a.dim} fp32, ratios to SDPA causal\n{head}")
    best: dict[str, float] = {}
    for label in CPU_CASES:
        for impl in impls:
            tf, tb = t_fwd[label, impl], t_fb.get((label, impl))
            mf = peak_mb(fwd[label, impl])
            mb = peak_mb(fb[label, impl]) if tb else None
            rb = tb[0] / base_b[0] if tb else None
            if tb:
                best[label] = min(best.get(label, math.inf), rb)
            row = dict(
                section="table", kind=label, impl=impl, fwd_ms=tf[0], fwd_x=tf[0] / base_f[0]
            )
            rows.append(dict(row, fb_ms=tb and tb[0], fb_x=rb, mem_fwd_mb=mf, mem_fb_mb=mb))
            print(
                f"{label:20s} {impl:9s} {tf[0]:8.1f} {tf[0] / base_f[0]:6.2f} "
                f"{fmt(tb and tb[0], '8.1f')} {fmt(rb, '6.2f')} "
                f"{fmt(tb and tb[1] / base_b[1], '6.2f')} {mf:8.1f} {fmt(mb, '8.1f')}"
            )
    for label, target in TARGETS.items():
        if label in best and not a.quick:
            verdict = "meets" if best[label] <= target else "MISSES"
            print(f"target {label}: best fwd+bwd {best[label]:.2f}x <= {target}x? {verdict}")


def band_sweep(a, rows) -> None:
    """Section 2: banded bilateral on the tiled engine vs SDPA causal, T = 1K..16K."""
    local = {"h_p": _h_p(2.0, 64.0)(a.heads, 0)}
    print(f"\n2. band sweep B=1 H={a.heads} D={a.dim} fp32 f+b, banded bilateral (h_p 2..64)")
    times = {}
    for T in map(int, a.band_sweep.split(",")):
        shape, reps = (1, a.heads, T, a.dim), max(3, a.reps if T <= 4096 else 3)
        calls = {
            "sdpa": make_call("softmax", "sdpa", shape, torch.float32, True),
            "local": make_call("bilateral dot", "tiled", shape, torch.float32, True, args=local),
        }
        if T == min(map(int, a.band_sweep.split(","))):
            glob = {"h_p": torch.full((a.heads,), 1e4)}
            calls["global"] = make_call(
                "bilateral dot", "tiled", shape, torch.float32, True, args=glob
            )
        t = times[T] = time_all(calls, reps)
        line = f"  T={T:6d}  sdpa {t['sdpa'][0]:9.1f} ms  banded {t['local'][0]:9.1f} ms  "
        line += f"ratio {t['local'][0] / t['sdpa'][0]:.3f}"
        if "global" in t:
            g = t["global"][0]
            line += f"  (global heads {g:.1f} ms: local/global {t['local'][0] / g:.2f})"
        print(line)
        rows.append(dict(section="band", T=T, sdpa_ms=t["sdpa"][0], banded_ms=t["local"][0],
                         global_ms=t.get("global", (None,))[0]))  # fmt: skip
    Ts = sorted(times)
    if not a.quick and {4096, 16384} <= set(Ts):
        r4, r16 = (times[T]["local"][0] / times[T]["sdpa"][0] for T in (4096, 16384))
        lin = times[16384]["local"][0] / times[4096]["local"][0]
        print(f"target 4K <= 0.5x: {r4:.3f} {'meets' if r4 <= 0.5 else 'MISSES'}; "
              f"16K <= 0.15x: {r16:.3f} {'meets' if r16 <= 0.15 else 'MISSES'}; "
              f"16K/4K <= 4.5x: {lin:.2f} {'meets' if lin <= 4.5 else 'MISSES'}")  # fmt: skip
        t1 = times[Ts[0]]
        ok = t1["local"][0] <= t1["global"][0]
        print(f"target local <= global heads at {Ts[0]}: {'meets' if ok else 'MISSES'}")


def flex_memory(a) -> None:
    """Section 3: compiled flex forward memory over T."""
    print(f"\n3. flex forward memory (compiled, no grad), bilateral dot, B={a.batch} H={a.heads}:")
    for T in map(int, a.sweep.split(",")):
        call = make_call(
            "bilateral dot", "flex", (a.batch, a.heads, T, a.dim), torch.float32, False
        )
        call()  # compile for this T
        mb = peak_mb(call)
        print(f"  T={T:6d}  peak {mb:8.1f} MiB  ({mb * 2**20 / T / 1024:.2f} KiB per token)")


def cuda_tables(a, rows, device: str = "cuda") -> None:
    """The CUDA tables (see the module docstring) within a time budget; ``device="cpu"`` only
    smoke-tests this function where there is no GPU."""
    start, dtype = time.perf_counter(), torch.bfloat16
    Ts = [int(t) for t in a.cuda_seq.split(",")]
    plan = []  # (priority, D, T, label, impl)
    for D in (64, 128):
        for T in Ts:
            plan += [(0, D, T, "flash", "flash")] + [(1, D, T, c, "triton") for c in CASES]
            plan += [(2, D, T, c, "flex") for c in CASES]
            if T <= 2048:
                plan += [(3, D, T, c, i) for c in CASES for i in ("sdpa", "reference")]
    plan.sort(key=lambda x: x[0])
    done, skipped = {}, []
    for _, D, T, label, impl in plan:
        if time.perf_counter() - start > a.budget_s:
            skipped.append(f"{label}/{impl} D={D} T={T}")
            continue
        shape = (max(1, 16384 // T), 2048 // D, T, D)
        flops = 2 * shape[0] * shape[1] * T * T * D
        res = {}
        try:
            for grad in (False, True):
                fn = (
                    flash(shape, dtype, grad, device)
                    if impl == "flash"
                    else make_call(label, impl, shape, dtype, grad, device)
                )
                ms = time_all({0: fn}, a.reps, device)[0][0]
                res["fb" if grad else "fwd"] = (
                    ms,
                    flops * (3.5 if grad else 1) / ms / 1e9,
                    peak_mb(fn, device),
                )
        except Exception as err:  # noqa: BLE001 -- a failing impl is a result, not a crash
            res = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"}
        done[D, T, label, impl] = res
        if device == "cuda":
            torch.cuda.empty_cache()
    cols = ("fwd ms", "TF/s", "x fl", "f+b ms", "TF/s", "x fl", "MiB f+b")
    head = f"{'D':>4s} {'T':>6s} {'kind':19s} {'impl':9s} " + " ".join(f"{c:>8s}" for c in cols)
    print(
        f"\nCUDA bf16, B=16K/T, H=2048/D, ratios to SDPA flash (x fl = time / flash time)\n{head}"
    )
    for (D, T, label, impl), res in sorted(done.items()):
        base = done.get((D, T, "flash", "flash"), {})
        if "error" in res:
            print(f"{D:4d} {T:6d} {label:19s} {impl:9s} {res['error']}")
            continue
        f, b = res["fwd"], res["fb"]
        xf = f[0] / base["fwd"][0] if "fwd" in base else None
        xb = b[0] / base["fb"][0] if "fb" in base else None
        print(f"{D:4d} {T:6d} {label:19s} {impl:9s} {f[0]:8.2f} {f[1]:8.0f} {fmt(xf, '8.2f')} "
              f"{b[0]:8.2f} {b[1]:8.0f} {fmt(xb, '8.2f')} {b[2]:8.0f}")  # fmt: skip
        rows.append(dict(section="cuda", D=D, T=T, kind=label, impl=impl, fwd_ms=f[0],
                         fwd_tflops=f[1], fwd_x_flash=xf, fb_ms=b[0], fb_tflops=b[1],
                         fb_x_flash=xb, fb_peak_mb=b[2]))  # fmt: skip
    if skipped:
        print(
            f"skipped (time budget {a.budget_s:.0f} s): {len(skipped)}: " + ", ".join(skipped[:20])
        )
    rows.append(dict(section="cuda_skipped", skipped=skipped))


def write_out(out: str, header: str, rows: list) -> None:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    keys = sorted({k for r in rows for k in r if k != "skipped"})
    lines = [header, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [r.get(k) for k in keys]
        lines.append(
            "| "
            + " | ".join(
                f"{c:.3g}" if isinstance(c, float) else str(c if c is not None else "")
                for c in cells
            )
            + " |"
        )
    (path / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--impls", default="sdpa,tiled,flex,reference", help="CPU table impls")
    p.add_argument("--band-sweep", default="1024,4096,16384", help="CPU band sweep T values")
    p.add_argument("--sweep", default="1024,2048,4096,8192,16384", help="flex memory T values")
    p.add_argument("--sections", default="1,2,3", help="CPU sections to run")
    p.add_argument("--cuda-seq", default="1024,2048,4096,8192,16384", help="CUDA T values")
    p.add_argument("--budget-s", type=float, default=110.0, help="CUDA measurement budget")
    p.add_argument("--out", default=None, help="folder for results.json and results.md")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.heads, a.seq, a.dim, a.reps = 1, 2, 256, 32, 2
        a.sweep, a.band_sweep, a.cuda_seq, a.budget_s = "256,512", "256,512", "1024", 30.0
    rows: list[dict] = []
    header = (
        f"torch {torch.__version__}, device {a.device}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}, median of {a.reps}"
    )
    if a.device == "cuda":
        header += f", {torch.cuda.get_device_name()}"
    print(header)
    if a.device == "cuda":
        cuda_tables(a, rows)
    else:
        sections = a.sections.split(",")
        if "1" in sections:
            cpu_table(a, a.impls.split(","), rows)
        if "2" in sections:
            band_sweep(a, rows)
        if "3" in sections and "flex" in a.impls:
            flex_memory(a)
    if a.out:
        write_out(a.out, header, rows)


if __name__ == "__main__":
    main()

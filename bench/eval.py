"""Evaluation throughput (tokens/s) and peak memory of the tiny preset at long contexts, on CPU.

The tiny preset (configs/tiny.yaml, random weights: speed and memory do not depend on them) is
evaluated with the attention implementation ``filtertron eval --impl auto`` picks
(memory-linear) at each context length L (default 1K, 4K, 16K), in one process:

- memory: one window of L tokens (batch 1). glibc is told to return every allocation above
  128 KB to the system when freed (mallopt M_MMAP_THRESHOLD, then malloc_trim), the kernel's
  peak-RSS mark is reset (``/proc/self/clear_refs``), and peak memory = VmHWM during the pass
  - VmRSS before it: what evaluating at context L adds on top of the loaded model;
- throughput: a stream of ``--tokens`` tokens in disjoint windows with the CLI's default
  batching (max(1, 8192 // L) windows per forward); the lengths are timed round-robin
  ``--repeats`` times and the best time of each kept, so a busy machine biases no length.

Targets: memory(16K) <= 4 memory(4K) (linear in L) and tokens/s(16K) >= tokens/s(1K) / 4.

    python bench/eval.py [--config configs/tiny.yaml] [--lengths 1K,4K,16K] [--tokens 16384]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _reset_peak() -> bool:
    """Trim freed heap memory, then reset VmHWM to the current RSS; False if unsupported."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--lengths", default="1K,4K,16K")
    p.add_argument("--tokens", type=int, default=16384, help="scored tokens per throughput run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--impl", default="auto")
    args = p.parse_args()
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # freed tensors leave the heap at once

    import numpy as np
    import torch

    from filtertron.config import load_config
    from filtertron.eval import long_context as lc
    from filtertron.eval.evaluate import TOKENS_PER_BATCH
    from filtertron.eval.perplexity import score, sliding_windows
    from filtertron.model import build_model

    cfg = load_config(args.config).model
    lengths = lc.parse_lengths(args.lengths, cfg.seq_len)
    torch.manual_seed(0)
    impl = lc.resolve_impl(args.impl, cfg)
    model = lc.with_impl(build_model(cfg).eval(), impl)
    stream = np.random.default_rng(0).integers(0, cfg.vocab_size, max(args.tokens, *lengths) + 1)
    print(
        f"{Path(args.config).name}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, {cfg.attention.kind} + {cfg.position} positions, trained at "
        f"{cfg.seq_len}; impl {impl}, {torch.get_num_threads()} threads; {args.tokens} scored "
        f"tokens per throughput run, best of {args.repeats}",
        flush=True,
    )
    mem = {}
    for L in lengths:
        one = sliding_windows(L, L)
        score(model, stream, one)  # warm-up: first-call allocations and caches
        rss = _status_kb("VmRSS")
        exact = _reset_peak()
        score(model, stream, one)
        mem[L] = ((_status_kb("VmHWM") if exact else rss) - rss) / 1024, rss / 1024, exact
    best = dict.fromkeys(lengths, float("inf"))
    tokens = {}
    for _ in range(args.repeats):
        for L in lengths:
            t0 = time.perf_counter()
            tot = score(
                model, stream, sliding_windows(args.tokens, L), max(1, TOKENS_PER_BATCH // L)
            )
            best[L] = min(best[L], time.perf_counter() - t0)
            tokens[L] = tot.tokens
    speed = {L: tokens[L] / best[L] for L in lengths}
    for L in lengths:
        peak, rss, exact = mem[L]
        print(
            f"L={L:>6}  batch={max(1, TOKENS_PER_BATCH // L):>2}  {speed[L]:>8.0f} tokens/s "
            f"({best[L]:.2f} s)  peak +{peak:7.1f} MB over {rss:.0f} MB resident (one window"
            f"{'' if exact else '; VmHWM reset unavailable: not measured'})"
        )
    if len(lengths) < 2:
        return 0
    lo, mid, hi = lengths[0], lengths[-2], lengths[-1]
    lin = hi / mid
    ratio = mem[hi][0] / mem[mid][0]
    ok_mem = ratio <= lin
    print(
        f"memory      L={hi} / L={mid}: {ratio:.2f}x (linear {lin:.2f}x, quadratic "
        f"{lin * lin:.0f}x; target <= {lin:.2f}x)  {'PASS' if ok_mem else 'FAIL'}"
    )
    thr = speed[hi] / speed[lo]
    ok_thr = thr >= 0.25
    print(
        f"throughput  L={hi} / L={lo}: {thr:.3f} (target >= 0.25)  {'PASS' if ok_thr else 'FAIL'}"
    )
    return 0 if ok_mem and ok_thr else 1


if __name__ == "__main__":
    sys.exit(main())

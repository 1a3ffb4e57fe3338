#!/usr/bin/env python
"""The Triton compile gate (filtertron/kernels/compile_gate.py): no GPU needed.

    python tools/triton_gate.py                      # sm_80 and sm_90 with the installed Triton
    PYTHONPATH=.cache/triton-3.6.0 python tools/triton_gate.py   # with a side Triton (.ci/run)

Records every launch impl="triton" can make, compiles each down to cubin for each arch, and
fails (exit 1) on a compile error, a register spill or shared memory above the arch's limit,
except what compile_gate.KNOWN_FAILURES lists. Prints one line per (arch, kernel) and one per
failure; --json writes every launch with its result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="80,90", help="compute capabilities (default 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--json", help="write every launch and its result here")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the gate compiles; the interpreter cannot
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # 3.9's default, stated (no warning)

    import triton
    from tqdm import tqdm

    from filtertron.kernels import compile_gate as gate

    start = time.perf_counter()
    archs = [int(a) for a in args.archs.split(",")]
    for arch in archs:
        if arch not in gate.SMEM_LIMIT:
            parser.error(f"--archs: no shared-memory limit known for {arch}")
    launches = [launch for arch in archs for launch in gate.record(arch)]
    print(
        f"triton {triton.__version__}: {len(gate.cases())} op calls per arch -> "
        f"{len(launches)} distinct launches for sm_{', sm_'.join(map(str, archs))}",
        flush=True,
    )
    bar = tqdm(total=len(launches), desc="compile", unit="kernel", disable=None)
    results = gate.compile_all(launches, args.jobs, progress=lambda i, n: bar.update(1))
    bar.close()

    summary: dict[tuple[int, str], list] = defaultdict(list)
    failures, tolerated = [], []
    for launch, result in zip(launches, results, strict=True):
        summary[(launch.arch, launch.kernel)].append(result)
        for problem in gate.problems(launch, result):
            (tolerated if gate.known(launch, problem) else failures).append((launch, problem))
    for (arch, kernel), rs in sorted(summary.items()):
        ok = [r for r in rs if r["ok"]]
        regs = max((r["regs"] for r in ok), default=0)
        shared = max((r["shared"] for r in ok), default=0)
        secs = sum(r["seconds"] for r in ok)
        print(
            f"  sm_{arch} {kernel:12s} {len(rs):3d} launches, {len(ok):3d} compiled, "
            f"max {regs} registers, max shared {shared / 1024:.1f} KiB, compile {secs:.0f} s"
        )
    for launch, problem in tolerated:
        print(f"  known failure: {launch.label()}: {problem}")
    for launch, problem in failures:
        print(f"  FAIL {launch.label()}: {problem}\n       first from: {launch.cases[0]}")
    if args.json:
        with open(args.json, "w") as f:
            rows = [{**vars(launch), "result": r} for launch, r in zip(launches, results)]
            json.dump(rows, f, indent=1, default=str)
    verdict = "FAILED" if failures else "passed"
    print(
        f"compile gate {verdict}: {len(failures)} failures, {len(tolerated)} known, "
        f"{len(launches)} launches, {time.perf_counter() - start:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU check's own checks of its training run (tools/gpu/check.sh calls these).

    python tools/gpu/check_run.py train RUN [--steps 50]
    python tools/gpu/check_run.py rollback RUN COPY --step 25
    python tools/gpu/check_run.py resume RUN RESUMED --step 25 [--steps 50]

``train``: steps 1..N logged once each, finite, the last loss below the first, a final
validation loss, the consolidated ``model.pt`` of step N, MFU within (0, 1]. ``rollback``:
copy a run and roll the copy back to its step-S checkpoint, as if it had died after writing
it (later checkpoints and the metrics removed). ``resume``: the resumed copy logged exactly
steps S+1..N, and their losses equal the uninterrupted run's within bf16 noise (see
:data:`FIRST_STEP_TOL` and :data:`LATER_STEPS_TOL`). Each prints its measurements on one line
starting with ``SUMMARY:``; a failed check prints what is wrong and exits 1. Only the
standard library: it runs where torch does not import.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path

# Tolerances of the resume comparison (losses of the tiny preset, bf16, ~7.6 -> ~4.2).
# A resume restores the weights, AdamW's moments, the LR schedule, the RNG and the data
# position, and replays the same batches through the same kernels: the expected difference is
# 0, and on the H200 (2026-12-04) it was exactly 0.0 for all of steps 26-50. Each loss is an
# fp32 mean of 1024 token cross-entropies computed in fp32 from bf16 logits.
# - The first resumed step is a forward of the restored weights on the same batch, before any
#   update: only a different fp32 summation order could move it (~1e-6 relative), so 1e-4.
# - Later steps can also differ by a nondeterministic backward (atomic adds), which perturbs
#   gradients at fp32 rounding (~1e-7 relative): the fp32 masters move by that times the
#   update, and a bf16 weight changes only when its master crosses a rounding boundary. As an
#   upper bound far beyond that, moving 1% of all weights and masters by one bf16 step
#   (2^-8 relative) at the restart moved steps 26-50 by at most 1.3e-3 (CPU, this run), so
#   2e-3; it is also 1/16 of the bf16 spacing of the loss values (2^-5 between 4 and 8).
# What a broken resume does is larger. Measured on a CPU with this run (in-process trainer,
# bf16, ZeRO-2; max |difference| over steps 26-50, median in brackets): the fp32 masters
# restored from the bf16 weights 1.5e-2 (3.8e-3); AdamW's moments lost 0.47 (0.33); the data
# position lost 0.56 (0.13; 1.5e-2 at step 26 itself); the LR schedule restarted 0.76 (0.55);
# a correct resume 0.0 (2026-12-04). The old tolerance, 0.05, let the first of these pass.
FIRST_STEP_TOL = 1e-4
LATER_STEPS_TOL = 2e-3


class CheckFailed(Exception):
    """A check of the run did not hold; the message says which and the numbers."""


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise CheckFailed(f"{path}: missing (the training wrote no metrics)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _losses(rows: list[dict], where: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        if "loss" in r:
            if r["step"] in out:
                raise CheckFailed(f"{where}: step {r['step']} logged twice")
            out[r["step"]] = r["loss"]
    return out


def _impl(run: Path) -> str:
    """The attention impl ``auto`` chose, from the run's log files ("?" if not logged)."""
    found = set()
    for log in sorted((run / "logs").glob("*.log")):
        found |= set(re.findall(r"impl='auto' -> '(\w+)'", log.read_text(errors="replace")))
    return ",".join(sorted(found)) or "?"


def check_train(run: Path, steps: int) -> str:
    """Check a finished run of ``steps`` steps; returns the summary."""
    rows = _rows(run)
    losses = _losses(rows, run)
    if sorted(losses) != list(range(1, steps + 1)):
        raise CheckFailed(f"{run}: logged steps {sorted(losses)}, expected 1..{steps}")
    bad = {s: v for s, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise CheckFailed(f"{run}: non-finite losses {bad}")
    if not losses[steps] < losses[1]:
        raise CheckFailed(f"{run}: loss did not fall: {losses[1]:.4f} -> {losses[steps]:.4f}")
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    if not val or not math.isfinite(val[-1]):
        raise CheckFailed(f"{run}: no finite final val_loss ({val})")
    model = run / "checkpoints" / f"step_{steps:08d}" / "model.pt"
    if not model.is_file():
        raise CheckFailed(f"{model}: missing (no consolidated model)")
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    if not mfu or not all(0 < m <= 1 for m in mfu):
        raise CheckFailed(f"{run}: MFU missing or outside (0, 1]: {mfu[:5]}...")
    tps = statistics.median(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    return (
        f"loss {losses[1]:.4f} -> {losses[steps]:.4f}, val_loss {val[-1]:.4f}, median "
        f"{tps:,.0f} tokens/s, median MFU {100 * statistics.median(mfu):.2f}%, "
        f"attention impl {_impl(run)}"
    )


def rollback(run: Path, copy: Path, step: int) -> str:
    """Copy ``run`` to ``copy`` and roll the copy back to its step-``step`` checkpoint."""
    if not (run / "checkpoints" / f"step_{step:08d}").is_dir():
        raise CheckFailed(f"{run}: no step-{step} checkpoint to resume from")
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy)
    later = [
        d
        for d in (copy / "checkpoints").glob("step_*")
        if d.is_dir() and int(d.name.split("_")[1]) > step
    ]
    for d in later:
        shutil.rmtree(d)
    (copy / "metrics.jsonl").unlink()
    return f"{copy} rolled back to step {step} ({len(later)} later checkpoint(s) removed)"


def check_resume(run: Path, resumed: Path, step: int, steps: int) -> str:
    """Compare the resumed steps with the uninterrupted run; returns the summary."""
    ref = _losses(_rows(run), run)
    got = _losses(_rows(resumed), resumed)
    expected = list(range(step + 1, steps + 1))
    if sorted(got) != expected:
        raise CheckFailed(f"{resumed}: logged steps {sorted(got)}, expected {expected}")
    missing = [s for s in expected if s not in ref]
    if missing:
        raise CheckFailed(f"{run}: the uninterrupted run lacks steps {missing}")
    diff = {s: abs(got[s] - ref[s]) for s in expected}
    first = diff[step + 1]
    later = max((diff[s] for s in expected[1:]), default=0.0)
    worst = max(diff, key=diff.get)
    line = (
        f"steps {step + 1}-{steps} after --resume: |loss - uninterrupted| first step "
        f"{first:.2e} (tol {FIRST_STEP_TOL:.0e}), max {later:.2e} at step {worst} "
        f"(tol {LATER_STEPS_TOL:.0e}); {sum(d == 0 for d in diff.values())}/{len(diff)} exact"
    )
    if first > FIRST_STEP_TOL or later > LATER_STEPS_TOL:
        raise CheckFailed(
            f"{line}; step {worst}: resumed {got[worst]:.6f}, uninterrupted {ref[worst]:.6f}"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("run", type=Path)
    t.add_argument("--steps", type=int, default=50)
    r = sub.add_parser("rollback")
    r.add_argument("run", type=Path)
    r.add_argument("copy", type=Path)
    r.add_argument("--step", type=int, required=True)
    c = sub.add_parser("resume")
    c.add_argument("run", type=Path)
    c.add_argument("resumed", type=Path)
    c.add_argument("--step", type=int, required=True)
    c.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    try:
        if args.what == "train":
            line = check_train(args.run, args.steps)
        elif args.what == "rollback":
            line = rollback(args.run, args.copy, args.step)
        else:
            line = check_resume(args.run, args.resumed, args.step, args.steps)
    except CheckFailed as e:
        print(f"check_run {args.what}: FAILED: {e}", file=sys.stderr)
        print(f"SUMMARY: FAILED: {e}")
        return 1
    print(f"SUMMARY: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

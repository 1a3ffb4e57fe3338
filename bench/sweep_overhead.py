"""Per-run overhead of a sweep: plan "local" (a trainer process per run) against plan
"inprocess" (every run in the sweep's process), same runs, one invocation.

Both plans train the same small sweep (one variant, ``--runs`` seeds of a one-layer d = 32
model, ``--steps`` steps each, fp32, ZeRO 0) on the bundled sample corpus, in alternating
rounds. Per run, from the run's own files:

- start: the run's start event (attempts.jsonl) to its first step's metrics line, i.e.
  launcher / interpreter / imports / process group / data / model / engine and one step;
- end: its last metrics line (the final validation loss) to its end event, i.e. the final
  checkpoint and consolidation, and for "local" the process's exit;
- train: first to last step (the same work under both plans).

Prints the median of each per plan and the ratio local / inprocess. The in-process plan's
first run also pays for what later runs reuse (imports, the process group): it is shown apart.

    python bench/sweep_overhead.py [--runs 4] [--steps 5] [--rounds 2] [--set k=v ...]
    python bench/sweep_overhead.py --summarize OUT   # the same medians for a finished sweep
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from filtertron.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def prepare(out: Path) -> Path:
    """The sample corpus tokenized once (BPE 512)."""
    data = out / "data"
    if not (data / "train.bin").exists():
        args = ["prepare", "--source", str(ROOT / "corpus" / "sample"), "--output", str(data)]
        assert cli([*args, "--vocab-size", "512", "--workers", "1"]) == 0
    return data


def sweep_file(path: Path, runs: int, steps: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "base": str(ROOT / "configs" / "tiny.yaml"),
                "variants": {"baseline": {}},
                "sizes": {
                    "a": {
                        "n_layers": 1,
                        "d_model": 32,
                        "n_heads": 2,
                        "seq_len": 32,
                        "vocab_size": 512,
                    }
                },  # fmt: skip
                "budgets": {"kind": "tokens", "values": [steps * 4 * 32]},
                "seeds": list(range(runs)),  # one run per seed
                "schedule": {"warmup_fraction": 0.1, "checkpoints": 1},
                "overrides": {
                    "parallel": {"zero_stage": 0},
                    "train": {"micro_batch_size": 4, "log_every": 1000},
                    "eval": {"every": 0, "batches": 2},
                },
            }
        )
    )
    return path


def timings(run_dir: Path) -> dict[str, float]:
    events = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start, end = events[0]["time"], events[-1]["time"]
    first, last = rows[0]["time"], rows[-1].get("time")
    if last is None:  # the final val_loss line has no time: the last step's line does
        last = max(r["time"] for r in rows if "time" in r)
    return {"start": first - start, "train": last - first, "end": end - last}


def one(plan: str, sweep: Path, data: Path, out: Path, extra: list[str]) -> list[dict]:
    args = ["sweep", str(sweep), "--out", str(out), "--plan", plan, "--set", f"data.path={data}"]
    for s in extra:
        args += ["--set", s]
    t0 = time.perf_counter()
    assert cli(args) == 0, f"plan {plan} failed; see {out}"
    wall = time.perf_counter() - t0
    runs = sorted((out / "runs").iterdir())
    print(f"  {plan}: {len(runs)} runs in {wall:.1f} s")
    return [timings(r) for r in runs]


def summarize(out: Path) -> None:
    """Per-run start / train / end of a sweep that ran (e.g. tools/gpu/sweep.sh's)."""
    rows = []
    for run in (out / "runs").iterdir():
        if (run / "result.json").is_file():
            first = json.loads((run / "attempts.jsonl").read_text().splitlines()[0])
            rows.append((first["time"], run.name, first.get("plan", "local"), timings(run)))
    rows = [r[1:] for r in sorted(rows)]  # in the order they ran
    print(f"{'run':34s} {'plan':9s} {'start':>7s} {'train':>7s} {'end':>7s}")
    for name, plan, t in rows:
        print(f"{name:34s} {plan:9s} {t['start']:7.2f} {t['train']:7.2f} {t['end']:7.2f}")
    if rows:
        m = {k: statistics.median(t[k] for _, _, t in rows[1:] or rows) for k in ("start", "end")}
        print(f"{len(rows)} runs; median after the first: start {m['start']:.2f} s, end "
              f"{m['end']:.2f} s; first run start {rows[0][2]['start']:.2f} s")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summarize", type=Path, default=None, metavar="OUT")
    p.add_argument("--runs", type=int, default=4, help="runs per plan and round")
    p.add_argument("--steps", type=int, default=5, help="steps per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = p.parse_args()
    if args.summarize is not None:
        summarize(args.summarize)
        return
    tmp = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    data = prepare(tmp)
    sweep = sweep_file(tmp / "s.yaml", args.runs, args.steps)
    got: dict[str, list[dict]] = {"local": [], "inprocess": [], "inprocess first": []}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}")
        for plan in ("local", "inprocess"):
            t = one(plan, sweep, data, tmp / f"{plan}-{r}", args.overrides)
            if plan == "inprocess" and r == 0:
                got["inprocess first"] += t[:1]
                t = t[1:]
            got[plan] += t
    print(f"\nper-run seconds, median over runs ({args.steps} steps a run, tiny model, CPU)")
    print(f"{'plan':16s} {'runs':>4s} {'start':>7s} {'train':>7s} {'end':>7s} {'overhead':>9s}")
    med = {}
    for plan, rows in got.items():
        if not rows:
            continue
        m = {k: statistics.median(x[k] for x in rows) for k in ("start", "train", "end")}
        m["overhead"] = statistics.median(x["start"] + x["end"] for x in rows)
        med[plan] = m
        print(
            f"{plan:16s} {len(rows):4d} {m['start']:7.2f} {m['train']:7.2f} {m['end']:7.2f} "
            f"{m['overhead']:9.2f}"
        )
    a, b = med["local"], med["inprocess"]
    print(
        f"\nratio local / inprocess: start {a['start'] / b['start']:.1f}x, end "
        f"{a['end'] / b['end']:.1f}x, overhead (start + end) {a['overhead'] / b['overhead']:.1f}x"
    )
    print(f"(files under {tmp})")


if __name__ == "__main__":
    main()

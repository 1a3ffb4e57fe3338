"""One run of a sweep: its directory, the ``filtertron train`` command, and its result.

    OUT/runs/<id>/run.yaml     the resolved run config (what ``filtertron train`` reads)
                  run.json     what the run is: grid point, steps, parameters, FLOPs, hash
                  train.log    the trainer's output
                  config.yaml, metrics.jsonl, checkpoints/, tb/   written by the trainer
                  attempts.jsonl  a start and an end line per training process
                  result.json  run.json plus the final losses and wall time; written last

Training goes through the CLI in a subprocess (plan "local"; plan "inprocess" trains in the
sweep's own process, :mod:`filtertron.scaling.inprocess`, with the same files): the final
validation loss is the last ``val_loss`` in metrics.jsonl at the last step, and a run is
complete when its newest committed checkpoint is at that step. Only a cut-off last line of
metrics.jsonl is skipped; any other unreadable line is an error naming the file and line.
``python -m filtertron.scaling.runner RUN_DIR [--resume]`` runs one prepared run (the script
and slurm plans call this).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filtertron
from filtertron.checkpoint import files as ckpt
from filtertron.config import dump_config

ROOT = Path(filtertron.__file__).resolve().parents[1]


class RunFailed(RuntimeError):
    """The training process of a run exited with an error; names the run and its log."""


def prepare(run) -> None:
    """Write a run's run.yaml and run.json (the directory is created)."""
    run.dir.mkdir(parents=True, exist_ok=True)
    dump_config(run.config, run.dir / "run.yaml")
    ckpt.write_json_atomic(run.dir / "run.json", run.spec())


def spec(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "run.json").read_text())


RENDEZVOUS_VARS = frozenset(
    ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
)


def environment() -> dict[str, str]:
    """The environment of a training process: this filtertron tree first on PYTHONPATH, so
    the run trains the code that planned it."""
    # Each run is its own job: a rendezvous inherited from the sweep's process (an in-process
    # Trainer sets these, so do launchers around the sweep) would make the child join it, or
    # bind the parent's still-open port (EADDRINUSE).
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def train_command(run_dir: Path, resume: bool) -> list[str]:
    """``python -m filtertron.cli train RUN_DIR/run.yaml --nproc N [--resume]``."""
    s = spec(run_dir)
    cmd = [sys.executable, "-m", "filtertron.cli", "train", str(Path(run_dir) / "run.yaml")]
    cmd += ["--nproc", str(s["nproc"])]
    return cmd + (["--resume"] if resume else [])


def last_step(run_dir: Path) -> int:
    """Newest committed checkpoint step (0 if none)."""
    info = ckpt.latest(Path(run_dir) / "checkpoints")
    return 0 if info is None else info.step


class MetricsError(RunFailed):
    """A run's metrics.jsonl holds a line that is not a JSON object, other than a cut-off
    last line; names the file and the line."""


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl.

    The trainer writes one JSON object and a newline per line, so the one unreadable line a
    healthy file can hold is its last, cut off by a kill mid-write (no newline after it); that
    line is skipped. Any other line that is not a JSON object is corruption and raises.

    Raises:
        MetricsError: a line other than a cut-off last one is not a JSON object.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")  # a complete file ends in "\n": its last item is ""
    out = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row, why = None, f"not valid JSON ({e.msg} at column {e.colno})"
        else:
            why = f"a JSON {type(row).__name__}, not an object"
        if isinstance(row, dict):
            out.append(row)
        elif not last:  # a cut-off line can only be the last (the file ends without "\n")
            raise MetricsError(
                f"{path}, line {number}: {why}; only a cut-off last line is skipped. The run's "
                "metrics are corrupt: remove the run directory to retrain it"
            )
    return out


def drop_cut_off_line(run_dir: Path) -> int:
    """Remove a cut-off last line from metrics.jsonl (a trainer killed mid-write), so a
    resumed trainer does not append to it; returns the bytes removed."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def collect(run_dir: Path) -> dict[str, Any] | None:
    """The result of a complete run (and write result.json), or None if it is not complete."""
    run_dir = Path(run_dir)
    s = spec(run_dir)
    if last_step(run_dir) != s["steps"]:
        return None
    rows = metrics(run_dir)
    final = [r for r in rows if r.get("step") == s["steps"] and "val_loss" in r]
    train = [r for r in rows if r.get("step") == s["steps"] and "loss" in r]
    if not final:
        return None
    # Wall time of the training processes that ended (one killed with the sweep has no end
    # line); attempts counts every process started.
    wall, attempts, begun = 0.0, 0, None
    for e in _attempts(run_dir):
        if e["event"] == "start":
            attempts, begun = attempts + 1, e["time"]
        elif begun is not None:
            wall, begun = wall + e["time"] - begun, None
    result = {
        **s,
        "loss": float(final[-1]["val_loss"]),
        "train_loss": float(train[-1]["loss"]) if train else None,
        "wall_s": wall,
        "attempts": attempts,
        "finished": time.time(),
    }
    ckpt.write_json_atomic(run_dir / "result.json", result)
    return result


def event(run_dir: Path, **fields: Any) -> None:
    """Append a line (with the time) to the run's attempts.jsonl."""
    with (run_dir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps({"time": time.time(), **fields}) + "\n")


def _attempts(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "attempts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def result(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _die_with_parent() -> None:
    # Linux: the trainer gets SIGTERM if the sweep dies (even by SIGKILL), so a killed sweep
    # never leaves a trainer writing into a run that a restarted sweep resumes.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def execute(
    run_dir: str | Path,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Train a prepared run to completion and collect its result.

    Args:
        run_dir: the run's directory (with run.yaml and run.json).
        resume: continue from its newest committed checkpoint if it has one (without,
            a directory holding checkpoints is an error, as in ``filtertron train``).
        progress: called with the newest logged step while training runs.
        poll_s: how often progress is read from metrics.jsonl.

    Returns:
        The result (also written to result.json).

    Raises:
        RunFailed: training exited non-zero, or finished without a final validation loss.
    """
    run_dir = Path(run_dir)
    if (done := result(run_dir)) is not None:
        return done
    if (done := collect(run_dir)) is not None:
        return done
    resume = begin(run_dir, resume)
    cmd = train_command(run_dir, resume)
    event(run_dir, event="start", cmd=cmd)
    with (run_dir / "train.log").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
            preexec_fn=_die_with_parent,
        )
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                if progress is not None:
                    steps = [r["step"] for r in metrics(run_dir) if "step" in r]
                    progress(max(steps, default=0))
        finally:
            if proc.poll() is None:  # interrupted: stop the trainer before leaving
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            event(run_dir, event="end", returncode=proc.returncode)
    if proc.returncode != 0:
        raise RunFailed(
            f"run {run_dir.name}: training exited with {proc.returncode}; see {run_dir}/train.log"
        )
    return finish(run_dir)


def begin(run_dir: Path, resume: bool) -> bool:
    """Ready a prepared run for a trainer; returns whether the trainer resumes.

    Without a committed checkpoint the run starts clean (no half-written metrics.jsonl or
    config.yaml); with one, a cut-off last metrics line is dropped before the trainer appends.
    """
    if last_step(run_dir) == 0:
        for name in ("metrics.jsonl", "config.yaml"):
            (run_dir / name).unlink(missing_ok=True)
        return False
    if cut := drop_cut_off_line(run_dir):
        with (run_dir / "train.log").open("a") as log:
            log.write(f"\nmetrics.jsonl: dropped a cut-off last line ({cut} bytes)\n")
    return resume


def finish(run_dir: Path) -> dict[str, Any]:
    """The result of a run whose trainer ended well (see :func:`collect`).

    Raises:
        RunFailed: the run has no final checkpoint and validation loss.
    """
    done = collect(run_dir)
    if done is None:
        raise RunFailed(f"run {run_dir.name}: training ended without a final checkpoint and loss")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m filtertron.scaling.runner", description=__doc__)
    p.add_argument("run_dir", help="a prepared run directory (OUT/runs/<id>)")
    p.add_argument("--resume", action="store_true", help="continue from its last checkpoint")
    args = p.parse_args(argv)
    try:
        r = execute(args.run_dir, resume=args.resume)
    except RunFailed as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{r['id']}: loss {r['loss']:.4f} after {r['steps']} steps, {r['flops']:.3g} FLOPs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

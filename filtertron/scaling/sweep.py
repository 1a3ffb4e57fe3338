"""Running a sweep: run status from disk, the state file, the four plans, the runs table.

Everything lives under one directory OUT::

    OUT/sweep.json     state: every run's status, config hash, job id, error (rewritten
                       atomically after every change; the run directories are the truth)
    OUT/runs/<id>/     one run (see :mod:`filtertron.scaling.runner`)
    OUT/inprocess.log  plan "inprocess": the process group's set-up output
    OUT/scripts/       plan "script": <id>.sh per run and all.sh
    OUT/slurm/         plan "slurm": submitit's job files and logs
    OUT/table.csv      finished runs: variant,n_params,tokens,loss,flops,seed,... for ``fit``
    OUT/fit/           ``--fit``: fits, multipliers, plots and a copy of table.csv
    OUT/NAME-results.tar.gz  ``--archive``: table, fit/ and every run's results and logs

A run is ``finished`` (result.json), ``complete`` (trained, result not yet collected),
``interrupted`` (a committed checkpoint before the last step), ``started`` (a directory
without a checkpoint: restarted clean) or ``pending``. A finished or interrupted run whose
config hash differs from the sweep's is a conflict and stops the sweep before anything runs;
so is an interrupted run without ``--resume``. Finished runs are never touched again.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from filtertron.checkpoint.files import write_json_atomic
from filtertron.config import ConfigError
from filtertron.scaling import runner
from filtertron.scaling.expand import Run

TABLE_COLUMNS = (
    "variant", "n_params", "tokens", "loss", "flops", "seed", "size", "budget_kind", "budget",
    "run_id", "n_params_total", "flops_per_token", "steps", "train_loss", "wall_s",
)  # fmt: skip


def status(run: Run) -> tuple[str, int]:
    """(status, newest committed step) of a run, read from its directory."""
    d = run.dir
    if not (d / "run.json").is_file():
        return ("started" if d.exists() else "pending"), 0
    stored = runner.spec(d)
    step = runner.last_step(d)
    if stored["config_hash"] != run.config_hash and (step or runner.result(d)):
        return "conflict", step
    if runner.result(d) is not None:
        return "finished", step
    if step == run.steps:
        return "complete", step
    return ("interrupted" if step else "started"), step


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _conflict(run: Run) -> str:
    old = _flat(yaml.safe_load((run.dir / "run.yaml").read_text()))
    new = _flat(run.config.to_dict())
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]  # fmt: skip
    if runner.spec(run.dir).get("nproc") != run.nproc:
        diff.append(f"nproc: {runner.spec(run.dir).get('nproc')} -> {run.nproc}")
    return f"{run.id} ({'; '.join(diff[:4]) or 'config hash differs'})"


def check(runs: list[Run], resume: bool) -> dict[str, tuple[str, int]]:
    """Statuses of all runs; raises before anything runs if the sweep cannot proceed.

    Raises:
        ConfigError: a conflict (the sweep changed under finished or interrupted runs), or
            interrupted runs without ``resume``.
    """
    statuses = {r.id: status(r) for r in runs}
    conflicts = [_conflict(r) for r in runs if statuses[r.id][0] == "conflict"]
    if conflicts:
        raise ConfigError(
            "runs already trained with another config: " + ", ".join(conflicts) + ". Use "
            "another --out, or remove those run directories to retrain them"
        )
    stopped = [f"{r.id} (step {statuses[r.id][1]}/{r.steps})" for r in runs
               if statuses[r.id][0] == "interrupted"]  # fmt: skip
    if stopped and not resume:
        raise ConfigError(
            "interrupted runs: " + ", ".join(stopped) + "; pass --resume to continue them"
        )
    return statuses


@contextlib.contextmanager
def locked(out: Path):
    """Hold OUT/.lock, so two sweeps never run in one directory."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another sweep is running there") from None
        yield


class State:
    """OUT/sweep.json: per-run status, hash, job id and error, rewritten atomically."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / "sweep.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.update(name=name)
        self.data.setdefault("runs", {})

    def update(self, run: Run, **fields: Any) -> None:
        entry = self.data["runs"].setdefault(run.id, {})
        entry.update(config_hash=run.config_hash, **fields)
        self.data["updated"] = time.time()
        write_json_atomic(self.path, self.data)

    def job(self, run: Run) -> str | None:
        return self.data["runs"].get(run.id, {}).get("job_id")


def to_do(runs: list[Run], statuses: dict[str, tuple[str, int]]) -> list[Run]:
    """Runs that still need training, preparing their directories; collects complete ones."""
    todo = []
    for r in runs:
        st, _ = statuses[r.id]
        if st == "finished":
            continue
        if st == "complete" and runner.collect(r.dir) is not None:
            continue
        if st in ("pending", "started"):
            runner.prepare(r)
        todo.append(r)
    return todo


def run_local(
    runs: list[Run],
    state: State,
    resume: bool,
    execute: Callable[..., dict[str, Any]] = runner.execute,
    console: TextIO | None = None,
) -> list[str]:
    """Train ``runs`` one after another here, with one progress bar (in FLOPs) and ETA
    across them; returns the failed runs' errors.

    Args:
        runs: prepared runs, in order.
        state: the sweep's state file.
        resume: continue runs from their checkpoints.
        execute: trains one run: ``execute(run_dir, resume, progress)`` (plan "local":
            :func:`filtertron.scaling.runner.execute`; plan "inprocess":
            :meth:`filtertron.scaling.inprocess.InProcess.execute`).
        console: where the bar draws (default stderr).
    """
    from tqdm import tqdm

    remaining = {r.id: (r.steps - runner.last_step(r.dir)) for r in runs}
    total = sum(remaining[r.id] * r.tokens_per_step * r.flops.total for r in runs)
    failures = []
    bar = tqdm(
        total=total, unit="FLOP", unit_scale=True, desc="sweep", dynamic_ncols=True, file=console
    )
    with bar:
        for i, r in enumerate(runs):
            per_step = r.tokens_per_step * r.flops.total
            start = r.steps - remaining[r.id]
            done = [start]

            def progress(step: int, i=i, r=r, per_step=per_step, done=done) -> None:
                if step > done[0]:
                    where = f"run {i + 1}/{len(runs)} {r.id} step {step}/{r.steps}"
                    bar.set_postfix_str(where, refresh=False)
                    bar.update((step - done[0]) * per_step)
                    done[0] = step

            bar.set_postfix_str(f"run {i + 1}/{len(runs)} {r.id}", refresh=False)

            state.update(r, status="running", started=time.time())
            progress(start)
            try:
                res = execute(r.dir, resume=resume, progress=progress)
            except runner.RunFailed as e:
                state.update(r, status="failed", error=str(e))
                failures.append(str(e))
                bar.write(f"FAILED {e}")
                continue
            progress(r.steps)
            state.update(r, status="finished", loss=res["loss"], error=None)
            bar.write(f"finished {r.id}: loss {res['loss']:.4f} ({res['wall_s']:.1f} s)")
    return failures


def write_scripts(runs: list[Run], out: Path) -> list[Path]:
    """OUT/scripts/<id>.sh per run (each trains its run, resuming if it has a checkpoint)
    and all.sh running them in order."""
    folder = out / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    env = runner.environment()["PYTHONPATH"]
    paths = []
    for r in runs:
        cmd = [sys.executable, "-m", "filtertron.scaling.runner", str(r.dir), "--resume"]
        text = (
            "#!/bin/sh\n"
            f"# filtertron sweep run {r.id}: {r.steps} steps, {r.total_flops:.3g} FLOPs\n"
            "set -e\n"
            f"cd {shlex.quote(str(Path.cwd()))}\n"
            f"export PYTHONPATH={shlex.quote(env)}\n"
            f"exec {shlex.join(cmd)}\n"
        )
        path = folder / f"{r.id}.sh"
        path.write_text(text)
        path.chmod(0o755)
        paths.append(path)
    all_sh = folder / "all.sh"
    all_sh.write_text("#!/bin/sh\nset -e\n" + "".join(f"{shlex.quote(str(p))}\n" for p in paths))
    all_sh.chmod(0o755)
    return paths + [all_sh]


def slurm_parameters(sweep_slurm: dict[str, Any], name: str, n: int) -> dict[str, Any]:
    """submitit AutoExecutor parameters: the sweep's ``slurm`` mapping over our defaults."""
    return {"name": f"filtertron-{name}", "timeout_min": 60, "nodes": 1, "tasks_per_node": 1,
            **sweep_slurm}  # fmt: skip


def submit_slurm(
    runs: list[Run], out: Path, params: dict[str, Any], cluster: str, state: State
) -> list[Any]:
    """Submit the runs as one job array through submitit (``cluster``: slurm, or local /
    debug to run the same jobs here); records each job id in the state."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
    except RuntimeError as e:
        raise ConfigError(
            f"--plan slurm: {e} Use --dry-run to see the job array, or --slurm-cluster local "
            "to run the jobs through submitit's local executor"
        ) from None
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(runner.execute, str(r.dir), True) for r in runs]
    for r, j in zip(runs, jobs):
        state.update(r, status="submitted", job_id=str(j.job_id))
    return jobs


def slurm_preview(runs: list[Run], params: dict[str, Any]) -> str:
    """What ``--plan slurm`` would submit: one array, its parameters, a command per task."""
    lines = [f"slurm job array of {len(runs)} task(s) through submitit, parameters:"]
    lines += [f"  {k}: {v!r}" for k, v in params.items()]
    for i, r in enumerate(runs):
        cmd = [sys.executable, "-m", "filtertron.scaling.runner", str(r.dir), "--resume"]
        lines.append(f"  [{i}] {r.id}: {shlex.join(cmd)}")
    return "\n".join(lines)


def write_table(runs: list[Run], out: Path) -> tuple[Path, int]:
    """OUT/table.csv from the finished runs; returns its path and row count."""
    rows = []
    for r in runs:
        res = runner.result(r.dir)
        if res is None or res["config_hash"] != r.config_hash:
            continue
        row = {**res, "run_id": res["id"]}
        rows.append({k: row.get(k) for k in TABLE_COLUMNS})
    path = out / "table.csv"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path, len(rows)


RUN_FILES = ("run.json", "result.json", "metrics.jsonl", "attempts.jsonl", "train.log")


def archive(runs: list[Run], out: Path, name: str) -> Path:
    """OUT/<name>-results.tar.gz: table.csv, sweep.json, fit/ (if fitted) and each run's
    run.json, result.json, metrics.jsonl, attempts.jsonl and train.log (no checkpoints)."""
    import tarfile

    path = out / f"{name}-results.tar.gz"
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in ("table.csv", "sweep.json", "fit"):
            if (out / f).exists():
                tar.add(out / f, arcname=f"{name}/{f}")
        for r in runs:
            for f in RUN_FILES:
                if (r.dir / f).is_file():
                    tar.add(r.dir / f, arcname=f"{name}/runs/{r.id}/{f}")
    tmp.replace(path)
    return path

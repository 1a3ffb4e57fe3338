"""``filtertron sweep SWEEP.yaml [--out DIR] [--set section.key=value ...]
[--plan local|inprocess|script|slurm] [--dry-run] [--resume] [--collect] [--fit]``.

Expands the sweep file (:mod:`filtertron.scaling.sweep_config`) into runs, checks what DIR
already holds, then: ``local`` trains the missing runs here one after another, a trainer
process each; ``inprocess`` trains them one after another inside this process (one process
group, compiled graphs kept across runs: :mod:`filtertron.scaling.inprocess`); ``script``
writes one shell script per run; ``slurm`` submits them as one job array through submitit.
Finished runs are skipped; interrupted ones continue with ``--resume``. Every invocation
ends by writing DIR/table.csv from the finished runs (``--collect`` does only that);
``--fit`` then fits it into DIR/fit (as ``filtertron fit``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from filtertron.config import ConfigError
from filtertron.scaling import runner
from filtertron.scaling import sweep as sw
from filtertron.scaling.expand import expand
from filtertron.scaling.sweep_config import load_sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep file (e.g. configs/sweeps/tiny.yaml)")
    p.add_argument("--out", default=None, help="sweep directory (default runs/sweeps/NAME)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="run-config override for every run (repeatable), e.g. data.path=data/perl",
    )
    p.add_argument(
        "--plan",
        choices=("local", "inprocess", "script", "slurm"),
        default="local",
        help="local: a trainer process per run; inprocess: every run in this process (one "
        "process group, compiled graphs kept); script: a shell script per run; slurm: a job "
        "array",
    )
    p.add_argument("--dry-run", action="store_true", help="show the runs; change nothing")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs")
    p.add_argument("--collect", action="store_true", help="only write table.csv")
    p.add_argument("--fit", action="store_true", help="fit table.csv into DIR/fit at the end")
    p.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="submitit executor for --plan slurm (local/debug run the jobs on this machine)",
    )
    p.add_argument("--wait", action="store_true", help="--plan slurm: wait for the jobs")
    p.add_argument(
        "--device-profile",
        default=None,
        help="device whose throughput model --dry-run's time estimate uses (h200, cpu; "
        "default: the sweep's device_profile, else cpu)",
    )
    p.add_argument("--n-boot", type=int, default=200, help="--fit: bootstrap draws")
    p.add_argument(
        "--archive",
        action="store_true",
        help="at the end, pack DIR/fit (table, fits, multipliers, plots) and every run's "
        "results and logs into DIR/NAME-results.tar.gz",
    )


def _plan_lines(runs, statuses, device, plan: str) -> list[str]:
    from filtertron.scaling.estimate import describe, estimate

    per, total_s = estimate(runs, device, plan)
    lines = [
        f"{'run':34s} {'status':12s} {'N':>9s} {'tokens':>10s} {'steps':>6s} "
        f"{'FLOPs':>9s} {'lr':>8s} {'warmup':>6s} {'step ms':>7s} {'est s':>6s}"
    ]
    for r, e in zip(runs, per):
        st, step = statuses[r.id]
        st = f"{st} {step}" if st == "interrupted" else st
        lines.append(
            f"{r.id:34s} {st:12s} {r.params.non_embedding:9d} {r.tokens:10d} {r.steps:6d} "
            f"{r.total_flops:9.3g} {r.config.train.lr:8.2e} {r.config.train.warmup:6d} "
            f"{1e3 * e.step_s:7.1f} {e.total_s:6.1f}"
        )
    total = sum(r.total_flops for r in runs)
    train_s = sum(e.train_s for e in per)
    lines.append(f"{len(runs)} runs, {total:.3g} training FLOPs in all")
    lines.append(
        f"estimated {total_s:.0f} s ({total_s / 60:.1f} min) with --plan {plan} on "
        f"{device.name}: {train_s:.0f} s training steps, {total_s - train_s:.0f} s "
        "start-up, validation, checkpoints and fit"
    )
    return lines + describe(device)


def run(args: argparse.Namespace) -> int:
    sweep, sweep_dir = load_sweep(args.sweep)
    out = Path(args.out or f"runs/sweeps/{sweep.name}")
    if args.plan == "inprocess" and sweep.nproc != 1:
        raise ConfigError(
            f"nproc={sweep.nproc}: --plan inprocess trains every run in this one process "
            "(world size 1); use --plan local for runs of several processes"
        )
    runs = expand(sweep, sweep_dir, out, args.overrides)
    params = sw.slurm_parameters(sweep.slurm, sweep.name, len(runs))
    if args.dry_run:
        from filtertron.scaling.estimate import profile

        device = profile(args.device_profile or sweep.device_profile or "cpu")
        statuses = {r.id: sw.status(r) for r in runs}
        print("\n".join(_plan_lines(runs, statuses, device, args.plan)))
        if args.plan == "slurm":
            todo = [r for r in runs if statuses[r.id][0] != "finished"]
            print(sw.slurm_preview(todo, params))
        return 0
    with sw.locked(out):
        statuses = sw.check(runs, args.resume)
        state = sw.State(out, sweep.name)
        failures: list[str] = []
        if not args.collect:
            try:
                todo = sw.to_do(runs, statuses)
            except runner.MetricsError as e:  # a trained run's metrics are corrupt
                print(f"filtertron sweep: {e}", file=sys.stderr)
                return 2
            print(f"{len(runs) - len(todo)} of {len(runs)} runs finished; {len(todo)} to do")
            if args.plan == "local" and todo:
                failures = sw.run_local(todo, state, args.resume)
            elif args.plan == "inprocess" and todo:
                from filtertron.scaling.inprocess import InProcess

                with InProcess(out) as here:
                    failures = sw.run_local(
                        todo, state, args.resume, execute=here.execute, console=here.console
                    )
            elif args.plan == "script" and todo:
                paths = sw.write_scripts(todo, out)
                print(f"wrote {len(paths) - 1} scripts; run them all with {paths[-1]}")
            elif args.plan == "slurm" and todo:
                jobs = sw.submit_slurm(todo, out, params, args.slurm_cluster, state)
                print(f"submitted {len(jobs)} jobs: {', '.join(str(j.job_id) for j in jobs)}")
                if args.wait:
                    for r, j in zip(todo, jobs):
                        try:
                            j.result()
                        except Exception as e:  # submitit re-raises the job's error
                            failures.append(f"{r.id}: {e}")
        table, n = sw.write_table(runs, out)
        print(f"wrote {table} ({n} of {len(runs)} runs)")
        for f in failures:
            print(f"failed: {f}", file=sys.stderr)
        if args.fit and n:
            from filtertron.scaling.analysis import analyze
            from filtertron.scaling.report import write_all
            from filtertron.scaling.table import TableError, read_table

            try:
                analysis = analyze(read_table(table), sweep.baseline, n_boot=args.n_boot)
                files = write_all(analysis, out / "fit")
            except TableError as e:  # e.g. a variant with too few finished runs yet
                print(f"not fitted: {e}", file=sys.stderr)
            else:
                shutil.copyfile(table, out / "fit" / "table.csv")
                print(f"fitted: {', '.join(str(f) for f in files)}")
                print((out / "fit" / "results.md").read_text().split("\n## The runs")[0])
        elif n:
            print(
                f"fit with: filtertron fit {table} --out {out / 'fit'} --baseline {sweep.baseline}"
            )
        if args.archive:
            print(f"wrote {sw.archive(runs, out, sweep.name)}")
    return 1 if failures else 0

"""Stand-ins for the GPU check's commands that need a GPU (see ``tests/fake_gpu/python``).

    stub.py -m pytest ARGS...                    pytest --collect-only over the same ARGS
    stub.py -m deepspeed.launcher.runner ARGS... the launcher's and the trainer's own parsers
                                                 and config loader, then a fake run's files
    stub.py -m filtertron.cli CMD ARGS...        prepare runs for real; eval and generate are
                                                 parsed by their own parsers, then faked
    stub.py bench/NAME.py ARGS...                every option must be one the script's --help
                                                 lists; then a fake result

A stub fails (exit 2, the reason on stderr) if the command would not even start on a GPU: a
module or script that is not there, an option nobody parses, a config key that does not
exist. With ``FAKE_GPU_REAL=1`` the launcher, eval and generate run for real on the CPU (a
slow test): the training, resume and evaluation the check does, on gloo instead of NCCL.
The fake run writes what tools/gpu/check_run.py reads: ``metrics.jsonl`` with the same losses
for the same steps in every run (so a resume repeats them exactly) and checkpoint folders.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def die(msg: str) -> None:
    print(f"fake GPU stub: {msg}", file=sys.stderr)
    sys.exit(2)


def real(argv: list[str]) -> None:
    """Run ``python ARGV`` for real on the CPU: no fake GPU, the caller's compile caches."""
    env = {k: v for k, v in os.environ.items() if k != "FILTERTRON_FAKE_GPU"}
    for var in ("TORCH_EXTENSIONS_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        if f"FAKE_GPU_{var}" in env:
            env[var] = env[f"FAKE_GPU_{var}"]
    os.execve(sys.executable, [sys.executable, *argv], env)


def need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        die(f"no module named {name}")


def pytest(args: list[str]) -> None:
    need_module("pytest")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", *args])
    sys.exit(proc.returncode)


def fake_run(cfg, resume: bool) -> None:
    """The files a training run leaves: metrics of each step, checkpoints, model.pt."""
    out = Path(cfg.train.out_dir)
    steps, every = cfg.train.steps, cfg.train.save_every
    start = 0
    if resume:
        done = sorted(int(d.name[5:]) for d in (out / "checkpoints").glob("step_*"))
        start = done[-1] if done else 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a") as f:
        for step in range(start + 1, steps + 1):
            row = {"step": step, "loss": 7.6 * 0.985**step, "tokens_per_s": 1e4, "mfu": 0.01}
            if cfg.eval.every and step % cfg.eval.every == 0:
                row["val_loss"] = row["loss"] - 0.1
            f.write(json.dumps(row) + "\n")
            if (every and step % every == 0) or step == steps:
                ckpt = out / "checkpoints" / f"step_{step:08d}"
                ckpt.mkdir(parents=True, exist_ok=True)
                (ckpt / "filtertron.json").write_text(json.dumps({"step": step}))
        f.write(json.dumps({"step": steps, "val_loss": 7.6 * 0.985**steps - 0.1}) + "\n")
    (out / "checkpoints" / f"step_{steps:08d}" / "model.pt").write_bytes(b"fake")
    loss = 7.6 * 0.985**steps
    print(f"fake GPU stub: trained {out} steps {start + 1}-{steps}")
    print(f"done: step {steps}, loss {loss:.4f}, val_loss {loss - 0.1:.4f}")  # as the trainer


def launcher(args: list[str]) -> None:
    need_module("deepspeed.launcher.runner")
    from deepspeed.launcher.runner import parse_args

    ds = parse_args(args)
    script = ROOT / ds.user_script
    if not script.is_file():
        die(f"the launcher's script {ds.user_script} does not exist")
    from filtertron.config import load_config
    from filtertron.train.cli import add_arguments

    p = argparse.ArgumentParser(prog=ds.user_script)
    add_arguments(p, config_flag=True)
    user = p.parse_args(ds.user_args)
    cfg = load_config(user.config, user.overrides)  # every key must exist, every value check
    if os.environ.get("FAKE_GPU_REAL") == "1":
        real(["-m", "deepspeed.launcher.runner", *args])
    fake_run(cfg, user.resume)


def cli(args: list[str]) -> None:
    from filtertron.cli import SUBCOMMANDS

    if not args or args[0] not in SUBCOMMANDS:
        die(f"filtertron has no subcommand {args[:1]}")
    if args[0] == "prepare" or os.environ.get("FAKE_GPU_REAL") == "1":
        real(["-m", "filtertron.cli", *args])
    p = argparse.ArgumentParser(prog=f"filtertron {args[0]}")
    importlib.import_module(SUBCOMMANDS[args[0]][0]).add_arguments(p)
    parsed = p.parse_args(args[1:])
    run = Path(parsed.checkpoints[0] if args[0] == "eval" else parsed.checkpoint)
    if not (run / "checkpoints").is_dir():
        die(f"filtertron {args[0]}: no run at {run}")
    if args[0] == "eval":
        Path(parsed.out).mkdir(parents=True, exist_ok=True)
        (Path(parsed.out) / "results.json").write_text("{}\n")
        print(f"| {run.name} | 1.0 (fake GPU) | 1.0 (fake GPU) |")
    else:
        print("fake GPU stub: generated text")


def bench(args: list[str]) -> None:
    script = ROOT / args[0]
    if not script.is_file():
        die(f"no script {args[0]}")
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    known = set(re.findall(r"(--[\w-]+)", help_text))
    for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
        # argparse accepts an unambiguous prefix of an option
        if flag not in known and len([k for k in known if k.startswith(flag)]) != 1:
            die(f"{args[0]}: option {flag} is not one of its options {sorted(known)}")
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text("{}\n")
    print(f"SUMMARY: fake GPU: {args[0]} would run {' '.join(args[1:])}")


def main(argv: list[str]) -> None:
    if argv[:2] == ["-m", "pytest"]:
        pytest(argv[2:])
    elif argv[:2] == ["-m", "deepspeed.launcher.runner"]:
        launcher(argv[2:])
    elif argv[:2] == ["-m", "filtertron.cli"]:
        cli(argv[2:])
    elif argv and argv[0].startswith("bench/"):
        bench(argv)
    else:
        die(f"nothing to stub for {argv}")


if __name__ == "__main__":
    main(sys.argv[1:])

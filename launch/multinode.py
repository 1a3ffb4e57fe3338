"""Build (and run) the deepspeed launcher command for a filtertron run across nodes.

    python launch/multinode.py --config configs/gpt2-small/bilateral.yaml \
        --hostfile launch/hostfile.example --nodes 2 --procs-per-node 8 \
        --master-addr node001 [--no-ssh --node-rank R] [--dry-run] [-- --set train.steps=10]

Without ``--no-ssh`` deepspeed starts all nodes from this one over passwordless ssh (pdsh);
with it, run the same command on every node with its own ``--node-rank`` (0 .. nodes-1).
Arguments after ``--`` go to the training script (e.g. ``--set`` overrides, ``--resume``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    if not Path(args.hostfile).is_file():
        raise SystemExit(f"--hostfile {args.hostfile}: no such file (see launch/hostfile.example)")
    cmd = [
        "deepspeed",
        "--hostfile",
        args.hostfile,
        "--master_addr",
        args.master_addr,
        "--master_port",
        str(args.master_port),
    ]
    if args.nodes:
        cmd += ["--num_nodes", str(args.nodes)]
    if args.procs_per_node:
        cmd += ["--num_gpus", str(args.procs_per_node)]
    if args.no_ssh:
        cmd += ["--no_ssh", "--node_rank", str(args.node_rank)]
    return cmd + [str(HERE / "train.py"), "--config", args.config, *extra]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--hostfile", required=True)
    p.add_argument("--nodes", type=int, default=None, help="use the first N hosts of the file")
    p.add_argument("--procs-per-node", type=int, default=None)
    p.add_argument("--master-addr", required=True, help="address of node 0, reachable by all")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--no-ssh", action="store_true", help="launch this node only")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    args = p.parse_args(argv)
    cmd = build_command(args, extra)
    print(shlex.join(cmd), flush=True)
    return 0 if args.dry_run else subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())

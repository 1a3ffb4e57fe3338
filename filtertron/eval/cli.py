"""``filtertron eval CHECKPOINT... --data DIR [options]``: perplexity, long context, robustness
and diagnostics of one or more checkpoints, written as rows to JSON/CSV plus plots.

Per checkpoint, on the scored span of ``--split`` (whole, or ``--max-tokens`` cut at a
document boundary; the first token is context only, see :mod:`filtertron.eval.perplexity`):

- ``perplexity`` rows: token/word perplexity and bits per byte at each ``--lengths`` L with
  stride S (``--stride``, default L: disjoint windows);
- ``contamination`` rows: at the robustness length (``--robust-length``, default the first of
  ``--lengths``), each rate of ``--contamination`` (p = 0 always included, the clean value);
- ``attack`` rows: ``--attack fgsm|pgd`` at each ``--epsilon``, beside the clean perplexity;
- ``diagnostics`` rows (``--diagnostics``): token similarity and attention entropy per layer.

Under a launcher (RANK and WORLD_SIZE set, or ``--nproc N`` which starts torchrun) windows are
split across ranks and the NLL and token sums all-reduced; rank 0 writes ``--out``. Models run
on ``--device`` (default: the GPU when there is one). Library and launcher log lines go to
``OUT/logs/`` unless ``--verbose``.

This module only parses; the work is :func:`filtertron.eval.evaluate.check_request` and
:func:`~filtertron.eval.evaluate.evaluate_checkpoints` (and
:func:`~filtertron.eval.evaluate.evaluate_model` for a built model).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from filtertron.eval import long_context as lc
from filtertron.eval.evaluate import TOKENS_PER_BATCH, EvalOptions
from filtertron.eval.robustness import ATTACKS, CONTAMINATION_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="run directory, its checkpoints/ directory, or a step directory",
    )
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument(
        "--lengths",
        default=None,
        help="context lengths: tokens, K (x1024) or x (x training length), e.g. "
        "128,4K or 1x,2x,4x,8x,16x (default: the training length)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="sliding-window stride S <= every length: each window scores its last "
        "S tokens (default: S = L, disjoint windows)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"windows per forward pass (default: max(1, {TOKENS_PER_BATCH} // L))",
    )
    p.add_argument(
        "--impl",
        default="auto",
        choices=lc.EVAL_IMPLS,
        help="attention implementation (auto: a fused, memory-linear one)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="score only the longest prefix of whole documents within N tokens",
    )
    p.add_argument(
        "--contamination",
        default=None,
        help="comma-separated contamination rates, e.g. 0,0.05,0.1,0.2",
    )
    p.add_argument(
        "--contamination-mode",
        default="fixed",
        choices=CONTAMINATION_MODES,
        help="replace hit inputs by one fixed token or by uniform random tokens "
        "(targets stay clean)",
    )
    p.add_argument(
        "--contamination-token",
        default="AAA",
        help="fixed replacement: a token id, or text whose first token is used "
        "(default: AAA, as in the word-swap attack)",
    )
    p.add_argument(
        "--attack",
        default=None,
        choices=ATTACKS,
        help="embedding-space attack (L-inf on the embedding output y0)",
    )
    p.add_argument("--epsilon", default=None, help="attack radius(es), comma-separated")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps K (default 10)")
    p.add_argument(
        "--pgd-alpha", type=float, default=None, help="PGD step size (default 2.5 epsilon / steps)"
    )
    p.add_argument(
        "--robust-length",
        default=None,
        help="length for contamination and attacks (default: first of --lengths)",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="token similarity and attention entropy per layer",
    )
    p.add_argument(
        "--diagnostics-windows",
        type=int,
        default=4,
        help="windows of the training length fed to the diagnostics",
    )
    p.add_argument("--out", default="runs/eval", help="output directory")
    p.add_argument(
        "--name",
        nargs="+",
        default=None,
        help="a label per checkpoint (default: the run directory name)",
    )
    p.add_argument("--seed", type=int, default=0, help="contamination seed")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (started with torchrun)",
    )
    p.add_argument("--master-port", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        default=None,
        help="where the models run: cpu, cuda, cuda:N (default: cuda if present)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show library and launcher log lines (default: OUT/logs/ only)",
    )


def _floats(spec: str | None, what: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()] if spec else []
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {spec!r}") from None


def _fixed_token(spec: str, dataset_dir: str) -> int:
    if spec.strip().isdigit():
        return int(spec)
    from filtertron.data import DataError, load_tokenizer

    try:
        ids = load_tokenizer(dataset_dir).encode(spec)
    except (DataError, FileNotFoundError) as e:
        raise ValueError(f"--contamination-token {spec!r}: {e}") from e
    if not ids:
        raise ValueError(f"--contamination-token {spec!r} encodes to no token")
    return int(ids[0])


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of parsed command-line arguments."""
    opts = EvalOptions(
        lengths=args.lengths,
        stride=args.stride,
        batch_size=args.batch_size,
        impl=args.impl,
        contamination=_floats(args.contamination, "--contamination"),
        contamination_mode=args.contamination_mode,
        attack=args.attack,
        epsilons=_floats(args.epsilon, "--epsilon"),
        pgd_steps=args.pgd_steps,
        pgd_alpha=args.pgd_alpha,
        robust_length=args.robust_length,
        diagnostics=args.diagnostics,
        diagnostics_windows=args.diagnostics_windows,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if opts.attack and not opts.epsilons:
        raise ValueError("--attack needs --epsilon (e.g. --epsilon 0.01,0.05)")
    if any(not 0 <= p <= 1 for p in opts.contamination):
        raise ValueError(f"--contamination: rates must be in [0, 1], got {opts.contamination}")
    if any(e < 0 for e in opts.epsilons) or opts.pgd_steps < 1:
        raise ValueError("--epsilon must be >= 0 and --pgd-steps >= 1")
    if opts.contamination and opts.contamination_mode == "fixed":
        opts.contamination_token = _fixed_token(args.contamination_token, args.data)
    return opts


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron eval``; returns the exit status (2 for a refused request)."""
    from filtertron import logs
    from filtertron.parallel import launcher

    log_dir = Path(args.out) / "logs"
    if args.nproc > 1 and not launcher.inside_launcher():
        argv = launcher.argv_from_namespace(
            args, positional="checkpoints", skip=("nproc", "master_port")
        )
        cmd, port = launcher.torchrun_command(
            ["-m", "filtertron.cli", "eval", *argv], args.nproc, args.master_port
        )
        return launcher.run_child(cmd, log_dir, args.verbose, port)
    from filtertron.eval.evaluate import EvalRequestError, check_request, evaluate_checkpoints
    from filtertron.parallel.distributed import LaunchError, discover

    try:  # srun / mpirun tasks carry no WORLD_SIZE: read their place as training does
        place = discover(os.environ)
    except LaunchError as e:
        print(f"filtertron eval: launch error: {e}", file=sys.stderr)
        return 2
    world, rank = place.world_size, place.rank
    try:
        if world > 1:
            from filtertron.parallel.distributed import init_distributed

            logs.setup(log_dir, rank, args.verbose)
            with logs.quiet_output():
                info = init_distributed()
            rank, world = info.rank, info.world_size
        try:
            opts = options_from_args(args)
        except ValueError as e:
            raise EvalRequestError(str(e)) from e
        request = check_request(
            args.checkpoints, args.data, opts, args.split, args.max_tokens, args.name
        )  # refused requests write nothing
        logs.setup(log_dir, rank, args.verbose)
        evaluate_checkpoints(request, opts, args.out, rank, world, args.device)
    except EvalRequestError as e:
        if rank == 0:
            print(f"filtertron eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0

"""Plan "inprocess": a sweep's runs trained one after another inside this Python process.

The run directories, trainer, checkpoints, ``result.json`` and resume rules are those of plan
"local" (:func:`filtertron.scaling.runner.execute`, which starts ``filtertron train`` per
run); only where the trainer runs differs. :class:`InProcess` creates one process group of
world size 1 (gloo on CPU, NCCL on CUDA, :func:`~filtertron.parallel.distributed.
init_distributed`) when it opens and destroys it when it closes; every run builds its
:class:`~filtertron.train.trainer.Trainer` in that group, on one device. Per run, what a
fresh process would start from is restored and what a run leaves behind is released:

- RNG: torch (CPU and CUDA), Python's ``random`` and numpy's global generator are reseeded
  from OS entropy, as a new interpreter seeds them; the trainer then seeds torch from
  ``train.seed`` (a resumed run loads its checkpoint's states) as it does in its own process;
- output: file descriptors 1 and 2, ``sys.stdout`` and ``sys.stderr`` point at the run's
  ``train.log`` while it trains, and logging is set up for ``RUN/logs/rank0.log``, as for
  a trainer process; the sweep's progress bar keeps the console;
- after every run, failed ones too, the DeepSpeed engine is destroyed, the TensorBoard writer
  closed, garbage collected and CUDA's cached blocks released;
- compiled graphs stay: torch.compile caches live on code objects, so a run whose shapes
  match an earlier run's reuses its graphs. ``automatic_dynamic_shapes`` is off while the
  plan runs, so a new shape compiles a static graph as it would in a fresh process (not a
  dynamic one because another size ran before), and the recompile limit holds an entry per
  shape of the sweep.

Not reset: messages a module logs once per process (e.g. the attention impl chosen by
``auto``) appear in the first run's log only. A failed run (a known error, or any exception
from the trainer) is recorded and the sweep moves on, as under plan "local"; Ctrl-C tears the
run down and stops the sweep. A killed sweep leaves what a killed trainer leaves, so
``--resume`` continues it under either plan.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from filtertron import logs
from filtertron.config import ConfigError, load_config
from filtertron.scaling import runner

PROG = "filtertron train (in-process)"
RECOMPILE_LIMIT = 64  # cache entries per code object: one per (variant, size) of a sweep


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's output to ``path`` meanwhile: file descriptors 1 and 2 (what C
    code and subprocesses write) and ``sys.stdout`` / ``sys.stderr`` (which need not be on
    those descriptors: a notebook, a test runner's capture)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    saved = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8", buffering=1) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        try:
            yield
        finally:
            f.flush()
            sys.stdout, sys.stderr = saved
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)


def console() -> tuple[TextIO, bool]:
    """A stream to the current stderr that :func:`output_to` leaves alone, and whether it
    is ours to close: a duplicate of its file descriptor, or the stream itself when it has
    none (a notebook's)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr, False
    return os.fdopen(os.dup(fd), "w", buffering=1), True


def fresh_rng() -> None:
    """Seed every global generator from OS entropy, as a new interpreter does."""
    random.seed()
    np.random.seed()
    torch.seed()  # CPU and, when initialised, every CUDA device


def release(trainer: Any) -> None:
    """Tear down what a trainer holds: its TensorBoard writer and DeepSpeed engine."""
    if trainer is None:
        return
    if getattr(trainer, "writer", None) is not None:
        trainer.writer.close()
    engine = getattr(trainer, "engine", None)
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()


class InProcess:
    """The process group and global settings that a sweep's in-process runs share.

    Use as a context manager; :meth:`execute` trains one prepared run. ``console`` is the
    sweep's terminal, kept while a run's output goes to its train.log.
    """

    def __init__(self, out: Path, verbose: bool = False) -> None:
        self.out = Path(out)
        self.verbose = verbose
        self.console: TextIO | None = None
        self._saved_dynamo: dict[str, Any] = {}
        self._close_console = False

    def __enter__(self) -> InProcess:
        import torch.distributed as dist

        from filtertron.parallel.distributed import free_port, init_distributed

        if dist.is_initialized() and dist.get_world_size() != 1:
            raise ConfigError(
                f"--plan inprocess: this process is rank {dist.get_rank()} of "
                f"{dist.get_world_size()}; run the sweep outside a launcher, or use --plan local"
            )
        self.console, self._close_console = console()
        self._set_dynamo()
        if not dist.is_initialized():
            # A rendezvous inherited from a launcher around the sweep must not be joined.
            for k in runner.RENDEZVOUS_VARS:
                os.environ.pop(k, None)
            os.environ.update(
                RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
            )  # fmt: skip
            self.out.mkdir(parents=True, exist_ok=True)
            with output_to(self.out / "inprocess.log"):  # DeepSpeed's set-up chatter
                init_distributed()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore_dynamo()
        if self.console is not None and self._close_console:
            self.console.close()
        self.console = None

    def _set_dynamo(self) -> None:
        import torch._dynamo.config as dynamo

        wanted = {
            "automatic_dynamic_shapes": False,
            "recompile_limit": max(dynamo.recompile_limit, RECOMPILE_LIMIT),
            "accumulated_recompile_limit": max(dynamo.accumulated_recompile_limit, 4096),
        }
        self._saved_dynamo = {k: getattr(dynamo, k) for k in wanted}
        for k, v in wanted.items():
            setattr(dynamo, k, v)

    def _restore_dynamo(self) -> None:
        import torch._dynamo.config as dynamo

        for k, v in self._saved_dynamo.items():
            setattr(dynamo, k, v)

    def execute(
        self,
        run_dir: str | Path,
        resume: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Train a prepared run here and collect its result (as
        :func:`filtertron.scaling.runner.execute` does in a subprocess).

        Args:
            run_dir: the run's directory (with run.yaml and run.json).
            resume: continue from its newest committed checkpoint if it has one.
            progress: called with each trained step.

        Returns:
            The result (also written to result.json).

        Raises:
            RunFailed: training stopped with an error (its line and traceback are in the
                run's train.log and logs/), or ended without a final validation loss.
        """
        run_dir = Path(run_dir)
        if (done := runner.result(run_dir)) is not None:
            return done
        if (done := runner.collect(run_dir)) is not None:
            return done
        resume = runner.begin(run_dir, resume)
        cfg = load_config(run_dir / "run.yaml")
        runner.event(run_dir, event="start", plan="inprocess", resume=resume)
        status: int | None = None
        try:
            with output_to(run_dir / "train.log"):
                print(f"\n$ (in-process) train {run_dir / 'run.yaml'}" + " --resume" * resume)
                status = self._train(cfg, resume, progress)
        finally:
            logs.setup(None)  # the sweep's console logging again
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            runner.event(run_dir, event="end", returncode=status)
        if status != 0:
            raise runner.RunFailed(
                f"run {run_dir.name}: training stopped with status {status}; "
                f"see {run_dir}/train.log"
            )
        return runner.finish(run_dir)

    def _train(self, cfg, resume: bool, progress: Callable[[int], None] | None) -> int:
        """Train in this process, as :func:`filtertron.train.entry.train` does in its own;
        returns its exit status (a known error 1 or 2, anything else 1)."""
        from filtertron.train.entry import known_errors
        from filtertron.train.trainer import Trainer

        fresh_rng()
        logs.setup(Path(cfg.train.out_dir) / "logs", 0, self.verbose)
        errors = known_errors()
        trainer = None
        started = time.time()
        try:
            trainer = Trainer(cfg, resume=resume)
            final = trainer.run(on_step=progress)
        except tuple(errors) as e:
            kind, status = next(v for t, v in errors.items() if isinstance(e, t))
            logs.report_error(PROG, kind, e)
            return status
        except Exception:  # what would end a trainer process with a traceback
            traceback.print_exc()
            return 1
        finally:
            release(trainer)
            trainer = None
        print(
            f"done: step {final['step']}, loss {final.get('loss', float('nan')):.4f}, "
            f"val_loss {final['val_loss']:.4f} ({time.time() - started:.1f} s in-process)"
        )
        return 0

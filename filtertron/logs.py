"""Quiet by default: what a run prints, and where everything else goes.

The console shows filtertron's progress bar and interval lines, its warnings, and every
error; everything else (DeepSpeed's and megatron-core's INFO/WARNING lines, Python warnings,
compiler chatter) goes to ``LOG_DIR/rank{r}.log``. ``--verbose`` shows all of it. The pieces:

- :func:`setup`: the root logger writes to the log file and, through :class:`ConsoleFilter`,
  to stderr; DeepSpeed's logger, which brings its own stdout handler and does not
  propagate, is made to propagate like any other (:class:`_RoutedLogger`);
- :func:`quiet_output`: file-descriptor level redirection of stdout/stderr into the log file
  around library set-up that prints directly (op builds, shared-memory set-up);
- :func:`report_error`: a known error (bad config, bad data, divergence) prints as one line
  naming the cause; its traceback goes to the log file;
- :class:`Relay`: the launcher processes (deepspeed's runner and launch scripts, torchrun)
  print their own lines; the process that started the launcher reads its output and sends
  those lines to ``LOG_DIR/launcher.log`` (:func:`filtertron.parallel.launcher.run_child`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_OURS = "_filtertron_handler"
_state: dict[str, object] = {"file": None, "quiet": False}


class _RoutedLogger(logging.Logger):
    """DeepSpeed's logger: handlers it adds to itself are ignored and records propagate.

    DeepSpeed behaviour (``deepspeed.utils.logging.LoggerFactory``): the "DeepSpeed" logger
    gets a stdout handler and ``propagate = False`` when deepspeed is first imported.
    """

    @property
    def propagate(self) -> bool:  # type: ignore[override]
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 (logging's name)
        if getattr(hdlr, _OURS, False):
            super().addHandler(hdlr)


def _route_deepspeed() -> None:
    logging.setLoggerClass(_RoutedLogger)
    try:
        logger = logging.getLogger("DeepSpeed")
    finally:
        logging.setLoggerClass(logging.Logger)
    logger.__class__ = _RoutedLogger  # also when deepspeed was imported before
    for h in list(logger.handlers):
        logger.removeHandler(h)


class ConsoleFilter(logging.Filter):
    """Which records reach the console.

    Always errors; with ``verbose`` everything; otherwise filtertron's warnings and, on rank
    0, the INFO lines of filtertron's modules (the bare "filtertron" logger's INFO chatter,
    e.g. the attention implementation chosen, stays in the file).
    """

    def __init__(self, rank: int, verbose: bool) -> None:
        super().__init__()
        self.rank, self.verbose = rank, verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or self.verbose:
            return True
        ours = record.name == "filtertron" or record.name.startswith("filtertron.")
        if not ours or self.rank != 0:
            return False
        return record.levelno >= logging.WARNING or record.name != "filtertron"


def _mark(h: logging.Handler) -> logging.Handler:
    setattr(h, _OURS, True)
    return h


def setup(log_dir: str | Path | None = None, rank: int = 0, verbose: bool = False) -> Path | None:
    """Configure logging for this process (idempotent: replaces an earlier set-up).

    Args:
        log_dir: Where ``rank{rank}.log`` goes (created); None for the console only.
        rank: This process's rank (the console shows INFO lines only on rank 0).
        verbose: Show library lines on the console too.

    Returns:
        The log file, or None.
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.INFO)
    logging.getLogger("filtertron").setLevel(logging.INFO)
    console = _mark(logging.StreamHandler(sys.stderr))
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    console.addFilter(ConsoleFilter(rank, verbose))
    root.addHandler(console)
    path = None
    if log_dir is not None:
        path = Path(log_dir) / f"rank{rank}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        file = _mark(logging.FileHandler(path, encoding="utf-8"))
        file.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(file)
    _state.update(file=path, quiet=not verbose and path is not None)
    logging.captureWarnings(True)
    _route_deepspeed()
    # torch.distributed deprecation notices from inside DeepSpeed's ZeRO, once per call.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    return path


def log_file() -> Path | None:
    """This process's log file (None before :func:`setup` with a directory)."""
    return _state["file"]  # type: ignore[return-value]


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Send whatever is written to stdout/stderr (also from C++) to the log file meanwhile.

    A no-op unless :func:`setup` made this process quiet. Exceptions still propagate; only
    text printed inside the block is moved.
    """
    path = log_file()
    if not _state["quiet"] or path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def report_error(prog: str, kind: str, error: BaseException) -> None:
    """Print ``error`` as one line on stderr; its traceback goes to the log file.

    The line does not name the rank, so identical failures of several ranks read as one
    (:class:`Relay` drops repeats).
    """
    path = log_file()
    where = ""
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{prog}: {kind}: {error}\n")
            traceback.print_exception(error, file=f)
        where = f" (traceback in {path.parent}/)"
    # One write of the whole line: ranks sharing the launcher's pipe cannot interleave it.
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"{prog}: {kind}: {error}{where}\n".encode())


# DeepSpeed's log format: "[2026-12-01 23:07:02,573] [INFO] [runner.py:618:main] ...".
_LIBRARY = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ")
_NOISE = re.compile(
    r"^(DeepSpeed \S+ built successfully"  # deepspeed.comm.torch.build_shm_op's print
    r"|Using \S+ as PyTorch extensions root|Emitting ninja build file|Building extension module"
    r"|Loading extension module|ninja: no work to do"  # torch.utils.cpp_extension
    r"|[WIE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ "  # torch / c10 glog-style lines (torchrun)
    r"|\[[WI]\d{4} \d\d:\d\d:\d\d"  # c10 C++ warnings: "[W1201 23:07:10.12 ...]"
    r"|\*{20,})"  # torchrun's banner around its OMP_NUM_THREADS notice
)


class Relay:
    """Sorts the lines a launcher prints into console and log file.

    Library lines (DeepSpeed's format at DEBUG/INFO/WARNING, op-build and torchrun notices)
    go to the file; the launcher's ERROR lines too once a rank has printed filtertron's own
    one-line error (they only repeat it as "exits with return code"), otherwise they are
    shown. A filtertron error line printed by several ranks is shown once. Everything else,
    including tracebacks and the progress bar, goes to the console.
    """

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.seen: set[str] = set()
        self.reported = False

    def route(self, line: str) -> bool:
        """True if ``line`` (without its terminator) belongs on the console."""
        text = line.strip()
        if text.startswith("filtertron ") and ": " in text:
            if text in self.seen:
                return False
            self.seen.add(text)
            self.reported = self.reported or "error" in text.split(":", 2)[1]
            return True
        m = _LIBRARY.match(text)
        if m:
            return m.group(1) in ("ERROR", "CRITICAL") and not self.reported
        return not _NOISE.match(text)

    def pump(self, source: IO[bytes], sink: IO[str]) -> None:
        """Copy ``source`` (a pipe) to ``sink`` or the log file, segment by segment.

        Segments end at "\\n" or "\\r"; text after a "\\r" (a progress-bar redraw) is
        shown as it arrives, without waiting for its end.
        """
        buf, shown, bar = "", 0, False
        fd = source.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            buf += data.decode("utf-8", errors="replace")
            while (m := re.search(r"[\r\n]", buf)) is not None:
                seg, sep, buf = buf[: m.start()], m.group(), buf[m.end() :]
                if bar or self.route(seg):
                    sink.write(seg[shown:] + sep)
                else:
                    self.file.write(seg + "\n")
                shown, bar = 0, sep == "\r"
            if bar and len(buf) > shown:
                sink.write(buf[shown:])
                shown = len(buf)
            sink.flush()
            self.file.flush()
        if buf[shown:]:
            (sink if bar or self.route(buf) else self.file).write(buf[shown:])
        sink.flush()
        self.file.flush()

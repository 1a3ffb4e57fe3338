"""Output directories written all at once: checked first, filled in a hidden staging directory,
then renamed into place, so a failed or interrupted export leaves nothing half-written and an
existing directory is replaced (``--force``) only once its replacement is complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_outdir(out: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse ``out`` if it exists and is not empty (unless ``force``) or holds an input.

    Args:
        out: The output directory.
        force: Replace a non-empty ``out``.
        inputs: Paths the command reads; replacing a directory that holds one would delete it.

    Raises:
        ValueError: naming the directory and what to do.
    """
    out = out.resolve()
    for p in inputs:
        p = p.resolve()
        if p == out or out in p.parents:
            raise ValueError(f"output {out} holds the input {p}; choose another directory")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output {out} exists and is not empty; pass --force to replace it")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield a fresh staging directory next to ``out``; on success it replaces ``out``.

    On an exception the staging directory is removed and ``out`` is left as it was.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)

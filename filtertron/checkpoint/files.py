"""Checkpoint directories: atomic commit, keep-last-K, resolve, RNG state, compatibility checks.

Layout under ``out_dir/checkpoints``::

    step_00000100/            one checkpoint (DeepSpeed's files: model, optimizer, scheduler)
        rng_rank{r}.pt        per-rank RNG states (torch, python), loaded with weights_only
        filtertron.json       the commit marker, written last (atomic rename) by rank 0:
                              step, consumed samples, resolved config, tokenizer hash
    latest                    name of the newest committed checkpoint (informational)

A directory without ``filtertron.json`` was cut off mid-write: resume ignores it with a
warning and takes the newest committed one. Nothing is deleted until a newer checkpoint has
committed, so a crash never leaves the run without a checkpoint to resume from.

What the files inside a step directory hold (DeepSpeed's per-layout files, ``model.pt``) and
how they are merged or resharded is :mod:`filtertron.checkpoint.shards`. Light to import: no
DeepSpeed, no megatron-core.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from filtertron.config import ConfigError

log = logging.getLogger("filtertron")

MARKER = "filtertron.json"
# Model fields that do not change parameter shapes or meaning; a resume may change them.
_FREE_MODEL_FIELDS = {"dropout", "init_std"}
_FREE_ATTENTION_FIELDS = {"impl", "dropout"}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    meta: dict[str, Any]


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def committed(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoints under ``root``, oldest first; warns about uncommitted ones."""
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.glob("step_*")):
        if not d.is_dir():
            continue
        marker = d / MARKER
        if not marker.is_file():
            log.warning(
                "checkpoint %s has no %s (its write was interrupted); ignoring it", d, MARKER
            )
            continue
        try:
            meta = json.loads(marker.read_text())
        except json.JSONDecodeError:
            log.warning("checkpoint %s has an unreadable %s; ignoring it", d, MARKER)
            continue
        found.append(CheckpointInfo(d, int(meta["step"]), meta))
    return sorted(found, key=lambda c: c.step)


def latest(root: Path) -> CheckpointInfo | None:
    cks = committed(root)
    return cks[-1] if cks else None


def commit(path: Path, meta: dict[str, Any]) -> None:
    """Mark a fully written checkpoint as complete (rank 0, after a barrier)."""
    write_json_atomic(path / MARKER, meta)
    tmp = path.parent / f"latest.tmp{os.getpid()}"
    tmp.write_text(path.name + "\n")
    os.replace(tmp, path.parent / "latest")


def prune(root: Path, keep_last: int) -> None:
    """Delete committed checkpoints beyond the newest ``keep_last``, and uncommitted
    directories older than the newest committed one (stale partial writes)."""
    cks = committed(root)
    if not cks:
        return
    newest = cks[-1].path.name
    for c in cks[:-keep_last]:
        shutil.rmtree(c.path, ignore_errors=True)
    for d in root.glob("step_*"):
        if d.is_dir() and not (d / MARKER).exists() and d.name < newest:
            shutil.rmtree(d, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_rng(path: Path, rank: int) -> None:
    torch.save(rng_state(), path / f"rng_rank{rank}.pt")


def load_rng(path: Path, rank: int) -> None:
    f = path / f"rng_rank{rank}.pt"
    if not f.is_file():
        log.warning("%s missing (different world size?); RNG state not restored", f)
        return
    state = torch.load(f, weights_only=True)
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_model(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path / f"model.pt.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path / "model.pt")


def resolve(path: str | Path) -> CheckpointInfo:
    """A checkpoint from a run dir (its newest), a checkpoints dir, or one step dir."""
    p = Path(path)
    if (p / MARKER).is_file():
        meta = json.loads((p / MARKER).read_text())
        return CheckpointInfo(p, int(meta["step"]), meta)
    for root in (p / "checkpoints", p):
        info = latest(root)
        if info is not None:
            return info
    raise FileNotFoundError(
        f"{p}: no committed filtertron checkpoint there (expected a run "
        f"directory, its checkpoints/ directory, or a step_* directory)"
    )


def _diff(saved: dict, current: dict, prefix: str, free: set[str]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in free:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub_free = _FREE_ATTENTION_FIELDS if key == "attention" else set()
            out += _diff(a, b, f"{prefix}.{key}", sub_free)
        elif a != b:
            out.append(f"{prefix}.{key}: checkpoint has {a!r}, config has {b!r}")
    return out


def check_compatible(
    info: CheckpointInfo, config: dict[str, Any], tokenizer_hash: str | None
) -> None:
    """Refuse, before loading anything, a checkpoint of a different model or layout."""
    saved = info.meta.get("config", {})
    problems = _diff(saved.get("model", {}), config["model"], "model", _FREE_MODEL_FIELDS)
    for key in ("tp", "pp"):
        a, b = saved.get("parallel", {}).get(key), config["parallel"][key]
        if a != b:
            problems.append(
                f"parallel.{key}: checkpoint has {a}, config has {b} "
                "(reshard it first with `filtertron convert`)"
            )
    saved_hash = info.meta.get("tokenizer_hash")
    if saved_hash and tokenizer_hash and saved_hash != tokenizer_hash:
        problems.append(
            f"data: the checkpoint was trained with tokenizer {saved_hash}, the "
            f"dataset uses {tokenizer_hash}"
        )
    if problems:
        raise ConfigError(
            f"checkpoint {info.path} does not match this run:\n  " + "\n  ".join(problems)
        )

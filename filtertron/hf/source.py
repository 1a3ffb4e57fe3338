"""Where ``filtertron export`` reads its inputs: the checkpoint and the tokenizer it was
trained with.

:func:`load_checkpoint` is the only function of :mod:`filtertron.hf` that reads filtertron
checkpoints. It goes through :func:`filtertron.checkpoint.shards.load_model`, which reads a
consolidated ``model.pt``, ZeRO's fp32 master weights, or the module files of any TP / PP
layout.
"""

from __future__ import annotations

import os

import torch

from filtertron.checkpoint.files import CheckpointInfo
from filtertron.checkpoint.shards import load_model
from filtertron.config import RunConfig
from filtertron.data.tokenizer import Tokenizer


def load_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, RunConfig, CheckpointInfo]:
    """The single-device GPT of any filtertron checkpoint, in eval mode.

    Args:
        path: A run directory (its newest committed checkpoint), its ``checkpoints/``
            directory, or a ``step_*`` directory, of any TP / PP / ZeRO layout.

    Returns:
        (model, run config, checkpoint info).

    Raises:
        FileNotFoundError: ``path`` holds no committed filtertron checkpoint.
    """
    model, cfg, info = load_model(path)
    return model.eval(), cfg, info


def find_tokenizer(cfg: RunConfig, info: CheckpointInfo, path: str | None = None) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: ``path``, or its ``data.path`` dataset's.

    Args:
        cfg: The checkpoint's run config.
        info: The checkpoint (its marker may record the tokenizer's hash).
        path: A prepared dataset directory or tokenizer file; None reads ``data.path``.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: no tokenizer there.
        ValueError: its hash differs from the one the checkpoint records.
    """
    from filtertron.data import DataError, load_tokenizer

    where = path if path is not None else cfg.data.paths[0]
    try:
        tok = load_tokenizer(where)
    except DataError as e:
        hint = " (the checkpoint's data.path); pass --tokenizer DIR, or --no-tokenizer"
        hint = "" if path is not None else hint
        raise FileNotFoundError(f"tokenizer: {e}{hint}") from None
    saved = info.meta.get("tokenizer_hash")
    if saved and saved != tok.hash:
        raise ValueError(
            f"tokenizer {where}: hash {tok.hash[:12]}... differs from {saved[:12]}..., the one "
            f"checkpoint {info.path} was trained with"
        )
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer {where}: vocabulary {tok.vocab_size} exceeds the model's "
            f"model.vocab_size={cfg.model.vocab_size}"
        )
    return tok

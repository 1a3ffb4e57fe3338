"""Compatibility names: the checkpoint code lives in :mod:`filtertron.checkpoint`.

``load_model(path) -> (model, RunConfig, info)`` and ``resolve(path)`` (and the commit helpers)
stay importable from here for code written against the earlier layout.
"""

from filtertron.checkpoint.files import (
    MARKER,
    CheckpointInfo,
    check_compatible,
    commit,
    committed,
    latest,
    load_rng,
    prune,
    resolve,
    rng_state,
    save_model,
    save_rng,
    tag_for,
    write_json_atomic,
)
from filtertron.checkpoint.shards import gather_live, load_model

__all__ = [
    "MARKER",
    "CheckpointInfo",
    "check_compatible",
    "commit",
    "committed",
    "gather_live",
    "latest",
    "load_model",
    "load_rng",
    "prune",
    "resolve",
    "rng_state",
    "save_model",
    "save_rng",
    "tag_for",
    "write_json_atomic",
]

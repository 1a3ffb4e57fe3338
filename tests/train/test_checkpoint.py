"""Checkpoint commit, selection, pruning and compatibility checks (no training needed)."""

import logging
import random

import pytest
import torch

from filtertron.checkpoint import files as ckpt
from filtertron.config import ConfigError, load_config


def fake(root, step, commit=True, config=None):
    d = root / ckpt.tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if commit:
        ckpt.commit(d, {"step": step, "consumed_samples": step * 8, "config": config or {}})
    return d


def test_interrupted_checkpoint_is_ignored_with_warning(tmp_path, caplog):
    fake(tmp_path, 2)
    fake(tmp_path, 4, commit=False)  # cut off mid-write: no marker
    with caplog.at_level(logging.WARNING, logger="filtertron"):
        info = ckpt.latest(tmp_path)
    assert info.step == 2
    assert "step_00000004" in caplog.text and "interrupted" in caplog.text
    assert (tmp_path / "latest").read_text().strip() == "step_00000002"


def test_prune_keeps_last_k_and_drops_stale_partials(tmp_path):
    fake(tmp_path, 1, commit=False)
    for s in (2, 4, 6):
        fake(tmp_path, s)
    fake(tmp_path, 8, commit=False)  # in progress: newer than the newest commit, kept
    ckpt.prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in tmp_path.glob("step_*"))
    assert left == ["step_00000004", "step_00000006", "step_00000008"]


def test_incompatible_checkpoint_names_the_fields(tmp_path):
    saved = load_config(None, ["model.d_model=64", "model.n_heads=4"]).to_dict()
    info = ckpt.CheckpointInfo(
        fake(tmp_path, 2, config=saved), 2, {"config": saved, "tokenizer_hash": "aaa"}
    )
    now = load_config(
        None,
        [
            "model.d_model=96",
            "model.n_heads=4",
            "model.attention.impl=reference",
            "model.dropout=0.1",
        ],
    ).to_dict()
    with pytest.raises(ConfigError) as e:
        ckpt.check_compatible(info, now, "bbb")
    msg = str(e.value)
    assert "model.d_model: checkpoint has 64, config has 96" in msg
    assert "tokenizer aaa" in msg and "bbb" in msg
    assert "impl" not in msg and "dropout" not in msg  # free to change on resume
    ckpt.check_compatible(info, saved, "aaa")  # the same run is fine


def test_rng_round_trip(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    ckpt.save_rng(tmp_path, 0)
    a = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    ckpt.load_rng(tmp_path, 0)
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]

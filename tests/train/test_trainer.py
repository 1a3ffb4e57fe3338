"""The training loop in one process (gloo, world size 1): resume, NaN handling, activation
checkpointing, and the checks that run before the first step."""

import json
import logging
import math

import pytest
import torch

from filtertron.config import ConfigError
from filtertron.train.trainer import Trainer, TrainingDiverged
from tests.train.conftest import tiny_config


def rows(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir):
    return {r["step"]: r["loss"] for r in rows(out_dir) if "loss" in r}


def test_trains_and_resumes_exactly(dataset, tmp_path):
    import shutil

    out = tmp_path / "run"
    Trainer(tiny_config(dataset, out)).run()
    ref = losses(out)
    assert len(ref) == 6 and ref[6] < ref[1]
    assert all(math.isfinite(r["grad_norm"]) for r in rows(out) if "grad_norm" in r)
    # Roll the run back to its step-4 checkpoint, as if it had died after writing it.
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "metrics.jsonl").unlink()
    resumed = Trainer(tiny_config(dataset, out), resume=True)
    assert resumed.step == 4
    resumed.run()
    got = losses(out)
    assert sorted(got) == [5, 6]
    assert [got[s] for s in (5, 6)] == [ref[5], ref[6]]  # bit-identical, fp32


def test_nonfinite_loss_skips_update_then_stops(dataset, tmp_path):
    from filtertron.data import batch_iterator

    tr = Trainer(tiny_config(dataset, tmp_path / "nan", **{"train.max_bad_steps": 2}))
    it = batch_iterator(tr.train_ds, 4)
    tr.train_step(it)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    forward = tr.model.forward
    tr.model.forward = lambda *a, **k: forward(*a, **k) * float("nan")
    loss, ok = tr.train_step(it)
    assert not ok and math.isnan(loss)
    for n, p in tr.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} moved on a skipped step"
    tr.model.forward = forward
    loss, ok = tr.train_step(it)
    assert ok and math.isfinite(loss)
    assert any(not torch.equal(p, before[n]) for n, p in tr.model.named_parameters())
    tr.model.forward = lambda *a, **k: forward(*a, **k) * float("inf")
    with pytest.raises(TrainingDiverged, match=r"2 non-finite losses in a row.*train\.lr"):
        tr.run()


def saved_bytes(model, idx):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(idx, idx)
    return total, loss


def test_activation_checkpointing_saves_memory_same_gradients(dataset, tmp_path):
    plain = Trainer(tiny_config(dataset, tmp_path / "a", **{"model.n_layers": 4}))
    ac = Trainer(
        tiny_config(
            dataset,
            tmp_path / "b",
            **{"model.n_layers": 4, "train.activation_checkpointing": "every"},
        )
    )
    ac.model.load_state_dict(plain.model.state_dict())
    idx = torch.randint(0, 512, (4, 32))
    b_plain, l_plain = saved_bytes(plain.model, idx)
    b_ac, l_ac = saved_bytes(ac.model, idx)
    logging.getLogger("filtertron").info("saved activations: %d -> %d bytes", b_plain, b_ac)
    assert b_ac < 0.5 * b_plain, (b_plain, b_ac)
    l_plain.backward()
    l_ac.backward()
    for (n, p), q in zip(plain.model.named_parameters(), ac.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_missing_dataset_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path=.*no prepared dataset"):
        Trainer(tiny_config(tmp_path / "nowhere", tmp_path / "out"))


def test_vocab_smaller_than_tokenizer_fails(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.vocab_size=100: .*512"):
        Trainer(tiny_config(dataset, tmp_path / "out", **{"model.vocab_size": 100}))


def test_checkpoint_of_other_shape_fails_before_training(dataset, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(dataset, out, **{"train.steps": 2})).run()
    with pytest.raises(ConfigError, match=r"model\.d_model: checkpoint has 64, config has 96"):
        Trainer(tiny_config(dataset, out, **{"model.d_model": 96}), resume=True)
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        Trainer(tiny_config(dataset, out))


def test_interrupted_checkpoint_is_skipped_on_resume(dataset, tmp_path, caplog):
    out = tmp_path / "run"
    Trainer(tiny_config(dataset, out, **{"train.steps": 4})).run()
    partial = out / "checkpoints" / "step_00000005"
    partial.mkdir()
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="filtertron"):
        tr = Trainer(tiny_config(dataset, out), resume=True)
    assert tr.step == 4
    assert "step_00000005" in caplog.text and "interrupted" in caplog.text


def test_grad_accumulation_equals_bigger_micro_batch(dataset, tmp_path):
    """grad_accum=2 x micro-batch 2 sees the same samples as 1 x 4: same losses and updates."""
    a = Trainer(
        tiny_config(
            dataset,
            tmp_path / "a",
            **{"train.micro_batch_size": 4, "train.steps": 3, "train.save_every": 0},
        )
    )
    a.run()
    b = Trainer(
        tiny_config(
            dataset,
            tmp_path / "b",
            **{
                "train.micro_batch_size": 2,
                "train.grad_accum": 2,
                "train.steps": 3,
                "train.save_every": 0,
            },
        )
    )
    b.run()
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    for step in (1, 2, 3):
        assert abs(la[step] - lb[step]) < 1e-5, (step, la, lb)
    ga = {r["step"]: r["grad_norm"] for r in rows(tmp_path / "a") if "grad_norm" in r}
    gb = {r["step"]: r["grad_norm"] for r in rows(tmp_path / "b") if "grad_norm" in r}
    for step in (1, 2, 3):
        assert abs(ga[step] - gb[step]) < 1e-4 * ga[step], (step, ga, gb)


def test_data_workers_feed_the_same_batches(dataset, tmp_path, monkeypatch):
    """data.num_workers is read: DataLoader workers give the losses of in-process loading."""
    a = Trainer(tiny_config(dataset, tmp_path / "a", **{"train.steps": 2, "train.save_every": 0}))
    a.run()
    made = []
    loader = torch.utils.data.DataLoader

    def recording(*args, **kwargs):
        made.append(kwargs["num_workers"])
        return loader(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", recording)
    extra = {"train.steps": 2, "train.save_every": 0, "data.num_workers": 2}
    Trainer(tiny_config(dataset, tmp_path / "b", **extra)).run()
    assert made and set(made) == {2}  # training and validation batches came from workers
    assert losses(tmp_path / "a") == losses(tmp_path / "b")

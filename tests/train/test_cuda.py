"""The trainer on CUDA with NCCL (world size 1) against an independent CPU fp32 loop.

The CUDA run (``pytest -m gpu``) happens in a subprocess (its own NCCL process group) and
trains 8 steps in fp32; every step's loss is compared with :func:`reference_losses`: plain
PyTorch on the CPU, fp32, the same initial weights and batches, ``torch.optim.AdamW`` with
the trainer's groups, DeepSpeed's ``WarmupCosineLR`` with the trainer's settings and gradient
clipping. Steps 1-3 see the initial weights (the schedule's first two learning rates are 0);
steps 4-8 each follow an update, so they test the optimizer step on CUDA.

Tolerance, every step: |loss - reference| <= 1e-4 x reference. Both sides run fp32 (TF32
off, torch's default), so they differ by rounding only: on the CPU, scaling every initial
weight by (1 + 1e-5 x N(0, 1)), 100x fp32's rounding, moves the 8 losses by < 3e-7 relative
(AdamW does not amplify it here); the reference equals the trainer on the CPU bit for bit
(:func:`test_reference_loop_is_the_trainer_on_cpu`, in the default run). Measured on the CPU
at these settings, a broken optimizer step exceeds the tolerance: one update skipped moves
the next loss by 1.7e-2, a learning rate 10% off by up to 4.8e-3, beta2 = 0.999 instead of
0.95 by 1.1e-3, unclipped gradients by 6.8e-4, eps = 1e-6 instead of 1e-8 by 1.2e-4
(relative, largest over steps 4-8); weight decay left out (1e-5 x lr per step) would not be.
"""

import json
import subprocess
import sys

import pytest
import torch

from tests.train.conftest import ROOT, launcher_env, tiny_overrides

STEPS = 8
REL_TOL = 1e-4

SCRIPT = r"""
import json, sys, torch
from filtertron.config import load_config
from filtertron.train.trainer import Trainer
cfg = load_config(sys.argv[1], sys.argv[2:])
tr = Trainer(cfg)
final = tr.run()
p = next(tr.runner.module.parameters())
print("RESULT " + json.dumps({"backend": tr.dist.backend, "device": str(p.device),
                  "dtype": str(p.dtype), "runner_device": str(tr.runner.device),
                  "val_loss": final["val_loss"], "tf32": torch.backends.cuda.matmul.allow_tf32}))
"""


def _overrides(dataset, out):
    return tiny_overrides(
        dataset,
        out,
        **{"train.steps": STEPS, "eval.every": 4, "train.save_every": 4, "train.precision": "fp32"},
    )


def reference_losses(dataset, overrides: list[str]) -> list[float]:
    """Each step's loss (before its update) of a plain fp32 CPU loop doing the trainer's math."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from filtertron.config import load_config
    from filtertron.data import SequenceDataset, batch_iterator, open_split
    from filtertron.model import build_model

    cfg = load_config(ROOT / "configs/tiny.yaml", overrides)
    t = cfg.train
    torch.manual_seed(t.seed)
    model = build_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [  # decay matrices and embeddings, not vectors (the trainer's rule)
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8)
    sched = WarmupCosineLR(
        opt,
        total_num_steps=t.steps,
        warmup_min_ratio=0.0,
        warmup_num_steps=max(1, t.warmup),
        cos_min_ratio=t.min_lr / t.lr,
        warmup_type="linear",
    )
    train = SequenceDataset(open_split(dataset, "train"), cfg.model.seq_len, seed=t.seed)
    batches = batch_iterator(train, t.micro_batch_size)
    losses = []
    for _ in range(t.steps):
        total = 0.0
        for _ in range(t.grad_accum):
            batch = next(batches)
            loss = model(batch[:, :-1], batch[:, 1:]) / t.grad_accum
            loss.backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(total)
    return losses


def _losses(out) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _assert_close(got: list[float], ref: list[float], tol: float) -> None:
    assert len(got) == len(ref) == STEPS, (got, ref)
    rel = [abs(g - r) / abs(r) for g, r in zip(got, ref, strict=True)]
    table = "\n".join(
        f"step {i + 1}: {g:.7f} vs {r:.7f} (rel {d:.1e})"
        for i, (g, r, d) in enumerate(zip(got, ref, rel, strict=True))
    )
    assert max(rel) <= tol, f"max relative difference {max(rel):.1e} > {tol:.0e}\n{table}"


def test_reference_loop_is_the_trainer_on_cpu(dataset, tmp_path):
    """The reference is the trainer's math: on the CPU they agree (bit for bit today)."""
    from filtertron.config import load_config
    from filtertron.train.trainer import Trainer

    out = tmp_path / "run"
    overrides = _overrides(dataset, out)
    Trainer(load_config(ROOT / "configs/tiny.yaml", overrides)).run()
    _assert_close(_losses(out), reference_losses(dataset, overrides), 1e-6)


@pytest.mark.gpu
def test_trainer_steps_on_cuda_with_nccl(dataset, tmp_path):
    out = tmp_path / "run"
    overrides = _overrides(dataset, out)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "configs/tiny.yaml"), *overrides],
        env=launcher_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    info = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert info["backend"] == "nccl" and info["device"].startswith("cuda")
    assert info["runner_device"].startswith("cuda") and info["dtype"] == "torch.float32"
    assert not info["tf32"], "TF32 on: the fp32 comparison below would not hold"
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "model.pt").is_file()
    _assert_close(_losses(out), reference_losses(dataset, overrides), REL_TOL)

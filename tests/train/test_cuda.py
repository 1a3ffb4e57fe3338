"""GPU only (``pytest -m gpu``): the trainer on CUDA with NCCL, world size 1.

The run happens in a subprocess (its own NCCL process group); its first loss is compared
with an independent fp32 forward of the same initial model on the CPU.
"""

import json
import subprocess
import sys

import pytest
import torch

from tests.train.conftest import ROOT, launcher_env, tiny_overrides

pytestmark = pytest.mark.gpu

SCRIPT = r"""
import json, sys, torch
from filtertron.config import load_config
from filtertron.train.trainer import Trainer
cfg = load_config(sys.argv[1], sys.argv[2:])
tr = Trainer(cfg)
final = tr.run()
p = next(tr.runner.module.parameters())
print("RESULT " + json.dumps({"backend": tr.dist.backend, "device": str(p.device),
                  "runner_device": str(tr.runner.device), "val_loss": final["val_loss"]}))
"""


def test_trainer_steps_on_cuda_with_nccl(dataset, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(
        dataset, out, **{"train.steps": 4, "eval.every": 2, "train.save_every": 2}
    )
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
    assert info["runner_device"].startswith("cuda")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (out / "checkpoints" / "step_00000004" / "model.pt").is_file()
    # independent reference: the same initial weights and first batch, fp32 on the CPU
    from filtertron.config import load_config
    from filtertron.data import SequenceDataset, batch_iterator, open_split
    from filtertron.model import build_model

    cfg = load_config(ROOT / "configs/tiny.yaml", overrides)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    train = SequenceDataset(open_split(dataset, "train"), cfg.model.seq_len, seed=cfg.train.seed)
    batch = next(batch_iterator(train, cfg.train.micro_batch_size))
    with torch.no_grad():
        ref = float(model(batch[:, :-1], batch[:, 1:]))
    assert abs(losses[0] - ref) <= 1e-4 * ref, (losses[0], ref)  # TF32 off: fp32 matmuls

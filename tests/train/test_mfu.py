"""MFU and HFU: the peak table, the measured fallback, and the invariant that no MFU above
100% is ever logged (it becomes a warning naming the cause)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from filtertron.config import load_config
from filtertron.train import mfu
from filtertron.train.trainer import Trainer
from tests.train.conftest import tiny_config

# Real torch.cuda.get_device_name() strings and the dense datasheet peak each must get, typed
# from the datasheets (half the "with sparsity" figures), not from filtertron's table. None:
# the device (or the dtype on it) is not listed, so the peak is measured.
REAL_NAMES = [
    ("NVIDIA A100-SXM4-40GB", "bf16", 312e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
    ("NVIDIA A100-PCIE-40GB", "tf32", 156e12),
    ("NVIDIA A100 80GB PCIe", "bf16", 312e12),
    ("A100-SXM4-40GB", "bf16", 312e12),  # drivers before R470 had no "NVIDIA " prefix
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7e12),
    ("NVIDIA H100 PCIe", "bf16", 756.5e12),
    ("NVIDIA H100 NVL", "bf16", 835.5e12),
    ("NVIDIA H100 NVL", "tf32", 417.5e12),
    ("NVIDIA H200", "bf16", 989.4e12),
    ("NVIDIA H200", "fp32", 67e12),
    ("NVIDIA H200 NVL", "bf16", 835.5e12),
    ("NVIDIA GH200 480GB", "bf16", 989.4e12),
    ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA L4", "fp32", 30.3e12),
    ("NVIDIA L40", "bf16", 181.05e12),  # not the L4's 121
    ("NVIDIA L40", "tf32", 90.5e12),
    ("NVIDIA L40S", "bf16", 362.05e12),
    ("NVIDIA A10", "bf16", 125e12),
    ("NVIDIA A10G", "bf16", None),  # AWS's A10G: no NVIDIA datasheet, never the A10's 125
    ("Tesla V100-SXM2-16GB", "fp32", 15.7e12),
    ("Tesla V100-SXM2-32GB", "fp16", 125e12),
    ("Tesla V100-PCIE-32GB", "fp16", 112e12),  # not the SXM2's 125
    ("Tesla V100S-PCIE-32GB", "fp32", 16.4e12),
    ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 on Volta
    ("NVIDIA B200", "bf16", 2.25e15),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12),  # FP32 accumulate (what torch uses)
    ("NVIDIA GeForce RTX 3090", "bf16", 71e12),
    ("NVIDIA GeForce RTX 4090 D", "bf16", None),  # a different (cut-down) card
    ("NVIDIA GeForce RTX 4080", "bf16", None),
    ("NVIDIA RTX A6000", "bf16", None),
    ("NVIDIA H800", "bf16", None),  # not the H100's
    ("NVIDIA A800-SXM4-80GB", "bf16", None),  # not the A100's
    ("Tesla T4", "fp16", None),
]


@pytest.mark.parametrize("name,dtype,expected", REAL_NAMES)
def test_table_peak_by_exact_device_name(name, dtype, expected):
    peak = mfu.table_peak(name, dtype)
    assert (peak.flops if peak else None) == expected
    if peak:
        assert "datasheet" in peak.source and peak.dtype == dtype


def test_every_table_entry_names_whole_devices_and_a_source():
    seen = set()
    for entry in mfu.PEAK_FLOPS:
        assert entry.source.startswith("https://"), entry
        for name in entry.names:
            assert name not in seen, f"{name} listed twice"
            seen.add(name)
            assert mfu.table_peak(name, next(iter(entry.flops))) is not None


def test_unlisted_gpu_is_measured_with_a_console_line(monkeypatch, caplog):
    cfg = load_config(None, ["train.precision=bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    monkeypatch.setattr(mfu, "measured_peak_flops", lambda dtype, device: 5e13)
    with caplog.at_level(logging.INFO):
        peak = mfu.peak_for(cfg, torch.device("cuda", 0))
    assert peak.measured and peak.flops == 5e13
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "'NVIDIA A10G'" in lines[0] and "train.peak_flops" in lines[0]


def test_matmul_dtype_follows_the_float32_precision():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert mfu.matmul_dtype("fp32") == "fp32"
        torch.set_float32_matmul_precision("high")  # TF32 allowed
        assert mfu.matmul_dtype("fp32") == "tf32"
        assert mfu.matmul_dtype("bf16") == "bf16"
    finally:
        torch.set_float32_matmul_precision(before)


def test_peak_sources_in_order(monkeypatch):
    cfg = load_config(None, ["train.precision=bf16", "train.peak_flops=5e12"])
    assert mfu.peak_for(cfg, torch.device("cpu")) == mfu.Peak(5e12, "bf16", "train.peak_flops")
    cfg = load_config(None, ["train.precision=bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert mfu.peak_for(cfg, torch.device("cuda", 0)).flops == 756.5e12
    seen = []
    monkeypatch.setattr(
        mfu, "measured_peak_flops", lambda dtype, device: seen.append((dtype, device)) or 1e11
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some New GPU")
    peak = mfu.peak_for(cfg, torch.device("cuda", 0))
    assert peak.measured and peak.flops == 1e11 and seen == [("bf16", torch.device("cuda", 0))]
    peak = mfu.peak_for(cfg, torch.device("cpu"))  # CPUs are always measured
    assert peak.measured and seen[-1] == ("bf16", torch.device("cpu"))


def test_measured_peak_is_the_best_round_in_the_training_dtype(monkeypatch):
    n = 32
    # each round times one matmul; rounds take 1.0, 0.25 and 0.5 s on this fake clock
    clock = iter([0.0, 1.0, 1.0, 1.25, 1.25, 1.75])
    monkeypatch.setattr(mfu.time, "perf_counter", lambda: next(clock))
    mfu._MEASURED.clear()
    got = mfu.measured_peak_flops("bf16", "cpu", n=n, rounds=3, seconds=0.1)
    assert got == pytest.approx(2 * n**3 / 0.25)
    assert mfu.measured_peak_flops("bf16", "cpu") == got  # measured once per process
    mfu._MEASURED.clear()


def test_utilization_never_reports_above_one(caplog):
    peak = mfu.Peak(1e9, "fp32", "measured fp32 matmul on cpu, best of 5 rounds", measured=True)
    u = mfu.Utilization(model_flops=1e6, hardware_flops=4e6 / 3, peak=peak, devices=2)
    assert u(1000.0) == {"mfu": pytest.approx(0.5), "hfu": pytest.approx(2 / 3)}
    with caplog.at_level(logging.WARNING):
        assert u(1600.0) == {"mfu": pytest.approx(0.8), "hfu": None}  # HFU 107%
        assert u(3000.0) == {"mfu": None, "hfu": None}
    assert u.over == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per run, not once per step
    assert "HFU 107% > 100%" in warnings[0] and "measured peak under-estimates" in warnings[0]
    assert "train.peak_flops" in warnings[0]


def _hand_flops(d: int, T: int, V: int, L: int, recomputed: int) -> tuple[float, float]:
    """Model and hardware FLOPs per token of a softmax GPT written out by hand: 6 x matmul
    parameters + 12 L T d, plus one forward (2 x block matmul parameters + 4 T d) per
    recomputed block."""
    block = 4 * d * d + 2 * d * 4 * d
    model = 6 * (L * block + d * V) + 12 * L * T * d
    return model, model + recomputed * (2 * block + 4 * T * d)


def test_hardware_flops_count_the_recomputed_forwards():
    cfg = load_config(
        None, ["model.n_layers=3", "model.d_model=64", "model.seq_len=32", "model.vocab_size=512"]
    ).model
    model, hardware = _hand_flops(64, 32, 512, 3, 2)
    assert mfu.hardware_flops_per_token(cfg, [0, 2]) == hardware
    assert mfu.hardware_flops_per_token(cfg, []) == model
    twice = load_config(
        None,
        [
            "model.n_layers=3",
            "model.d_model=64",
            "model.seq_len=32",
            "model.vocab_size=512",
            "model.attention.kind=twicing",
        ],
    ).model
    # a twicing block's recomputed forward: the matmuls plus q.k, A V and A (A V), three
    # (T x d)-sized products of 2 T d FLOPs per token each (the logits are shared)
    assert (
        mfu.hardware_flops_per_token(twice, [1]) - mfu.hardware_flops_per_token(twice, [])
        == 2 * (4 * 64 * 64 + 8 * 64 * 64) + 3 * 2 * 32 * 64
    )


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_trainer_logs_no_mfu_above_one_and_warns(dataset, tmp_path, caplog):
    low = tiny_config(dataset, tmp_path / "low", **{"train.steps": 3, "train.peak_flops": 1.0})
    with caplog.at_level(logging.WARNING):
        Trainer(low).run()
    steps = [r for r in _rows(tmp_path / "low") if "loss" in r]
    assert len(steps) == 3 and all(r["mfu"] is None for r in steps)
    assert any(
        "MFU" in r.getMessage() and "train.peak_flops is below" in r.getMessage()
        for r in caplog.records
    )
    high = tiny_config(
        dataset,
        tmp_path / "high",
        **{
            "train.steps": 3,
            "train.peak_flops": 1e15,
            "train.activation_checkpointing": "every",
            "model.position": "learned",  # _hand_flops counts plain softmax (no ALiBi bias)
        },
    )
    Trainer(high).run()
    model, hardware = _hand_flops(64, 32, 512, 2, 2)
    for r in (r for r in _rows(tmp_path / "high") if "loss" in r):
        assert 0 < r["mfu"] <= 1 and r["mfu"] == pytest.approx(r["tokens_per_s"] * model / 1e15)
        assert math.isclose(r["hfu"] / r["mfu"], hardware / model, rel_tol=1e-12)


def test_peak_flops_accepts_exponent_notation():
    from filtertron.config import ConfigError

    assert load_config(None, ["train.peak_flops=989e12"]).train.peak_flops == 989e12
    with pytest.raises(ConfigError, match=r"train.peak_flops='fast': expected one of float"):
        load_config(None, ["train.peak_flops=fast"])
    with pytest.raises(ConfigError, match=r"train.peak_flops=-1.0: must be positive"):
        load_config(None, ["train.peak_flops=-1"])

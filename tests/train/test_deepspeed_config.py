"""The DeepSpeed config is generated from the run config; overrides are reported."""

from filtertron.config import load_config
from filtertron.train import deepspeed_config


def test_generated_from_run_config():
    cfg = load_config(
        None,
        [
            "train.micro_batch_size=3",
            "train.grad_accum=5",
            "train.lr=0.01",
            "train.min_lr=0.001",
            "parallel.zero_stage=2",
            "train.precision=bf16",
            "train.warmup=7",
            "train.steps=70",
        ],
    )
    ds, overrides = deepspeed_config.build(cfg, dp_size=4)
    assert overrides == []
    assert ds["train_batch_size"] == 3 * 5 * 4
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"]["lr"] == 0.01
    sched = ds["scheduler"]["params"]
    assert (sched["total_num_steps"], sched["warmup_num_steps"]) == (70, 7)
    assert abs(sched["cos_min_ratio"] - 0.1) < 1e-12


def test_user_section_adds_and_overrides_with_report():
    cfg = load_config(
        None,
        [
            "deepspeed={gradient_clipping: 0.5, zero_optimization: "
            "{stage: 0, reduce_bucket_size: 1000}, flops_profiler: {enabled: true}}",
            "train.grad_clip=1.0",
        ],
    )
    ds, overrides = deepspeed_config.build(cfg, dp_size=1)
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {"stage": 0, "reduce_bucket_size": 1000}
    assert ds["flops_profiler"] == {"enabled": True}
    assert overrides == ["deepspeed.gradient_clipping: 0.5 overrides the generated 1.0"]


def test_offload_uses_deepspeed_cpu_adam():
    cfg = load_config(None, ["parallel.offload_optimizer=true", "parallel.zero_stage=2"])
    ds, _ = deepspeed_config.build(cfg, dp_size=1)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert "torch_adam" not in ds["optimizer"]["params"]


def test_fused_torch_adamw_on_cuda_only():
    cfg = load_config(None, [])
    cpu, _ = deepspeed_config.build(cfg, dp_size=1)
    cuda, _ = deepspeed_config.build(cfg, dp_size=1, device="cuda")
    assert cpu["optimizer"]["params"]["torch_adam"] and "fused" not in cpu["optimizer"]["params"]
    assert cuda["optimizer"]["params"]["torch_adam"] and cuda["optimizer"]["params"]["fused"]
    cfg = load_config(None, ["parallel.offload_optimizer=true", "parallel.zero_stage=2"])
    offload, _ = deepspeed_config.build(cfg, dp_size=1, device="cuda")
    assert "fused" not in offload["optimizer"]["params"]

"""How long a sweep takes on a device: FLOPs accounting, a step-time model, fixed overheads.

A run's time under a plan is

    t_run = run_s[plan] + steps t_step + val_batches t_val + checkpoints checkpoint_s + fit_s
    t_step = max(floor(L), F_step / (mfu(d) peak)),    t_val = t_step / 3 (a forward),
    floor(L) = step_floor_s max(1, L / floor_layers),  mfu(d) = mfu_ref min(1, d / ref_width),

with F_step the training FLOPs of a step (:mod:`filtertron.train.flops`, "full" convention,
times the tokens of a step), L and d the model's layers and width. Small models do not fill a
device: their steps cost a fixed floor (launches, host work, synchronisations), and narrow
matmuls run below the MFU of wide ones. A sweep adds ``startup_s[plan]`` once (interpreter,
imports, process group, first device use: per run under plan "local", where every run pays
it inside ``run_s``). ``fit_s`` is the fit's share per run (both approaches, 200 bootstrap
draws, plots), on the host's CPU. Every number of a profile names its source; the estimate
is only as good as they are, and :func:`estimate` returns its terms so they can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from filtertron.config import ConfigError
from filtertron.scaling.expand import Run


@dataclass(frozen=True)
class DeviceProfile:
    """Throughput and overheads of one device (see the module docstring)."""

    name: str
    peak_flops: float  # FLOP/s the MFU is counted against
    mfu_ref: float  # MFU of a wide model's step
    ref_width: int  # d_model at which mfu_ref was measured
    step_floor_s: float  # the shortest step, at floor_layers layers
    floor_layers: int
    startup_s: dict[str, float]  # once per sweep, by plan
    run_s: dict[str, float]  # per run, by plan
    checkpoint_s: float
    fit_s: float  # per run, the fit at the end
    sources: list[str] = field(default_factory=list)

    def mfu(self, d_model: int) -> float:
        return self.mfu_ref * min(1.0, d_model / self.ref_width)

    def floor(self, n_layers: int) -> float:
        return self.step_floor_s * max(1.0, n_layers / self.floor_layers)


H200 = DeviceProfile(
    name="h200",
    peak_flops=989.4e12,
    mfu_ref=0.27,
    ref_width=768,
    step_floor_s=0.049,
    floor_layers=4,
    startup_s={"local": 0.0, "inprocess": 20.0},
    run_s={"local": 25.0, "inprocess": 1.5},
    checkpoint_s=0.3,
    fit_s=0.4,
    sources=[
        "peak: H200 bf16 dense datasheet, 989.4 TFLOP/s (train/mfu.py)",
        "mfu_ref 0.27 at d 768: GPT-2 small, plain loop, bf16, 331K tokens/s "
        "(shared/notes/gpu-run-2026-12-04.md); narrower models: in proportion to d (assumed)",
        "step floor 49 ms up to 4 layers: our trainer on the tiny preset (4 layers, d 128), "
        "ZeRO-2, bf16, 1024 tokens a step at 21K tokens/s (same note); deeper: in proportion "
        "(assumed)",
        "per run, local 25 s: the note's 20 s from launcher start to the first logged line, and "
        "the end; inprocess 1.5 s and a 20 s start: not measured on a GPU, scaled from this "
        "machine (bench/sweep_overhead.py: 0.43 s a run in-process, 5.8 s a process start) by "
        "the H200's 20 s process start",
        "checkpoint 0.3 s beyond the final one, fit 0.4 s a run (200 draws: 14.6 s of CPU for "
        "60 runs here): assumed for the GPU host",
    ],
)

CPU = DeviceProfile(
    name="cpu",
    peak_flops=31e9,
    mfu_ref=1.0,
    ref_width=96,
    step_floor_s=0.012,
    floor_layers=1,
    startup_s={"local": 0.0, "inprocess": 2.0},
    run_s={"local": 7.4, "inprocess": 0.45},
    checkpoint_s=0.3,
    fit_s=0.4,
    sources=[
        "this machine: 2 cores shared by other jobs; 31 GFLOP/s: the tiny preset's d 96 x 3 "
        "layers, 0.12 s a 1024-token step (docs/results.md); narrower: in proportion",
        "step floor 12 ms a layer: d 32, 32 tokens, ZeRO 0 fp32 (measured while writing this)",
        "run_s local 7.4 s, inprocess 0.45 s: bench/sweep_overhead.py medians (final "
        "checkpoint included); fit 14.6 s of CPU for 60 runs, 200 draws",
    ],
)

PROFILES = {p.name: p for p in (H200, CPU)}


def profile(name: str) -> DeviceProfile:
    """The named device profile.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in PROFILES:
        raise ConfigError(f"device_profile={name!r}: known profiles are {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class RunEstimate:
    run: Run
    step_s: float
    train_s: float
    overhead_s: float  # start, validation, checkpoints, fit

    @property
    def total_s(self) -> float:
        return self.train_s + self.overhead_s


def estimate_run(run: Run, device: DeviceProfile, plan: str) -> RunEstimate:
    """The time of one run under ``plan`` on ``device`` (see the module docstring)."""
    m = run.config.model
    flops_step = run.flops.total * run.tokens_per_step
    step = max(device.floor(m.n_layers), flops_step / (device.mfu(m.d_model) * device.peak_flops))
    ev = run.config.eval
    val_batches = ev.batches * (1 + (run.steps // ev.every if ev.every else 0))
    micro = run.config.train.grad_accum  # a validation batch is one micro-batch's forward
    checkpoints = run.config.train.steps // max(1, run.config.train.save_every)
    overhead = (
        device.run_s[_plan(plan)]
        + val_batches * step / (3 * micro)
        + max(0, checkpoints - 1) * device.checkpoint_s  # the final one is in run_s
        + device.fit_s
    )
    return RunEstimate(run, step, run.steps * step, overhead)


def _plan(plan: str) -> str:
    return "inprocess" if plan == "inprocess" else "local"


def estimate(runs: list[Run], device: DeviceProfile, plan: str) -> tuple[list[RunEstimate], float]:
    """Per-run estimates and the sweep's total seconds (startup included)."""
    per = [estimate_run(r, device, plan) for r in runs]
    return per, device.startup_s[_plan(plan)] + sum(e.total_s for e in per)


def describe(device: DeviceProfile) -> list[str]:
    """The profile's numbers and their sources, for a dry run's header."""
    return [
        f"device profile {device.name}: step = max({1e3 * device.step_floor_s:.0f} ms x "
        f"max(1, layers / {device.floor_layers}), FLOPs / ({device.mfu_ref:.2f} x min(1, d / "
        f"{device.ref_width}) x {device.peak_flops / 1e12:.4g} TFLOP/s)); per run "
        f"{device.run_s['local']:g} s (local) or {device.run_s['inprocess']:g} s (inprocess), "
        f"+ validation, {device.checkpoint_s:g} s a checkpoint, {device.fit_s:g} s fit; "
        f"startup {device.startup_s['inprocess']:g} s (inprocess)",
        *(f"  source: {s}" for s in device.sources),
    ]

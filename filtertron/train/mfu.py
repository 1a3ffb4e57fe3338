"""Model and hardware FLOPs utilisation (MFU, HFU) against an honest peak.

    MFU = tokens/s x model FLOPs per token / (peak FLOP/s per device x devices)
    HFU = the same with the recomputed forwards of activation checkpointing counted too

Model FLOPs per token are :func:`filtertron.train.flops.flops_per_token` (fwd + bwd). The
peak, in this order (as torchtitan does it):

1. ``train.peak_flops`` when set (FLOP/s of one device in the training dtype);
2. :data:`PEAK_FLOPS`: NVIDIA's dense (no sparsity) tensor-core peaks per device and dtype,
   from the datasheets named beside each entry, looked up by the exact name
   ``torch.cuda.get_device_name()`` returns (never by substring: "NVIDIA L40" is not an L4).
   fp32 training counts the fp32 peak, or the TF32 one when
   ``torch.get_float32_matmul_precision()`` lets matmuls use TF32;
3. otherwise (CPUs, unlisted GPUs, a dtype a GPU lacks) a measured peak: square matmuls in
   the training dtype, timed in several rounds, the best round taken. On a GPU this comes with
   a warning naming the device, so a missing table entry is never silent.

A measured peak is a lower bound of the device's real peak (a busy machine, one matmul
shape), so MFU against it can exceed 100%. An MFU above 100% is never logged as a number: the
metric is recorded as null and a warning names the likely cause.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from filtertron.config import ModelConfig, RunConfig
from filtertron.train.flops import block_flops, flops_per_token

log = logging.getLogger(__name__)

_A100 = "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"  # noqa: E501
_H100 = "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_GH200 = "https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/"
_L40 = "https://www.nvidia.com/en-us/data-center/l40/"
_L40S = "https://www.nvidia.com/en-us/data-center/l40s/"
_L4 = "https://www.nvidia.com/en-us/data-center/l4/"
_A10 = "https://www.nvidia.com/en-us/data-center/products/a10-gpu/"
_V100 = "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf"  # noqa: E501
_HGX = "https://www.nvidia.com/en-us/data-center/hgx/"
_ADA = "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"
_GA102 = (
    "https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf"
)


@dataclass(frozen=True)
class DevicePeaks:
    """Dense peaks of the devices CUDA names ``names`` (exactly), and the page they come from."""

    names: tuple[str, ...]
    flops: dict[str, float]
    source: str


# Matched by the exact name torch.cuda.get_device_name() returns (a leading "NVIDIA " is
# optional: drivers before R470 left it out), never by a substring: "NVIDIA L40" is not an L4,
# "NVIDIA A10G" (AWS, no NVIDIA datasheet) is not an A10, a V100 PCIe is slower than an SXM2.
# Datasheets quote tensor-core rates "with sparsity"; the dense rate is half of that. A name
# missing here gets a measured peak and a warning, never a neighbour's datasheet.
PEAK_FLOPS: tuple[DevicePeaks, ...] = (
    DevicePeaks(  # TF32 312* and BF16 624* with sparsity; SXM4 and PCIe list the same rates
        ("A100-SXM4-40GB", "A100-SXM4-80GB", "A100-PCIE-40GB", "A100 80GB PCIe"),
        {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
        _A100,
    ),
    DevicePeaks(  # H100 SXM5: BF16 1,979*, TF32 989*; 132 SMs at 1.83 GHz give 989.4 dense
        ("H100 80GB HBM3",),
        {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
        _H100,
    ),
    DevicePeaks(  # BF16 1,513*, TF32 756*
        ("H100 PCIe",),
        {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51e12},
        _H100,
    ),
    DevicePeaks(  # BF16 1,671*, TF32 835*
        ("H100 NVL",),
        {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
        _H100,
    ),
    DevicePeaks(  # H200 SXM: BF16 1,979*, TF32 989* (the H100 SXM's compute)
        ("H200",),
        {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
        _H200,
    ),
    DevicePeaks(  # BF16 1,671*, TF32 835*
        ("H200 NVL",),
        {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
        _H200,
    ),
    DevicePeaks(  # the Hopper GPU of the superchip: BF16 1,979*, TF32 989*
        ("GH200 480GB",),
        {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 67e12},
        _GH200,
    ),
    DevicePeaks(  # BF16 242*, TF32 120*
        ("L4",),
        {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
        _L4,
    ),
    DevicePeaks(  # BF16 362.1*, TF32 181*
        ("L40",),
        {"bf16": 181.05e12, "fp16": 181.05e12, "tf32": 90.5e12, "fp32": 90.5e12},
        _L40,
    ),
    DevicePeaks(  # BF16 733*, TF32 366*
        ("L40S",),
        {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
        _L40S,
    ),
    DevicePeaks(  # BF16 250*, TF32 125*
        ("A10",),
        {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
        _A10,
    ),
    DevicePeaks(  # Volta: fp16 tensor cores, no bf16, no tf32 (no sparsity either)
        ("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"),
        {"fp16": 125e12, "fp32": 15.7e12},
        _V100,
    ),
    DevicePeaks(
        ("Tesla V100-PCIE-16GB", "Tesla V100-PCIE-32GB"), {"fp16": 112e12, "fp32": 14e12}, _V100
    ),
    DevicePeaks(("Tesla V100S-PCIE-32GB",), {"fp16": 130e12, "fp32": 16.4e12}, _V100),
    DevicePeaks(  # HGX B200, 8 GPUs: FP16/BF16 36 PF*, TF32 18 PF*, FP32 600 TF
        ("B200",),
        {"bf16": 2.25e15, "fp16": 2.25e15, "tf32": 1.125e15, "fp32": 75e12},
        _HGX,
    ),
    DevicePeaks(  # Ada whitepaper, appendix: BF16 with FP32 accumulate 165.2 / 330.4*
        ("GeForce RTX 4090",),
        {"bf16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
        _ADA,
    ),
    DevicePeaks(  # GA102 whitepaper, appendix: BF16 with FP32 accumulate 71 / 142*
        ("GeForce RTX 3090",),
        {"bf16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
        _GA102,
    ),
)
_BY_NAME = {name: entry for entry in PEAK_FLOPS for name in entry.names}
_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "tf32": torch.float32,
}


@dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of one device in one dtype, and where the number comes from."""

    flops: float
    dtype: str
    source: str
    measured: bool = False


def matmul_dtype(precision: str) -> str:
    """The dtype matmuls run in: bf16, or fp32 / tf32 by torch's float32 matmul precision."""
    if precision == "bf16":
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _bare(device_name: str) -> str:
    name = device_name.strip()
    return name[len("NVIDIA ") :] if name.startswith("NVIDIA ") else name


def table_peak(device_name: str, dtype: str) -> Peak | None:
    """The datasheet peak of ``device_name`` (exactly as CUDA names it) in ``dtype``, if listed."""
    entry = _BY_NAME.get(_bare(device_name))
    if entry is None or dtype not in entry.flops:
        return None
    return Peak(
        entry.flops[dtype], dtype, f"{_bare(device_name)} {dtype} datasheet peak ({entry.source})"
    )


_MEASURED: dict[tuple[str, str], float] = {}


def measured_peak_flops(
    dtype: str = "fp32",
    device: str | torch.device | None = None,
    n: int | None = None,
    rounds: int = 5,
    seconds: float = 0.1,
) -> float:
    """The best of ``rounds`` timings of square ``n`` x ``n`` matmuls in ``dtype``, FLOP/s.

    Measured once per (device, dtype) per process. On a shared machine each round can lose
    time to other work, so the fastest round is the closest to the device's peak.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (str(device), dtype)
    if key in _MEASURED:
        return _MEASURED[key]
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up
    sync()
    best = 0.0
    for _ in range(rounds):
        reps, start = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, 2.0 * n**3 * reps / elapsed)
    _MEASURED[key] = best
    return best


def peak_for(cfg: RunConfig, device: torch.device) -> Peak:
    """The peak MFU is measured against, for ``cfg``'s precision on ``device``."""
    dtype = matmul_dtype(cfg.train.precision)
    if cfg.train.peak_flops:
        return Peak(cfg.train.peak_flops, dtype, "train.peak_flops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = table_peak(name, dtype)
        if found is not None:
            return found
        listed = _bare(name) in _BY_NAME
        log.warning(
            "MFU: %s; measuring a %s matmul peak instead (a lower bound: MFU reads high). "
            "Set train.peak_flops to the device's dense %s datasheet peak",
            f"{name!r} has no {dtype} entry"
            if listed
            else f"{name!r} is not in the "
            "datasheet table (filtertron/train/mfu.py PEAK_FLOPS, exact names)",
            dtype,
            dtype,
        )
    flops = measured_peak_flops(dtype, device)
    return Peak(
        flops, dtype, f"measured {dtype} matmul on {device.type}, best of 5 rounds", measured=True
    )


def hardware_flops_per_token(cfg: ModelConfig, recomputed: list[int]) -> float:
    """Model FLOPs plus the forwards of the blocks ``recomputed`` by activation checkpointing
    (block indices, each recomputed once per step; a forward is a third of a block's
    training FLOPs, :func:`filtertron.train.flops.block_flops`)."""
    return flops_per_token(cfg) + sum(block_flops(cfg, i) / 3.0 for i in recomputed)


class Utilization:
    """MFU (and HFU when activations are recomputed) of measured throughputs.

    Args:
        model_flops: Model FLOPs per token.
        hardware_flops: FLOPs per token including recomputation, or None without it.
        peak: Peak of one device.
        devices: Number of devices the tokens/s are spread over.
    """

    def __init__(
        self, model_flops: float, hardware_flops: float | None, peak: Peak, devices: int
    ) -> None:
        self.model_flops, self.hardware_flops = model_flops, hardware_flops
        self.peak, self.devices = peak, devices
        self.over = 0  # steps whose MFU or HFU came out above 100%

    def cause(self, value: float, name: str) -> str:
        """Why ``name`` = ``value`` > 1 is not believable, for the warning."""
        p = self.peak
        head = f"{name} {100 * value:.0f}% > 100% against {p.flops / 1e12:.3g} TFLOP/s ({p.source})"
        if p.source == "train.peak_flops":
            why = "train.peak_flops is below what this device reaches; set it to the device's peak"
        elif p.measured:
            why = (
                "the measured peak under-estimates the device (a busy or shared machine, or "
                "a matmul shape slower than the model's); set train.peak_flops to its "
                "datasheet peak"
            )
        else:
            why = (
                "the datasheet entry does not fit this device or dtype, or FLOPs per token "
                "are over-counted; set train.peak_flops"
            )
        return f"{head}: {why}. Not logged as a number."

    def __call__(self, tokens_per_s: float) -> dict[str, float | None]:
        """``{"mfu": ..., "hfu": ...}`` (hfu only with recomputation); None above 1.0."""
        capacity = self.peak.flops * self.devices
        out: dict[str, float | None] = {"mfu": tokens_per_s * self.model_flops / capacity}
        if self.hardware_flops is not None:
            out["hfu"] = tokens_per_s * self.hardware_flops / capacity
        bad = [name for name, value in out.items() if value is not None and value > 1.0]
        if bad and not self.over:
            log.warning(self.cause(out[bad[0]], bad[0].upper()))
        self.over += bool(bad)
        for name in bad:
            out[name] = None
        return out

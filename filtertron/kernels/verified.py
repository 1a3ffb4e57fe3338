"""What ``impl="auto"`` may pick: per (device type, kernel family), the impls verified there.

    VERIFIED[(device type, family)] = (Verified(impl, check, evidence), ...)   best first

One row per device type ("cpu", "cuda") and family ("softmax", "alibi", "bilateral",
"twicing", :attr:`filtertron.kernels.description.Kernel.family`). ``auto`` takes the first
impl of the row that serves the call (:func:`filtertron.kernels.registry.resolve`); an impl
that is not in a row is never picked there, however fast it may be. A device type without a
row gets "reference" (plain PyTorch ops), with a console warning.

Each entry names the :class:`Check` (date, what ran, where the numbers are) that showed the
impl correct on that device type, and what it showed. "reference" ends every row: the one impl
with bilateral dropout, plain PyTorch ops (matmul, softmax, masked_fill, dropout), O(T^2)
memory; auto warns on the console when it lands there.

Updating from a GPU check: add a :class:`Check` for the run (date, command, stack, where
its log is kept), then add or reorder entries with what that run showed (correct against the
reference at which shapes and dtypes, and the measured speed that decides the order). Triton
(``impl="triton"``) is not in the CUDA rows: its kernels failed to compile on the H200 of
2026-12-04; add it once a GPU check shows them correct (and first only if it is faster there).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """One run that verified impls: when, what ran (command and stack), where its record is."""

    date: str  # ISO date of the run
    run: str
    record: str


@dataclass(frozen=True)
class Verified:
    """An impl shown correct on a device type by ``check``; ``evidence`` says what ran."""

    impl: str
    check: Check
    evidence: str


CPU_CI = Check(
    "2026-12-04",
    "the CPU test suite of this repo (make test / .ci/run; torch 2.13.0+cpu): every kind x impl "
    "forward and backward against the literal math at T = 97, D = 48 (fp32, fp64)",
    "tests/model/test_attention_ops.py, tests/model/test_attention_math.py",
)
H200_2026_12_04 = Check(
    "2026-12-04",
    "the H200 GPU check of 2026-12-04 (torch 2.11.0+cu130, Triton 3.6.0, NCCL 2.28.9; main "
    "at 2ba09e3): pytest -m gpu (cut at 240 s), bench/attention.py --device cuda, the tiny "
    "preset trained with the deepspeed launcher",
    "shared/notes/gpu-run-2026-12-04.md",
)

_CPU_TESTS = "matches the literal math, forward and backward (tests/model/test_attention_ops.py)"
_CPU_REF = "the materialised reference matches the literal math (tests/model/test_attention_ops)"
_CUDA_REF = (
    "not called as an impl: the same plain PyTorch ops formed the literal reference that the "
    "CUDA kernels were compared with in that run"
)
_FLEX_CUDA = (
    "compiled FlexAttention correct on CUDA (issue 17); bilateral fwd+bwd with a score_mod "
    "compiled once: 0.82-0.89x SDPA flash's time at T = 2K-16K, D = 128, bf16 (bandwidths fixed)"
)


def _cpu(family: str) -> tuple[Verified, ...]:
    sdpa = "SDPA" if family == "softmax" else "the tiled engine (impl='sdpa' runs it)"
    return (
        Verified("sdpa", CPU_CI, f"{sdpa} {_CPU_TESTS}"),
        Verified("reference", CPU_CI, _CPU_REF),
    )


VERIFIED: dict[tuple[str, str], tuple[Verified, ...]] = {
    **{("cpu", f): _cpu(f) for f in ("softmax", "alibi", "bilateral", "twicing")},
    ("cuda", "softmax"): (
        Verified(
            "sdpa",
            H200_2026_12_04,
            "SDPA flash was bench/attention.py's baseline (233-314 TFLOP/s fwd+bwd, T = 2K-16K, "
            "D = 128, bf16); a plain loop trained GPT-2 small through it at 331K tokens/s",
        ),
        Verified("reference", H200_2026_12_04, _CUDA_REF),
    ),
    ("cuda", "alibi"): (
        Verified(
            "flex",
            H200_2026_12_04,
            "the tiny preset (ALiBi) trained 50 steps with impl=flex, bf16, ZeRO-2 on NCCL: loss "
            "7.60 -> 4.19, val 3.94; --resume from step 25 repeated steps 26-50 exactly",
        ),
        Verified(
            "sdpa",
            H200_2026_12_04,
            "tests/eval/test_cuda.py: perplexity of an ALiBi model with impl=sdpa (the tiled "
            "engine) on CUDA equals CPU within 1e-5 relative (forward only)",
        ),
        Verified("reference", H200_2026_12_04, _CUDA_REF),
    ),
    ("cuda", "bilateral"): (
        Verified("flex", H200_2026_12_04, _FLEX_CUDA),
        Verified("reference", H200_2026_12_04, _CUDA_REF),
    ),
    ("cuda", "twicing"): (
        Verified(
            "flex",
            H200_2026_12_04,
            "compiled FlexAttention correct on CUDA (issue 17); twicing softmax and bilateral ran "
            "in bench/attention.py --device cuda (T = 1K-2K, bf16)",
        ),
        Verified("reference", H200_2026_12_04, _CUDA_REF),
    ),
}

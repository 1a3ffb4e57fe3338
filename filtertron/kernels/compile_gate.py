"""The Triton compile gate: every launch impl="triton" can make, compiled for a GPU, no GPU needed.

    python tools/triton_gate.py [--archs 80,90] [--jobs N]     (make test runs it)

1. **Record.** The op (:mod:`filtertron.kernels.triton_op`) runs on CPU tensors over the whole
   matrix of :data:`CASES` (every kind, base and content; banded and dense; causal and
   two-sided; fp32 (TF32), bf16, fp16; head dims 64, 80, 128; inference, training with frozen
   and with learnable bandwidths / slopes) with the launch configuration of each target
   architecture (:func:`triton_op.for_arch`), not the interpreter's. Each kernel launch is
   intercepted before it runs: Triton's own binder turns its arguments into the signature,
   constexprs and alignment attributes that a GPU launch would compile, and these are kept.
2. **Compile.** Each distinct launch goes through ``triton.compile(ASTSource(...),
   target=GPUTarget("cuda", arch, 32))`` down to cubin (ptxas ships inside the triton wheel),
   in parallel processes; Triton's cache (``TRITON_CACHE_DIR``, keyed by the kernels' source
   hash) makes a second run cheap.
3. **Check.** A launch fails when it does not compile, when its shared memory exceeds the
   architecture's per-block limit (:data:`SMEM_LIMIT`), or when it spills registers (registers
   and stack from the wheel's ``cuobjdump -res-usage``; where there is a stack frame, the
   spill stores and loads from ``ptxas -v``). The only exemptions are :data:`KNOWN_FAILURES`,
   in this one place.

What the gate cannot see: speed, and numbers (the interpreter tests check the numbers; the GPU
check, tools/gpu/check.sh, both on a GPU).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

# Per-block shared memory limit (bytes, opt-in maximum) per compute capability.
SMEM_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
# Launches allowed to fail, as (kernel name, arch, reason substring) — one place, empty: every
# specialization compiles, spill-free, within shared memory, with Triton 3.6 and the newest.
KNOWN_FAILURES: tuple[tuple[str, int, str], ...] = ()

KINDS = {  # name -> attention() arguments (tensors per head filled in by _case_args)
    "softmax": {"kind": "softmax"},
    "alibi": {"kind": "softmax", "alibi": True},
    "bilateral-dot": {"kind": "bilateral", "content": "dot"},
    "bilateral-gaussian": {"kind": "bilateral", "content": "gaussian"},
    "twicing-softmax": {"kind": "twicing", "base": "softmax"},
    "twicing-alibi": {"kind": "twicing", "base": "softmax", "alibi": True},
    "twicing-bilateral-dot": {"kind": "twicing", "base": "bilateral", "content": "dot"},
    "twicing-bilateral-gaussian": {"kind": "twicing", "base": "bilateral", "content": "gaussian"},
}
DTYPES = ("float32", "bfloat16", "float16")
HEAD_DIMS = (64, 80, 128)
GRAD = ("inference", "frozen", "learnable")  # no grad; q, k, v only; also h_y, h_p / slopes


@dataclass(frozen=True)
class Case:
    """One op call of the matrix."""

    kind: str
    banded: bool
    causal: bool
    dtype: str
    head_dim: int
    grad: str

    def __str__(self) -> str:
        band = "banded" if self.banded else "dense"
        side = "causal" if self.causal else "two-sided"
        return f"{self.kind} {band} {side} {self.dtype} D={self.head_dim} {self.grad}"


def cases() -> list[Case]:
    """The whole matrix (a band only where there is a position term)."""
    out = []
    for kind, args in KINDS.items():
        positional = args.get("alibi") or "bilateral" in (args["kind"], args.get("base"))
        for banded, causal, dtype, D, grad in itertools.product(
            (True, False) if positional else (False,), (True, False), DTYPES, HEAD_DIMS, GRAD
        ):
            out.append(Case(kind, banded, causal, dtype, D, grad))
    return out


@dataclass
class Launch:
    """One kernel specialization as a GPU launch would compile it."""

    kernel: str
    arch: int
    signature: dict[str, str]
    constexprs: list[tuple[list[int], object]]
    attrs: list[tuple[list[int], list]]
    num_warps: int
    num_stages: int
    cases: list[str] = field(default_factory=list)  # the op calls that launch it

    @property
    def key(self) -> str:
        spec = [self.kernel, self.arch, self.signature, self.constexprs, self.attrs]
        return json.dumps([*spec, self.num_warps, self.num_stages], sort_keys=True, default=str)

    def label(self) -> str:
        names = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "POSITION", "SECOND", "MODE")
        params = list(self.signature)
        const = {params[p[0]]: v for p, v in self.constexprs if params[p[0]] in names}
        dtype = self.signature.get("Q", "?").lstrip("*")
        text = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in const.items())
        return f"{self.kernel} sm_{self.arch} {dtype} {text} w{self.num_warps}s{self.num_stages}"


def _case_args(case: Case, H: int, torch) -> dict:
    args = {k: v for k, v in KINDS[case.kind].items() if k != "alibi"}
    learn = case.grad == "learnable"
    if KINDS[case.kind].get("alibi"):
        slopes = torch.tensor([2.0 ** -(i + 1) for i in range(H)])
        args["alibi_slopes"] = slopes.requires_grad_(learn)
    if "bilateral" in (args["kind"], args.get("base")):
        args["h_p"] = torch.linspace(4.0, 64.0, H).requires_grad_(learn)
        if learn:
            D = case.head_dim
            default = D**0.5 if args.get("content", "dot") == "dot" else D**0.25
            args["h_y"] = torch.full((H,), default).requires_grad_(True)
    if not case.banded:
        args["band_eps"] = None
    return args


@contextmanager
def _intercept(record: Callable) -> Iterator[None]:
    """JITFunction.run records (kernel, Triton's binder output) instead of launching."""
    from triton.runtime import jit

    original = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        record(self, args, kwargs)

    jit.JITFunction.run = run
    try:
        yield
    finally:
        jit.JITFunction.run = original


def record(arch: int, matrix: Iterable[Case] | None = None, T: int = 300) -> list[Launch]:
    """Every distinct launch of the op over ``matrix`` (default :func:`cases`) for compute
    capability ``arch`` (80, 90, ...), with the launch configuration the op uses there."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from filtertron.kernels import triton_op
    from filtertron.model.attention.functional import attention

    if triton_op.INTERPRETED:
        raise RuntimeError("the compile gate needs TRITON_INTERPRET unset (it compiles kernels)")
    backend = make_backend(GPUTarget("cuda", arch, 32))
    launches: dict[str, Launch] = {}
    current: list[str] = []

    def keep(fn, args, kwargs):
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
        launch = Launch(
            fn.__name__, arch, dict(signature),
            sorted(([list(k), v] for k, v in constexprs.items()), key=str),
            sorted(([list(k), v] for k, v in attrs.items()), key=str),
            options.num_warps, options.num_stages,
        )  # fmt: skip
        launch = launches.setdefault(launch.key, launch)
        launch.cases.append(current[0])

    B, H, tf32 = 1, 2, torch.backends.cuda.matmul.allow_tf32
    unsupported = triton_op.unsupported
    triton_op.unsupported = lambda kernel: None  # CPU tensors stand in for CUDA ones
    torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 path (TF32, the precision policy)
    try:
        with triton_op.for_arch(9 if arch >= 90 else 8), _intercept(keep):
            for case in matrix if matrix is not None else cases():
                current[:] = [str(case)]
                dtype, grad = getattr(torch, case.dtype), case.grad != "inference"
                q, k, v = (
                    torch.randn(B, H, T, case.head_dim, dtype=dtype).requires_grad_(grad)
                    for _ in range(3)
                )
                out = attention(
                    q, k, v, impl="triton", causal=case.causal, **_case_args(case, H, torch)
                )
                if grad:
                    out.backward(torch.ones_like(out))
    finally:
        triton_op.unsupported = unsupported
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return list(launches.values())


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL ... of the cubin's kernel, from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    line = [x for x in text.splitlines() if "REG:" in x][-1]
    return {k: int(v) for k, v in (w.split(":") for w in line.split() if w.count(":") == 1)}


def _spill_bytes(ptx: str, arch: int) -> int:
    """Spill stores + loads (bytes) reported by ``ptxas -v`` for the kernel's PTX."""
    import re

    from triton.backends.nvidia import compiler as nvidia

    try:
        tool = nvidia.get_ptxas(arch)
    except TypeError:  # older Triton: one ptxas for every arch
        tool = nvidia.get_ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        gpu = nvidia.sm_arch_from_capability(arch)
        proc = subprocess.run(
            [tool.path, "-v", f"--gpu-name={gpu}", src, "-o", src + ".o"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.findall(r"(\d+) bytes spill (?:stores|loads)", proc.stderr)
    return sum(int(n) for n in found)


def compile_launch(launch: Launch, module: str = "filtertron.kernels.triton_kernels") -> dict:
    """Compile one launch to cubin; {ok, error, regs, stack, shared, seconds}."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(module), launch.kernel)
    constexprs = {tuple(k): v for k, v in launch.constexprs}
    attrs = {tuple(k): v for k, v in launch.attrs}
    start = time.perf_counter()
    try:
        kernel = triton.compile(
            ASTSource(fn, launch.signature, constexprs, attrs),
            target=GPUTarget("cuda", launch.arch, 32),
            options={"num_warps": launch.num_warps, "num_stages": launch.num_stages},
        )
    except Exception as err:  # noqa: BLE001 - every compiler error is a gate failure
        message = f"{type(err).__name__}: {err}".strip().splitlines()
        return {"ok": False, "error": " | ".join(message[:6]), "seconds": 0.0}
    seconds = time.perf_counter() - start
    res = _resources(kernel.asm["cubin"])
    shared = int(kernel.metadata.shared) + res.get("SHARED", 0)
    stack = res.get("STACK", 0)
    # A stack frame is not always a spill: ask ptxas (only then, it doubles the time).
    spills = _spill_bytes(kernel.asm["ptx"], launch.arch) if stack or res.get("LOCAL") else 0
    return {
        "ok": True, "error": "", "regs": res["REG"], "stack": stack, "spill_bytes": spills,
        "shared": shared, "seconds": seconds,
    }  # fmt: skip


def problems(launch: Launch, result: dict) -> list[str]:
    """Why a compiled launch fails the gate (empty: it passes)."""
    if not result["ok"]:
        return [f"does not compile: {result['error']}"]
    out = []
    limit = SMEM_LIMIT[launch.arch]
    if result["shared"] > limit:
        out.append(f"shared memory {result['shared']} B > sm_{launch.arch}'s {limit} B")
    if result["spill_bytes"]:
        out.append(
            f"spills registers ({result['regs']} registers, {result['spill_bytes']} B of spill "
            f"stores and loads, {result['stack']} B stack)"
        )
    return out


def known(launch: Launch, problem: str) -> bool:
    """Whether ``problem`` of ``launch`` is on the known-failure list."""
    return any(
        k == launch.kernel and a == launch.arch and reason in problem
        for k, a, reason in KNOWN_FAILURES
    )


def _compile_args(args: tuple[Launch, str]) -> dict:
    return compile_launch(*args)


def compile_all(
    launches: list[Launch],
    jobs: int,
    module: str = "filtertron.kernels.triton_kernels",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Compile every launch in ``jobs`` processes, in order."""
    if jobs <= 1:
        results = []
        for i, launch in enumerate(launches):
            results.append(compile_launch(launch, module))
            if progress:
                progress(i + 1, len(launches))
        return results
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that ran torch
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        results = []
        args = [(launch, module) for launch in launches]
        for i, result in enumerate(pool.map(_compile_args, args)):
            results.append(result)
            if progress:
                progress(i + 1, len(launches))
        return results

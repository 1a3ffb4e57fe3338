"""Imports run downward only: a package imports only the packages below it.

    config, logs  <  model, data  <  parallel  <  checkpoint  <  train, eval  <  the CLI

train and eval do not import each other; model imports no torch.distributed, DeepSpeed or
megatron-core (STYLE.md: the model is plain single-device PyTorch). Packages this test does
not list (added by other work) are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "filtertron"
LEVEL = {
    "config": 0,
    "logs": 0,
    "model": 1,
    "kernels": 1,
    "data": 1,
    "parallel": 2,
    "checkpoint": 3,
    "train": 4,
    "eval": 4,
}
PEERS = {("train", "eval"), ("eval", "train")}
MODEL_FORBIDDEN = ("torch.distributed", "deepspeed", "megatron")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [
                (node.lineno, f"{node.module}.{a.name}")
                for a in node.names
                if node.module == "filtertron"
            ]
    return out


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "filtertron" and len(parts) > 1 else None


def test_no_upward_imports():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        here = rel.parts[0].removesuffix(".py")
        if here not in LEVEL:
            continue
        for line, module in _imports(path):
            there = _top(module)
            if there is None or there == here or there not in LEVEL:
                continue
            same = LEVEL[there] == LEVEL[here] and (here, there) not in PEERS
            if not (LEVEL[there] < LEVEL[here] or same):
                bad.append(f"filtertron/{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_model_is_single_device_pytorch():
    bad = [
        f"{p.relative_to(PACKAGE)}:{line} {m}"
        for p in sorted((PACKAGE / "model").rglob("*.py"))
        for line, m in _imports(p)
        if m.startswith(MODEL_FORBIDDEN)
    ]
    assert not bad, bad

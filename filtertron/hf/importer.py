"""``filtertron import HF_DIR --out RUN_DIR``: a Hugging Face GPT-2 as a filtertron checkpoint.

    filtertron import HF_DIR --out RUN_DIR [--force]

HF_DIR is a local directory with ``config.json`` (``model_type: gpt2``) and weights in any
format transformers reads. The checkpoint is written as ``filtertron convert`` writes
weights-only checkpoints, inside a run directory so that evaluation and resumed training find
it::

    RUN_DIR/config.yaml                        the run config (model from config.json)
    RUN_DIR/tokenizer.json                     HF_DIR's tokenizer, if it has one
    RUN_DIR/checkpoints/step_00000000/         model.pt, DeepSpeed module files,
                                               filtertron.json ("weights_only": true)

    filtertron eval RUN_DIR --data DATA            # DATA prepared with this tokenizer
    filtertron train RUN_DIR/config.yaml --set data.path=DATA --resume

The checkpoint records the tokenizer's hash: that of ``tokenizer.json``, or, for a directory
written by ``filtertron export`` whose tokenizer file is unchanged, the hash of the tokenizer
it was exported from (the two encode alike), so the source dataset still matches.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from filtertron.config import RunConfig, TrainConfig, dump_config
from filtertron.data.tokenizer import file_hash
from filtertron.hf.export import MARKER as EXPORT_MARKER
from filtertron.hf.export import PROBE_TOL, ExportError
from filtertron.hf.gpt2 import from_gpt2, from_gpt2_config, gpt2_problems
from filtertron.hf.staging import check_outdir, staged

log = logging.getLogger("filtertron")


def read_hf_config(hf_dir: Path) -> dict:
    """``config.json`` of a Hugging Face model directory, checked importable.

    Raises:
        FileNotFoundError: not a model directory.
        ValueError: an architecture filtertron cannot import, naming the fields.
    """
    f = hf_dir / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json; not a Hugging Face model directory")
    try:
        hf = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    problems = gpt2_problems(hf)
    if problems:
        raise ValueError(f"{f}: unsupported architecture for import: " + "; ".join(problems))
    return hf


def tokenizer_hash(hf_dir: Path) -> str | None:
    """The hash to record for HF_DIR's tokenizer (see the module docstring), or None."""
    f = hf_dir / "tokenizer.json"
    if not f.is_file():
        return None
    h = file_hash(f)
    marker = hf_dir / EXPORT_MARKER
    if marker.is_file():
        desc = json.loads(marker.read_text()).get("tokenizer") or {}
        if desc.get("exported_hash") == h:
            return desc["source_hash"]
    return h


def import_hf(hf_dir: str | Path, out: str | Path, force: bool = False) -> tuple[Path, float]:
    """Import a GPT-2 Hugging Face model as a filtertron run directory.

    Args:
        hf_dir: A local Hugging Face model directory (``model_type: gpt2``).
        out: The run directory to write (absent or empty unless ``force``).
        force: Replace a non-empty ``out`` once the new one is complete.

    Returns:
        (the committed step directory, max |logit difference| on a probe batch).

    Raises:
        FileNotFoundError, ValueError: bad input, before anything is written.
    """
    from transformers import GPT2LMHeadModel

    from filtertron.checkpoint import files as ckpt
    from filtertron.checkpoint.shards import write_layout
    from filtertron.model import build_model

    hf_dir, out = Path(hf_dir), Path(out)
    hf_cfg = read_hf_config(hf_dir)
    check_outdir(out, force, [hf_dir])
    mcfg = from_gpt2_config(hf_cfg)
    hf = GPT2LMHeadModel.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    state = from_gpt2({k: v.detach() for k, v in hf.state_dict().items()}, mcfg)
    model = build_model(mcfg).eval()
    model.load_state_dict(state)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, mcfg.vocab_size, (2, min(64, mcfg.seq_len)), generator=g)
    with torch.no_grad():
        diff = float((model(idx) - hf(input_ids=idx).logits).abs().max())
    if not diff <= PROBE_TOL:
        raise ExportError(f"the imported model's logits differ from {hf_dir}'s by {diff:.3g}")
    cfg = RunConfig(model=mcfg, train=TrainConfig(out_dir=str(out.resolve())))
    with staged(out) as tmp:
        step = tmp / "checkpoints" / ckpt.tag_for(0)
        step.mkdir(parents=True)
        full = {k: v.clone() for k, v in model.state_dict().items()}
        ckpt.save_model(step, full)
        write_layout(full, cfg, step)
        ckpt.commit(
            step,
            {
                "step": 0,
                "consumed_samples": 0,
                "config": cfg.to_dict(),
                "weights_only": True,
                "tokenizer_hash": tokenizer_hash(hf_dir),
                "imported": {
                    "from": str(hf_dir.resolve()),
                    "model_type": "gpt2",
                    "max_logit_difference": diff,
                },
            },
        )
        dump_config(cfg, tmp / "config.yaml")
        if (hf_dir / "tokenizer.json").is_file():
            shutil.copyfile(hf_dir / "tokenizer.json", tmp / "tokenizer.json")
    log.info("imported %s -> %s; max |logit difference| %.2g", hf_dir, out, diff)
    return out / "checkpoints" / ckpt.tag_for(0), diff


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``import`` options to ``p``."""
    p.add_argument("hf_dir", help="local Hugging Face model directory (GPT-2 architecture)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron import``; returns 2 on bad input (nothing written)."""
    try:
        step, diff = import_hf(args.hf_dir, args.out, args.force)
    except (ValueError, FileNotFoundError) as e:
        print(f"filtertron import: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {step} (max |logit difference| {diff:.2g})")
    return 0

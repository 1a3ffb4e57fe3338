"""``filtertron export``: a checkpoint as a Hugging Face model, or a split as an lm-eval task.

    filtertron export CHECKPOINT --to hf OUTDIR [--force] [--tokenizer DIR | --no-tokenizer]
    filtertron export DATASET --to lm-eval TASKDIR [--split test] [--max-tokens N] [--force]

``--to hf`` reads any checkpoint layout (TP / PP / ZeRO are consolidated first, see
:mod:`filtertron.hf.source`). A plain model (softmax attention, learned positions, standard
residual, biases) becomes ``GPT2LMHeadModel``, loadable with no custom code; every other model
becomes ``FiltertronForCausalLM``, remote code (``trust_remote_code=True``) copied from
:mod:`filtertron.hf.remote` and registered for ``AutoConfig`` / ``AutoModelForCausalLM``
(``model_type: filtertron``, ``auto_map``). OUTDIR gets ``config.json``, ``model.safetensors``,
``generation_config.json``, the tokenizer files (:mod:`filtertron.hf.tokenizer`) and
``filtertron_export.json`` (source, kind, measured logit difference, tokenizer hashes).

Before anything is written the exported model is run beside filtertron's reference-attention
model on a probe batch; an export whose logits differ by more than ``PROBE_TOL`` is refused.
Output is staged and renamed into place (:mod:`filtertron.hf.staging`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from filtertron.config import ModelConfig
from filtertron.hf.gpt2 import gpt2_config_kwargs, plain_problems, to_gpt2
from filtertron.hf.remote_map import remote_config_kwargs, to_remote
from filtertron.hf.source import find_tokenizer, load_checkpoint
from filtertron.hf.staging import check_outdir, staged

log = logging.getLogger("filtertron")
PROBE_TOL = 1e-4  # fp32; observed differences are ~1e-6
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MARKER = "filtertron_export.json"
# Texts the exported tokenizer must encode exactly as filtertron's, checked at every export.
PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " = Heading = \n\n  two  spaces,\ttab, trailing space \n",
    "digits 0123456789 3.14159 1,000,000",
    "café naïve Zürich 日本語 🙂 \u00a0nbsp",
]


class ExportError(ValueError):
    """The export would not reproduce the checkpoint; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    out: Path
    kind: str  # "gpt2" (plain) or "remote" (trust_remote_code)
    not_plain: list[str]  # why the model needs remote code
    max_logit_difference: float
    tokenizer: dict | None


def build_hf_model(model: torch.nn.Module, cfg: ModelConfig, eod_id: int | None):
    """The Hugging Face model holding ``model``'s weights (fp32), and its kind."""
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    special = {"bos_token_id": eod_id, "eos_token_id": eod_id, "pad_token_id": None}
    if not plain_problems(cfg):
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(**gpt2_config_kwargs(cfg), **special))
        mapped, kind = to_gpt2(state, cfg), "gpt2"
    else:
        from filtertron.hf.remote.configuration_filtertron import FiltertronConfig
        from filtertron.hf.remote.modeling_filtertron import FiltertronForCausalLM

        FiltertronConfig.register_for_auto_class()
        FiltertronForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        hf = FiltertronForCausalLM(FiltertronConfig(**remote_config_kwargs(cfg), **special))
        mapped, kind = to_remote(state, cfg), "remote"
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    if cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ExportError(
            f"weights do not fit the {kind} model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return hf.eval(), kind


def reference_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every attention layer on the reference implementation."""
    from filtertron.model import build_model

    cfg = model.config
    ref_cfg = dataclasses.replace(
        cfg, attention=dataclasses.replace(cfg.attention, impl="reference")
    )
    ref = build_model(ref_cfg)
    ref.load_state_dict(model.state_dict())
    return ref.float().eval()


@torch.no_grad()
def max_logit_difference(model: torch.nn.Module, hf: torch.nn.Module, T: int = 64) -> float:
    """max |logits(filtertron reference) - logits(hf)| on a fixed random (2, T) batch."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (2, min(T, cfg.seq_len)), generator=g)
    ours = reference_model(model)(idx)
    theirs = hf(input_ids=idx).logits
    return float((ours - theirs.float()).abs().max())


def export_hf(
    checkpoint: str | Path,
    out: str | Path,
    force: bool = False,
    tokenizer: str | None = None,
    no_tokenizer: bool = False,
    dtype: str = "float32",
) -> ExportReport:
    """Export a filtertron checkpoint as a Hugging Face model directory.

    Args:
        checkpoint: A run, checkpoints or step directory of any layout.
        out: The output directory (must be absent or empty unless ``force``).
        force: Replace a non-empty ``out`` (once the new export is complete).
        tokenizer: The dataset directory or tokenizer file; default the checkpoint's
            ``data.path``.
        no_tokenizer: Export the model only.
        dtype: Weight dtype written: float32, bfloat16 or float16.

    Returns:
        What was written and the measured logit difference.

    Raises:
        FileNotFoundError: no checkpoint, or no tokenizer, there.
        ValueError: a bad ``out``, ``dtype`` or tokenizer; :class:`ExportError` if the
            export does not reproduce the checkpoint.
    """
    from transformers import GenerationConfig

    from filtertron.checkpoint.files import resolve
    from filtertron.hf.tokenizer import hf_tokenizer, mismatches, save_hf_tokenizer

    out = Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {list(DTYPES)}")
    info = resolve(checkpoint)
    check_outdir(out, force, [info.path])
    model, cfg, info = load_checkpoint(info.path)
    tok = None if no_tokenizer else find_tokenizer(cfg, info, tokenizer)
    hf, kind = build_hf_model(model, cfg.model, tok.eod_id if tok else None)
    diff = max_logit_difference(model, hf)
    if not diff <= PROBE_TOL:
        raise ExportError(
            f"the exported {kind} model's logits differ from the checkpoint's by "
            f"{diff:.3g} (> {PROBE_TOL}); nothing was written"
        )
    limit = hf.config.max_position_embeddings
    if tok is not None:
        bad = mismatches(hf_tokenizer(tok, limit), tok, PROBE_TEXTS)
        if bad:
            raise ExportError(
                f"the exported tokenizer encodes {PROBE_TEXTS[bad[0]]!r} "
                "differently from filtertron's; nothing was written"
            )
    with staged(out) as tmp:
        hf.to(DTYPES[dtype]).save_pretrained(str(tmp))
        eod = tok.eod_id if tok else None
        GenerationConfig(
            bos_token_id=eod, eos_token_id=eod, pad_token_id=eod, use_cache=kind == "gpt2"
        ).save_pretrained(str(tmp))
        tok_desc = save_hf_tokenizer(tok, tmp, limit) if tok else None
        marker = {
            "format": "filtertron-hf-export/1",
            "source": str(info.path),
            "step": info.step,
            "kind": kind,
            "not_plain": plain_problems(cfg.model),
            "max_logit_difference": diff,
            "dtype": dtype,
            "tokenizer": tok_desc,
            "train_length": cfg.model.seq_len,
            "model": dataclasses.asdict(cfg.model),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    log.info("exported %s (%s) -> %s; max |logit difference| %.2g", info.path, kind, out, diff)
    return ExportReport(out, kind, plain_problems(cfg.model), diff, tok_desc)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to ``p``."""
    p.add_argument(
        "source",
        help="checkpoint (run, checkpoints or step directory) for --to hf; "
        "prepared dataset directory for --to lm-eval",
    )
    p.add_argument(
        "--to",
        nargs=2,
        required=True,
        metavar=("FORMAT", "OUTDIR"),
        help="hf OUTDIR (a Hugging Face model) or lm-eval TASKDIR (a task)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="hf: dataset directory or tokenizer file (default: the checkpoint's data.path)",
    )
    p.add_argument("--no-tokenizer", action="store_true", help="hf: export the model only")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="hf: weight dtype")
    p.add_argument("--split", default="test", help="lm-eval: split to score (default: test)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="lm-eval: only the longest prefix of whole documents within N tokens "
        "(as filtertron eval --max-tokens)",
    )
    p.add_argument(
        "--task-name",
        default=None,
        help="lm-eval: task name (default: filtertron_<dataset>_<split>)",
    )
    p.add_argument(
        "--per-document",
        action="store_true",
        help="lm-eval: one request per document (lm-eval's usual convention) "
        "instead of the span as filtertron eval scores it",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron export``; returns 2 on bad input (nothing written)."""
    from filtertron.data import DataError

    fmt, out = args.to
    try:
        if fmt == "hf":
            r = export_hf(
                args.source, out, args.force, args.tokenizer, args.no_tokenizer, args.dtype
            )
            how = (
                "plain GPT2LMHeadModel"
                if r.kind == "gpt2"
                else f"remote code, trust_remote_code=True ({', '.join(r.not_plain)})"
            )
            print(f"wrote {r.out}: {how}; max |logit difference| {r.max_logit_difference:.2g}")
        elif fmt == "lm-eval":
            from filtertron.hf.lm_eval_task import write_task

            t = write_task(
                args.source,
                out,
                args.split,
                args.max_tokens,
                args.task_name,
                args.per_document,
                args.force,
            )
            print(
                f"wrote {t.out}: task {t.name} ({t.documents} documents, {t.words} words)\n"
                f"  lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True,"
                f"max_length=L --tasks {t.name} --include_path {t.out}"
            )
        else:
            raise ValueError(f"--to {fmt}: expected hf or lm-eval")
    except (ValueError, FileNotFoundError, DataError) as e:
        print(f"filtertron export: error: {e}", file=sys.stderr)
        return 2
    return 0

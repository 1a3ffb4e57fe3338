"""``filtertron generate``: greedy or sampled decoding from a checkpoint, in filtertron.

    filtertron generate CHECKPOINT --prompt TEXT [--max-new-tokens 50] [--temperature 0]
                        [--top-k K] [--seed 0] [--tokenizer DIR] [--no-stop]

Each step runs the model on the whole sequence (no KV cache) and reads the logits of the last
position: ``temperature`` 0 takes the argmax (greedy; ties go to the lowest id, as
``torch.argmax``), otherwise it samples from softmax(logits / temperature), restricted to the
``top_k`` most likely tokens when given. Learned positions stop at ``seq_len``: the context is
cut to its last ``seq_len`` tokens (nanoGPT's convention); the other schemes see all of it.
Decoding stops once every sequence has produced the end-of-document token (unless
``--no-stop``); finished sequences are padded with it.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue the sequences ``idx``.

    Args:
        model: A filtertron GPT (its ``config.position`` and ``seq_len`` are read).
        idx: (B, T) prompt ids, T >= 1.
        max_new_tokens: Tokens to add.
        temperature: 0 for greedy decoding, > 0 to sample.
        top_k: Sample only among the k most likely tokens (None: all).
        stop_id: Stop when every sequence has produced this id (None: never).
        generator: Random source for sampling.

    Returns:
        (B, T + n) ids, n <= max_new_tokens.
    """
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx: expected shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected >= 1, got {top_k}")
    model.eval()
    cfg = model.config
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        context = idx[:, -cfg.seq_len :] if cfg.position == "learned" else idx
        logits = model(context)[:, -1].float()  # (B, V)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if stop_id is not None:
            nxt = nxt.masked_fill(done, stop_id)
            done |= nxt == stop_id
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        if stop_id is not None and bool(done.all()):
            break
    return idx


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``generate`` options to ``p``."""
    p.add_argument(
        "checkpoint", help="run directory, its checkpoints/ directory, or a step directory"
    )
    p.add_argument("--prompt", default="", help="text to continue (default: start a document)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num-samples", type=int, default=1, help="sequences to generate")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="dataset directory or tokenizer file (default: the checkpoint's data.path)",
    )
    p.add_argument("--no-stop", action="store_true", help="do not stop at end-of-document")


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron generate``: print each continuation."""
    from filtertron.hf.source import find_tokenizer, load_checkpoint

    try:
        model, cfg, info = load_checkpoint(args.checkpoint)
        tok = find_tokenizer(cfg, info, args.tokenizer)
        prompt = tok.encode(args.prompt) or [tok.eod_id]
        idx = torch.tensor([prompt] * args.num_samples)
        out = generate(
            model,
            idx,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            None if args.no_stop else tok.eod_id,
            torch.Generator().manual_seed(args.seed),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"filtertron generate: error: {e}", file=sys.stderr)
        return 2
    for row in out.tolist():
        print(args.prompt + tok.decode(row[len(prompt) :]))
        if args.num_samples > 1:
            print("-" * 40)
    return 0

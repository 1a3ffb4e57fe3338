"""``filtertron generate``: greedy or sampled decoding from a checkpoint, in filtertron.

    filtertron generate CHECKPOINT --prompt TEXT [--max-new-tokens 50] [--temperature 0]
                        [--top-k K] [--seed 0] [--tokenizer DIR] [--no-stop]
                        [--device cpu|cuda] [--no-progress]

Each step runs the model on the whole sequence (no KV cache) and reads the logits of the last
position: ``temperature`` 0 takes the argmax (greedy; ties go to the lowest id, as
``torch.argmax``), otherwise it samples from softmax(logits / temperature), restricted to the
``top_k`` most likely tokens when given. Learned positions stop at ``seq_len``: the context is
cut to its last ``seq_len`` tokens (nanoGPT's convention); the other schemes see all of it.
Decoding stops once every sequence has produced the end-of-document token (unless
``--no-stop``); finished sequences are padded with it.

A compiled model (``model.compile()``, ``train.compile``) recompiles for every new input shape;
for it each step's context is padded on the right with token 0 to its length bucket
(:func:`filtertron.kernels.flex.length_bucket`: 128, 256, 384, 512, 768, ...; at most
``seq_len`` for learned positions) and the logits are read at the last real position, exact
for these causal models. So decoding compiles once per bucket, not once per token.
FlexAttention buckets its lengths itself, so an uncompiled model runs unpadded. A progress bar
(stderr) counts the new tokens unless ``--no-progress``. The model runs on ``--device``
(default: the GPU when there is one); sampling draws from a generator on that device, so a
seed samples differently on CPU and GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from filtertron.kernels.flex import length_bucket


def is_compiled(model: nn.Module) -> bool:
    """Whether calling ``model`` runs torch.compile (``model.compile()`` or torch.compile)."""
    compiled = getattr(model, "_compiled_call_impl", None) is not None
    return compiled or isinstance(model, torch._dynamo.eval_frame.OptimizedModule)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    bucket: bool | None = None,
    progress: bool = False,
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
        bucket: Pad each step's context to its length bucket (see the module docstring);
            None: when ``model`` is compiled.
        progress: Show a progress bar of the new tokens.

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
    learned = cfg.position == "learned"
    bucket = is_compiled(model) if bucket is None else bucket
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in tqdm(range(max_new_tokens), "generate", unit="tok", disable=not progress):
        context = idx[:, -cfg.seq_len :] if learned else idx
        T = context.shape[1]
        if bucket:
            size = min(length_bucket(T), cfg.seq_len) if learned else length_bucket(T)
            context = F.pad(context, (0, size - T))  # after the end: causal, never seen
        logits = model(context)[:, T - 1].float()  # (B, V)
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:N (default: cuda if present)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``filtertron generate``: print each continuation."""
    from filtertron.hf.source import find_tokenizer, load_checkpoint

    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, cfg, info = load_checkpoint(args.checkpoint)
        tok = find_tokenizer(cfg, info, args.tokenizer)
        prompt = tok.encode(args.prompt) or [tok.eod_id]
        idx = torch.tensor([prompt] * args.num_samples, device=device)
        out = generate(
            model.to(device),
            idx,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            None if args.no_stop else tok.eod_id,
            torch.Generator(device=device).manual_seed(args.seed),
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"filtertron generate: error: {e}", file=sys.stderr)
        return 2
    for row in out.tolist():
        print(args.prompt + tok.decode(row[len(prompt) :]))
        if args.num_samples > 1:
            print("-" * 40)
    return 0

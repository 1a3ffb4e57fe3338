"""Robustness: perplexity under contaminated input and embedding-space attacks.

Contamination (the word-swap attack of the twicing paper, on tokens): each input token is
replaced, with probability p, by a fixed token c (``fixed``) or by a uniformly random token
(``random``); targets stay clean. Whether stream position t is hit is a pure function of
(seed, t), u_t = hash(seed, t) / 2^64 < p, so a token is contaminated the same way in every
window that contains it, under any batching or number of processes, and the positions hit at
rate p are a subset of those hit at any larger rate.

Embedding attacks perturb y0 = embed(x) (B, T, C), the input of every block, inside the L-inf
ball ||delta||_inf <= eps, to raise the summed NLL J of the window's scored targets:

    FGSM:  delta = eps sign(grad_y0 J)
    PGD:   delta_0 = 0,  delta_{k+1} = clip_[-eps, eps](delta_k + alpha sign(grad J(y0 + delta_k)))
           K steps, alpha = 2.5 eps / K by default (Madry et al.); PGD with K = 1, alpha = eps
           is FGSM.

The model then runs from the perturbed embeddings (:func:`hidden_from_embeddings`); the
attacked perplexity is reported beside the clean one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from filtertron.eval.perplexity import Batch, Scorer, nll_from_hidden, window_nll

CONTAMINATION_MODES = ("fixed", "random")
ATTACKS = ("fgsm", "pgd")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def position_hash(positions: np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """A 64-bit hash of each stream position under (seed, stream); same shape, uint64."""
    key = _splitmix64(np.array([(seed * 2 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    with np.errstate(over="ignore"):
        return _splitmix64(positions.astype(np.uint64) ^ key)


def contamination_mask(positions: np.ndarray, rate: float, seed: int = 0) -> np.ndarray:
    """Which stream positions are contaminated at ``rate``: bool array of positions' shape."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"contamination rate: expected 0 <= p <= 1, got {rate}")
    u = (position_hash(positions, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < rate


def contaminate(
    inputs: torch.Tensor,
    starts: np.ndarray,
    rate: float,
    mode: str = "fixed",
    token: int = 0,
    vocab_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Contaminated copy of a batch of input windows.

    Args:
        inputs: (B, T) token ids of windows starting at stream positions ``starts`` (B,).
        starts: (B,) stream index of each window's first input.
        rate: Fraction p of input tokens to replace.
        mode: ``fixed`` (every hit becomes ``token``) or ``random`` (uniform in [0, vocab)).
        token: The fixed replacement token.
        vocab_size: Range of random tokens (``random`` mode).
        seed: Selects the positions (and random tokens).

    Returns:
        (B, T) ids; the targets of the windows are not touched.
    """
    if mode not in CONTAMINATION_MODES:
        raise ValueError(f"contamination mode: expected one of {CONTAMINATION_MODES}, got {mode!r}")
    pos = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(inputs.shape[1])  # (B, T)
    hit = torch.from_numpy(contamination_mask(pos, rate, seed)).to(inputs.device)
    if mode == "fixed":
        repl = torch.full_like(inputs, token)
    else:
        if not vocab_size:
            raise ValueError("random contamination needs vocab_size")
        repl = torch.from_numpy(
            (position_hash(pos, seed, 1) % np.uint64(vocab_size)).astype(np.int64)
        ).to(inputs.device, inputs.dtype)
    return torch.where(hit, repl, inputs)


def contamination_scorer(
    rate: float, mode: str = "fixed", token: int = 0, vocab_size: int | None = None, seed: int = 0
) -> Scorer:
    """A scorer (see :func:`filtertron.eval.perplexity.score`) on contaminated inputs."""

    def scorer(model: nn.Module, batch: Batch) -> torch.Tensor:
        bad = contaminate(batch.inputs, batch.starts, rate, mode, token, vocab_size, seed)
        return window_nll(model, dataclasses.replace(batch, inputs=bad))

    return scorer


def hidden_from_embeddings(model: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    """The GPT's forward from embedding output y0 (B, T, C) to final hidden states (B, T, C).

    The block loop of ``GPT.hidden_states`` (x = y0 = emb; x = block(x, y0); norm_f), without
    the token embedding, so ``emb`` can be perturbed.
    """
    x = emb
    for block in model.blocks:
        x = block(x, emb)
    return model.norm_f(x)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad (only the input perturbation is differentiated)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def embedding_attack(
    model: nn.Module,
    emb: torch.Tensor,
    targets: torch.Tensor,
    score_from: int,
    epsilon: float,
    steps: int = 1,
    alpha: float | None = None,
    score_to: int | None = None,
) -> torch.Tensor:
    """L-inf sign-gradient ascent on the embeddings: FGSM (steps=1, alpha=eps) or PGD.

    Args:
        model: The GPT, in eval mode.
        emb: (B, T) windows' clean embeddings y0, (B, T, C).
        targets: (B, T) clean targets.
        score_from: First scored position (the attack raises the NLL of scored targets).
        epsilon: L-inf radius, in embedding units.
        steps: Number of sign-gradient steps K.
        alpha: Step size; default eps for one step, 2.5 eps / K otherwise.
        score_to: End of the scored positions (exclusive); None for T.

    Returns:
        delta (B, T, C) with |delta| <= epsilon elementwise.
    """
    if epsilon < 0 or steps < 1:
        raise ValueError(f"attack: need epsilon >= 0 and steps >= 1, got {epsilon}, {steps}")
    if alpha is None:
        alpha = epsilon if steps == 1 else 2.5 * epsilon / steps
    emb = emb.detach()
    delta = torch.zeros_like(emb)
    with torch.enable_grad(), _frozen(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            hidden = hidden_from_embeddings(model, emb + delta)
            loss = nll_from_hidden(model, hidden, targets, score_from, score_to).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp_(-epsilon, epsilon)
    return delta


def attack_scorer(
    attack: str, epsilon: float, steps: int = 10, alpha: float | None = None
) -> Scorer:
    """A scorer of NLL under an embedding attack (``fgsm`` or ``pgd``); needs autograd."""
    if attack not in ATTACKS:
        raise ValueError(f"--attack: expected one of {ATTACKS}, got {attack!r}")
    n = 1 if attack == "fgsm" else steps

    def scorer(model: nn.Module, batch: Batch) -> torch.Tensor:
        emb = model.embed(batch.inputs)
        delta = embedding_attack(
            model,
            emb,
            batch.targets,
            batch.score_from,
            epsilon,
            n,
            epsilon if attack == "fgsm" else alpha,
            batch.score_to,
        )
        with torch.no_grad():
            hidden = hidden_from_embeddings(model, emb.detach() + delta)
            return nll_from_hidden(model, hidden, batch.targets, batch.score_from, batch.score_to)

    return scorer

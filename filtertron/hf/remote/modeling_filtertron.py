"""A filtertron GPT for Hugging Face transformers, written from filtertron's reference math.

Self-contained remote code (``trust_remote_code=True``); it does not import filtertron. Per
head h, with q_i, k_j, v_j in R^D at positions i, j (causal: j <= i):

    softmax:    logit_ij = q_i . k_j / sqrt(D)  [- m_h (i - j)]                (ALiBi)
    bilateral:  logit_ij = C(q_i, k_j) - (i - j)^2 / (2 h_p^2),
                C = q_i . k_j / h_y  (dot)  or  -||q_i - k_j||^2 / (2 h_y^2)  (gaussian)
    A = softmax_j(logit),  out = A V;   twicing:  out = 2 A V - A (A V)   (A^2 never built)

Blocks are pre-LN: x <- res1(x, attn(norm1(x)), y0); x <- res2(x, mlp(norm2(x)), y0), where
res is x + f (standard) or (1 - t)(x + f) + t y0 (GRC, t = sigmoid(tau)), y0 the embedding
output. Positions: learned or sinusoidal vectors added to the token embedding, rotary on q and
k, ALiBi as above, or none. Shapes: input_ids (B, T); q, k, v (B, H, T, D); logits (B, T, V).

The attention matrix is materialised (B, H, T, T): this is the readable definition, not a fast
kernel. There is no KV cache; ``generate()`` reruns the whole sequence at every step.
Padding: ``attention_mask`` hides padded keys, and positions count only real tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_filtertron import FiltertronConfig


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.): geometric 2^(-8 h / H), extended for non powers of 2."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        s = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(s, dtype=torch.float32)  # (H,)


def sinusoidal(pos: torch.Tensor, d_model: int) -> torch.Tensor:
    """Fixed sinusoidal position vectors (Vaswani et al.): pos (B, T) -> (B, T, C) in fp32."""
    pos = pos.float().unsqueeze(-1)  # (B, T, 1)
    inv = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=pos.device)
        * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(*pos.shape[:2], d_model, device=pos.device)
    pe[..., 0::2] = torch.sin(pos * inv)
    pe[..., 1::2] = torch.cos(pos * inv[: d_model // 2])
    return pe


def rotate(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding (rotate-half form) of x (B, H, T, D) at positions pos (B, T)."""
    D = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float32, device=x.device) / D))
    freqs = pos.float()[:, None, :, None] * inv  # (B, 1, T, D/2)
    cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1).to(x.dtype)
    sin = torch.cat([freqs.sin(), freqs.sin()], dim=-1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head causal self-attention; qkv's output is laid out per head as (H, 3, D)."""

    def __init__(self, config: FiltertronConfig, kind: str) -> None:
        super().__init__()
        self.config = config
        self.twice = kind == "twicing"
        self.kernel = config.twicing_base if self.twice else kind  # softmax | bilateral
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        H = config.n_heads
        if self.kernel == "bilateral":  # per-head bandwidths, stored as log h
            self.log_h_y = nn.Parameter(torch.zeros(H))
            self.log_h_p = nn.Parameter(torch.zeros(H))

    def logits(self, q: torch.Tensor, k: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """The kernel's logits (B, H, T, T) before masking; dist (B, 1, T, T) is i - j."""
        per_head = (1, -1, 1, 1)
        if self.kernel == "softmax":
            out = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
            if self.config.position == "alibi":
                slopes = alibi_slopes(q.shape[1]).to(device=q.device, dtype=q.dtype)
                out = out - slopes.view(per_head) * dist
            return out
        hy = self.log_h_y.exp().to(q.dtype).view(per_head)
        if self.config.bilateral_content == "dot":
            out = torch.matmul(q, k.transpose(-1, -2)) / hy
        else:  # ||q_i - k_j||^2 expanded, as torch.cdist does
            qq, kk = q.square().sum(-1), k.square().sum(-1)  # (B, H, T)
            sq = qq[..., :, None] + kk[..., None, :] - 2 * torch.matmul(q, k.transpose(-1, -2))
            out = -sq.clamp_min(0) / (2 * hy * hy)
        hp = self.log_h_p.exp().to(q.dtype).view(per_head)
        return out - dist.square() / (2 * hp.square())

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, key_padding: torch.Tensor | None
    ) -> torch.Tensor:
        """Args: x (B, T, C); pos (B, T) positions; key_padding (B, T) True at pads, or None."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, -1, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # 3 x (B, H, T, D)
        if self.config.position == "rotary":
            q = rotate(q, pos, self.config.rotary_base)
            k = rotate(k, pos, self.config.rotary_base)
        p = pos.to(q.dtype)
        dist = (p[:, :, None] - p[:, None, :]).unsqueeze(1)  # (B, 1, T, T): i - j
        logits = self.logits(q, k, dist)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
        if key_padding is not None:  # finite, so a padded query's row stays a distribution
            logits = logits.masked_fill(key_padding[:, None, None, :], torch.finfo(q.dtype).min)
        probs = torch.softmax(logits, dim=-1)
        if self.twice:
            o1 = torch.matmul(probs, v)
            y = 2 * o1 - torch.matmul(probs, o1)
        else:
            if self.training and self.config.attention_dropout > 0:
                probs = F.dropout(probs, self.config.attention_dropout)
            y = torch.matmul(probs, v)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.dropout(self.proj(y))


class Residual(nn.Module):
    """x + f (standard), or GRC (1 - t)(x + f) + t y0 with t = sigmoid(tau) or a fixed t."""

    def __init__(self, config: FiltertronConfig, generalized: bool) -> None:
        super().__init__()
        self.generalized = generalized
        self.learnable = config.residual_learnable
        if generalized:
            # Shape (1,): the values are loaded from the checkpoint.
            if self.learnable:
                self.tau = nn.Parameter(torch.zeros(1))
            else:
                self.register_buffer("t", torch.zeros(1))

    def forward(self, x: torch.Tensor, fx: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        if not self.generalized:
            return x + fx
        t = (torch.sigmoid(self.tau) if self.learnable else self.t).to(x.dtype)
        return (1 - t) * (x + fx) + t * y0


class MLP(nn.Module):
    def __init__(self, config: FiltertronConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: FiltertronConfig, kind: str) -> None:
        super().__init__()
        grc = config.residual == "generalized"
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.attn = Attention(config, kind)
        self.res1 = Residual(config, grc)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.res2 = Residual(config, grc and config.residual_apply_to == "both")

    def forward(self, x, y0, pos, key_padding):
        x = self.res1(x, self.attn(self.norm1(x), pos, key_padding), y0)
        return self.res2(x, self.mlp(self.norm2(x)), y0)


class FiltertronPreTrainedModel(PreTrainedModel):
    config_class = FiltertronConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class FiltertronModel(FiltertronPreTrainedModel):
    """Embeddings, blocks and the final LayerNorm: (B, T) ids -> (B, T, C) hidden states."""

    def __init__(self, config: FiltertronConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, kind) for kind in config.layer_attention)
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        B, T = input_ids.shape
        if attention_mask is None or bool(attention_mask.all()):
            pos = torch.arange(T, device=input_ids.device).expand(B, T)
            key_padding = None
        else:  # positions count real tokens only (left padding shifts nothing)
            pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            key_padding = attention_mask == 0
        x = self.wte(input_ids)
        if self.config.position == "learned":
            limit = self.config.max_position_embeddings
            if int(pos.max()) >= limit:
                raise ValueError(
                    f"input_ids: {int(pos.max()) + 1} positions exceed the learned position "
                    f"table (max_position_embeddings={limit}); learned positions cannot "
                    "represent longer contexts"
                )
            x = x + self.wpe(pos).to(x.dtype)
        elif self.config.position == "sinusoidal":
            x = x + sinusoidal(pos, self.config.d_model).to(x.dtype)
        x = y0 = self.drop(x)
        for block in self.h:
            x = block(x, y0, pos, key_padding)
        return self.norm_f(x)


class FiltertronForCausalLM(FiltertronPreTrainedModel, GenerationMixin):
    """The language model: hidden states -> (tied) LM head -> logits (B, T, V)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: FiltertronConfig) -> None:
        super().__init__(config)
        self.transformer = FiltertronModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # twicing needs A V of past positions too; no cache is kept

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """Every step gets the whole sequence (there is no KV cache)."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T), 1 for real tokens and 0 for padding, or None.
            labels: (B, T) ids; the loss is the mean next-token cross-entropy of
                labels[:, 1:] given inputs up to each position (-100 is ignored).
            return_dict: False returns a tuple.

        Returns:
            CausalLMOutput with logits (B, T, V) and, given labels, the loss.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (B, T), got {tuple(input_ids.shape)}")
        logits = self.lm_head(self.transformer(input_ids, attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutput(loss=loss, logits=logits)

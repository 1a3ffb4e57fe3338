"""Configuration of a filtertron GPT exported for Hugging Face transformers (remote code).

Written by ``filtertron export CHECKPOINT --to hf OUTDIR`` next to ``modeling_filtertron.py``;
it does not import filtertron. One config describes every variant filtertron trains:

    position            learned | sinusoidal | rotary | alibi | none
    layer_attention     per layer: softmax | bilateral | twicing (over ``twicing_base``)
    residual            standard | generalized (GRC, ``residual_apply_to`` attn | both)

``max_position_embeddings`` is the longest context the positions support: the learned table's
length for ``learned``; for the other schemes, which compute positions on the fly, 2**24 (the
largest range of integer positions that fp32 holds exactly). ``train_length`` is the length
the model was trained at; contexts beyond it run, with whatever quality the scheme gives.
"""

from __future__ import annotations

from transformers import PretrainedConfig

POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "none")
ATTENTIONS = ("softmax", "bilateral", "twicing")
UNBOUNDED_POSITIONS = 2**24


class FiltertronConfig(PretrainedConfig):
    """A pre-LN GPT with filtertron's attention, position and residual variants.

    Args:
        vocab_size: Vocabulary size.
        n_layers: Number of blocks.
        d_model: Model width C.
        n_heads: Attention heads H (head dim D = C / H).
        d_ff: MLP hidden width.
        train_length: Sequence length the model was trained at.
        max_position_embeddings: Longest supported context (see the module docstring);
            None derives it from ``position``.
        position: Position scheme.
        rotary_base: Rotary frequency base.
        bias: Linear layers and LayerNorms have biases.
        norm_eps: LayerNorm epsilon.
        dropout: Embedding, residual and MLP dropout.
        attention_dropout: Dropout on the attention kernel A (not in twicing layers).
        layer_attention: Attention kind of each layer.
        twicing_base: The kernel twicing layers apply twice: softmax or bilateral.
        bilateral_content: Bilateral content kernel: dot or gaussian.
        residual: standard or generalized (GRC).
        residual_apply_to: GRC after attention only (attn) or after the MLP too (both).
        residual_learnable: GRC stores tau (t = sigmoid(tau)) when True, t itself when False.
        tie_word_embeddings: The LM head shares the token embedding.
        initializer_range: Std of the normal init of new weights.
    """

    model_type = "filtertron"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }

    def __init__(
        self,
        vocab_size: int = 4096,
        n_layers: int = 4,
        d_model: int = 128,
        n_heads: int = 4,
        d_ff: int = 512,
        train_length: int = 256,
        max_position_embeddings: int | None = None,
        position: str = "learned",
        rotary_base: float = 10000.0,
        bias: bool = True,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        layer_attention: list[str] | None = None,
        twicing_base: str = "softmax",
        bilateral_content: str = "dot",
        residual: str = "standard",
        residual_apply_to: str = "attn",
        residual_learnable: bool = True,
        tie_word_embeddings: bool = True,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        layer_attention = list(layer_attention or ["softmax"] * n_layers)
        checks = {
            "position": (position, POSITIONS),
            "twicing_base": (twicing_base, ("softmax", "bilateral")),
            "bilateral_content": (bilateral_content, ("dot", "gaussian")),
            "residual": (residual, ("standard", "generalized")),
            "residual_apply_to": (residual_apply_to, ("attn", "both")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {list(allowed)}")
        if len(layer_attention) != n_layers or not set(layer_attention) <= set(ATTENTIONS):
            raise ValueError(
                f"layer_attention={layer_attention!r}: expected {n_layers} kinds from "
                f"{list(ATTENTIONS)}"
            )
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads}: must divide d_model={d_model}")
        if max_position_embeddings is None:
            max_position_embeddings = train_length if position == "learned" else UNBOUNDED_POSITIONS
        self.vocab_size = vocab_size
        self.n_layers = n_layers
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_ff = d_ff
        self.train_length = train_length
        self.max_position_embeddings = max_position_embeddings
        self.position = position
        self.rotary_base = rotary_base
        self.bias = bias
        self.norm_eps = norm_eps
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_attention = layer_attention
        self.twicing_base = twicing_base
        self.bilateral_content = bilateral_content
        self.residual = residual
        self.residual_apply_to = residual_apply_to
        self.residual_learnable = residual_learnable
        self.initializer_range = initializer_range
        kwargs.setdefault("use_cache", False)  # no KV cache: every step reruns the sequence
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

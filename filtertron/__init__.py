"""filtertron: distributed GPT training with image-filtering attention (BSA, twicing, GRC).

Public entry points::

    filtertron.attention(q, k, v, kind=..., impl=..., ...)   # (B, H, T, D) operators
    filtertron.build_model(config)                          # a plain single-device GPT
    filtertron.load_config(path, overrides)                 # typed, validated run config
"""

from filtertron.config import ConfigError, RunConfig, load_config

__all__ = ["ConfigError", "RunConfig", "attention", "build_model", "load_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import filtertron` (e.g. for the CLI or config checks) does not pay for
    # importing the model and attention kernels.
    if name == "attention":
        from filtertron.model.attention.functional import attention

        return attention
    if name == "build_model":
        from filtertron.model.gpt import build_model

        return build_model
    raise AttributeError(f"module 'filtertron' has no attribute {name!r}")

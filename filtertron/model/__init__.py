"""The GPT model: plain single-device PyTorch; parallelism is applied to it from outside."""

from filtertron.model.gpt import GPT, build_model

__all__ = ["GPT", "build_model"]

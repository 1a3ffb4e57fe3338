"""Evaluation: perplexity (token, word, bits per byte), long context, robustness, diagnostics."""

"""Files copied into exported directories and run there without filtertron: the remote-code
configuration and model (``trust_remote_code=True``) and the lm-eval task's helper module.
They import nothing from filtertron, so they may only use torch, transformers and the
standard library."""

"""Checkpoints: directories and their commit protocol (:mod:`~filtertron.checkpoint.files`),
what their model files hold and how they are consolidated, loaded and resharded
(:mod:`~filtertron.checkpoint.shards`), and ``filtertron convert``
(:mod:`~filtertron.checkpoint.cli`)."""

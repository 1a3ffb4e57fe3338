"""The ``filtertron`` command: prepare, train, eval, convert, export, import, generate, demo.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``filtertron
--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "prepare": ("filtertron.data.cli", "tokenize a corpus into Megatron .bin/.idx datasets"),
    "train": ("filtertron.train.cli", "train a model from a YAML config (DeepSpeed)"),
    "eval": ("filtertron.eval.cli", "perplexity, long context, robustness and diagnostics"),
    "convert": ("filtertron.checkpoint.cli", "consolidate or reshard a checkpoint"),
    "export": ("filtertron.hf.export", "checkpoint -> Hugging Face model, split -> lm-eval task"),
    "import": ("filtertron.hf.importer", "a Hugging Face GPT-2 as a filtertron checkpoint"),
    "generate": ("filtertron.generate", "greedy or sampled text from a checkpoint"),
    "demo": ("filtertron.demo", "the end-to-end demo on the bundled sample corpus"),
    "sweep": ("filtertron.scaling.sweep_cli", "scaling-law sweep: variants x sizes x budgets"),
    "fit": ("filtertron.scaling.fit_cli", "fit scaling laws and compute multipliers to a table"),
}


def configure_logging() -> None:
    """The console's logging before a subcommand names its log directory (see
    :mod:`filtertron.logs`: filtertron's lines and every error, not the libraries' chatter)."""
    from filtertron import logs

    logs.setup(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="filtertron", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    module_name, help_ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"filtertron {name}: not available in this build", file=sys.stderr)
            return 2
        raise
    sub_parser = argparse.ArgumentParser(prog=f"filtertron {name}", description=help_)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    configure_logging()
    from filtertron.config import ConfigError

    try:
        return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"filtertron {name}: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

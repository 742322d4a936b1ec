"""The `ehrfm` command line.

Each stage owns its subcommands in a small `cli` module with a `register(subparsers)` function;
those modules import only argparse at top level so that `ehrfm --help` stays instant, and each
subcommand is a thin wrapper over a public Python function of its stage.
User errors (ehrfm.errors.UserError) exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ehrfm import __version__
from ehrfm.errors import UserError

# Order here is the order of `ehrfm --help`: the pipeline, stage by stage.
COMMAND_MODULES = [
    "tokenization.cli",  # synth, etl, tokenize
    "ehrfm.train_cli",  # train
    "sweeps.cli",  # sweep plan|launch|status|collect
    "analysis.cli",  # fit, recommend
    "ehrfm.clinical.cli",  # labels, probe, finetune, zeroshot, baseline
    "ehrfm.export_cli",  # export
    "ehrfm.app.demo_cli",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ehrfm",
        description="EHR foundation models and their scaling laws, from raw MIMIC-IV to fitted laws and clinical heads.",
    )
    parser.add_argument("--version", action="version", version=f"ehrfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"ehrfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ehrfm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

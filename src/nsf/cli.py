"""The ``nsf`` command. Each subcommand lives in its own module exposing ``register(subparsers)``.

One error boundary for every subcommand: a user error (a bad option, an unusable directory, a missing
dataset) is one line on stderr and exit code 2; an internal failure keeps its traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = [
    "nsf.bench.cli",
    "nsf.demo",
    "nsf.spectral.cli",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``nsf bench: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nsf", description="Natural Spectral Fusion: optimizer, instruments, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nsf.experiment.data import DatasetMissing
    from nsf.experiment.sweep import UserError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, DatasetMissing) as e:
        print(f"nsf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

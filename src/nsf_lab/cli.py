"""The ``nsf`` command. Each subcommand lives in its own module exposing ``register(subparsers)``.

One error boundary for every subcommand: a user error (a bad option, an unusable directory, a missing
dataset) is one line on stderr and exit code 2; an internal failure keeps its traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

SUBCOMMAND_MODULES = [
    "nsf_lab.bench.cli",
    "nsf_lab.demo",
    "nsf_lab.spectral.cli",
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


LAB_DEPENDENCIES = ("numpy", "matplotlib", "tqdm")


def missing_lab_dependency() -> str | None:
    """The first of the lab's dependencies that is not installed (the ``nsf`` library itself needs only torch)."""
    for name in LAB_DEPENDENCIES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    missing = missing_lab_dependency()
    if missing is not None:
        print(f"nsf: the command line is part of the lab, which needs {missing}: pip install \"nsf[lab]\"",
              file=sys.stderr)
        return 2
    from nsf_lab.experiment.data import DatasetMissing
    from nsf_lab.experiment.sweep import UserError

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

"""The ``nsf`` command. Each subcommand lives in its own module exposing ``register(subparsers)``.

One error boundary for every subcommand: each checks its arguments (ranges, names, optimizer specs, writable
output) with the helpers below before any work starts; a user error (a bad option, an unusable directory, a
missing dataset) is one line on stderr and exit code 2; an internal failure keeps its traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
import tempfile
from pathlib import Path

SUBCOMMAND_MODULES = [
    "nsf_lab.bench.cli",
    "nsf_lab.demo",
    "nsf_lab.spectral.cli",
]
#: the run length an optimizer spec is checked at when the command cannot know it before its runs start
CHECK_STEPS = 1000


class UserError(ValueError):
    """A user's mistake (bad option, unusable directory): reported as one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------------------
# Argument checks, shared by every subcommand

def positive_int(text: str) -> int:
    """argparse type for counts (seeds, threads, workers, epochs, steps): an integer >= 1."""
    v = _integer(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    """argparse type for a seed: an integer >= 0."""
    v = _integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {v}")
    return v


def non_negative_float(text: str) -> float:
    """argparse type for a level such as a noise: a finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def check_spec(spec: str, option: str = "--opt", total_steps: int = CHECK_STEPS) -> None:
    """Refuse an optimizer spec that cannot build and step an optimizer (one step on a dummy tensor, for a run of
    ``total_steps`` steps, so that a p cycle stated per run is resolved as a run would resolve it)."""
    import torch

    from nsf.registry import create_optimizer
    try:
        w = torch.zeros(2, requires_grad=True)
        w.grad = torch.ones(2)
        create_optimizer(spec, [w], total_steps=total_steps).step()
    except Exception as e:  # noqa: BLE001 -- any failure of a user's spec is the user's error
        raise UserError(f"{option} {spec!r}: {type(e).__name__}: {e}") from None


def check_writable_dir(path, option: str = "--out") -> None:
    """Refuse an output folder that is a file, or that cannot be created or written, without writing anything
    (the probe is an unnamed temporary file in the nearest existing folder)."""
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise UserError(f"{option} {path}: exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write in {existing} ({e.strerror or e})") from None


def check_writable_file(path, option: str) -> None:
    """Refuse an output file that is a folder or whose folder cannot be created or written."""
    if Path(path).is_dir():
        raise UserError(f"{option} {path}: is a directory, not a file")
    check_writable_dir(Path(path).absolute().parent, option)


# ----------------------------------------------------------------------------------------------------------
# The command

class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``nsf bench: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import nsf

    parser = OneLineParser(prog="nsf", description="Natural Spectral Fusion: optimizer, instruments, benchmark.")
    parser.add_argument("--version", action="version", version=f"nsf {nsf.__version__}")
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
    from nsf_lab.experiment.sweep import SweepError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the records' provenance
    try:
        return int(args.func(args) or 0)
    except (UserError, SweepError, DatasetMissing) as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"nsf {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

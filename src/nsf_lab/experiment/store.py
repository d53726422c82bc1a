"""One run = (task, optimizer spec, lr, seed, budget, evaluation split) -> final metrics + curves.

Storage layout of a run directory::

    DIR/runs.jsonl            one JSON line per *finished* run (appended + flushed + fsynced)
    DIR/curves/<run_id>.json  its curves, written (atomically) before the line

``run_id`` is a hash of the run's identity (task definition, canonical optimizer spec, lr, seed, budget, split),
so a sweep that is stopped at any moment resumes by skipping the ids already in ``runs.jsonl``; a torn last line
(kill -9 during the write) is ignored and the run is simply done again.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from nsf_lab.experiment.tasks import Task, get_task
from nsf_lab.experiment.util import write_json_atomic


# ----------------------------------------------------------------------------------------------------------
# Identity and storage

def make_config(task: str | Task, spec, lr: float, seed: int, budget: float = 1.0, split: str = "test") -> dict:
    from nsf.registry import pin_defaults
    task = get_task(task) if isinstance(task, str) else task
    if split not in ("val", "test"):
        raise ValueError("split must be 'val' or 'test'")
    opt = pin_defaults(spec)
    opt.pop("lr", None)  # the base LR is a separate, tuned field
    return {"task": task.name, "task_def": task.to_dict(), "optimizer": opt, "lr": float(lr), "seed": int(seed),
            "budget": float(budget), "split": split}


def run_id(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class RunStore:
    """Append-only record of finished runs in a directory."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "curves").mkdir(exist_ok=True)
        self.path = self.root / "runs.jsonl"
        self._records: dict[str, dict] | None = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            if self.path.exists():
                with open(self.path, "rb") as f:
                    for n, raw in enumerate(f, 1):
                        try:
                            rec = json.loads(raw.decode("utf-8"))
                        except (ValueError, UnicodeDecodeError):
                            rec = None  # e.g. a torn line from an interrupted write
                        if not (isinstance(rec, dict) and {"run_id", "config", "final"} <= set(rec)):
                            print(f"warning: {self.path} line {n} is damaged and was skipped (its run, if any, "
                                  "counts as not done)", file=sys.stderr)
                            continue
                        have = self._records.get(rec["run_id"])
                        if have is None or have["final"].get("failed"):  # a failed run retried later
                            self._records[rec["run_id"]] = rec
        return self._records

    def __contains__(self, rid: str) -> bool:
        return rid in self.records()

    def curves(self, rid: str) -> dict:
        with open(self.root / "curves" / f"{rid}.json") as f:
            return json.load(f)

    def add(self, record: dict, curves: dict) -> None:
        rid = record["run_id"]
        write_json_atomic(self.root / "curves" / f"{rid}.json", curves, indent=None)
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line: terminate it so it stays a single bad line
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
            f.seek(0, os.SEEK_END)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records()[rid] = record


# ----------------------------------------------------------------------------------------------------------
# Provenance

def versions() -> dict:
    import nsf
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "nsf": getattr(nsf, "__version__", "?")}


def code_revision(src: Path | None = None) -> str:
    """Which code runs: the git commit of the checkout whose ``src/`` holds this module (or ``src``), with
    ``+dirty`` when tracked files differ from it; else the installed nsf version (a wheel carries no commit)."""
    import subprocess
    src = Path(__file__).resolve().parents[2] if src is None else Path(src)
    if src.name == "src":
        try:
            git = ["git", "-C", str(src.parent)]
            head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
            if head.returncode == 0:
                dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
                return head.stdout.strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"nsf {versions()['nsf']} (not a git checkout)"


"""A sweep directory and the one process that writes it.

Files (the driver is their only writer; workers return results to it):

- ``suite.json``: what the sweep is.  Created by the first command; a later command on the same directory
  merges into it (list options such as extra arms, tasks and seeds accumulate: nothing silently disappears).
- ``runs.jsonl`` + ``curves/``: one line per finished run (:class:`nsf_lab.experiment.store.RunStore`).
- ``decisions.json``: what the sweep decided (chosen LRs and their tuner flags, the search winner), written
  by the driver; ``nsf report`` reads it instead of planning again.

:func:`drive` runs a planner's runs on an engine (in-process, a process pool, or Ray), feeding each new run as
soon as its prerequisites have finished; a run that fails, or whose worker dies, is recorded as failed (its
error in the record) and the sweep goes on.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from functools import cached_property
from pathlib import Path
from typing import Callable

from nsf_lab.experiment.util import jsonable, write_json_atomic


class SweepError(ValueError):
    """A sweep directory that cannot be used as asked (not a directory, no sweep in it, another suite, a damaged
    file): the ``nsf`` command reports it as one line on stderr and exits with code 2."""


def _read_json(path: Path, what: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SweepError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}); "
                          f"restore it or use another directory") from None
    if not isinstance(d, dict):
        raise SweepError(f"{path}: the {what} is not a JSON object; restore it or use another directory")
    return d


STARTS_LOG = "starts.log"  # one line per `nsf bench` start: time, code revision, arguments


class Sweep:
    """A sweep directory: its suite (a JSON-able dict), its run store and its decisions."""

    def __init__(self, root, suite: dict):
        self.root = Path(root)
        self.suite = suite

    @cached_property
    def store(self):
        """The run store (created on first use: opening a sweep to check it writes nothing)."""
        from nsf_lab.experiment.store import RunStore
        return RunStore(self.root)

    @property
    def suite_file(self) -> Path:
        return self.root / "suite.json"

    @property
    def decisions_file(self) -> Path:
        return self.root / "decisions.json"

    @staticmethod
    def check_dir(root) -> Path:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise SweepError(f"{root} exists and is not a directory")
        return root

    @classmethod
    def existing_suite(cls, root) -> dict | None:
        """The suite recorded in ``root`` (None for a new directory); raises SweepError when unreadable."""
        f = cls.check_dir(root) / "suite.json"
        return _read_json(f, "suite file (suite.json)") if f.exists() else None

    @classmethod
    def open(cls, root) -> "Sweep":
        """An existing sweep (for reading); a directory without ``suite.json`` is an error."""
        suite = cls.existing_suite(root)
        if suite is None:
            raise SweepError(f"{root} holds no sweep (no suite.json); run `nsf bench --out {root}` first")
        return cls(root, suite)

    @classmethod
    def create(cls, root, suite: dict, accumulate: tuple[str, ...] = ()) -> tuple["Sweep", list[str]]:
        """Create or resume; ``suite`` merged into the recorded one (see :func:`merge`). Returns the sweep and
        one line per key whose recorded value grew."""
        old = cls.existing_suite(root)
        merged, grown = (suite, []) if old is None else merge(old, suite, accumulate)
        sw = cls(root, merged)
        sw.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(sw.suite_file, merged)
        return sw, grown

    @property
    def starts_file(self) -> Path:
        return self.root / STARTS_LOG

    def log_start(self, argv: list[str]) -> None:
        """Append ``<UTC time> start <code revision> <arguments>`` to ``starts.log``: the runs that finish after a
        start (their ``finished_at``) ran that code, so a sweep resumed across edits says which code ran what."""
        import datetime
        import shlex

        from nsf_lab.experiment.store import code_revision
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.starts_file, "a") as f:
            f.write(f"{now} start {code_revision()} {shlex.join(argv)}".rstrip() + "\n")

    # -- decisions --------------------------------------------------------------------------------------------
    def write_decisions(self, decisions: dict) -> None:
        write_json_atomic(self.decisions_file, decisions)

    def decisions(self) -> dict | None:
        f = self.decisions_file
        return _read_json(f, "decisions file (decisions.json)") if f.exists() else None


def merge(old: dict, new: dict, accumulate: tuple[str, ...]) -> tuple[dict, list[str]]:
    """The recorded suite ``old`` updated by ``new``: the same ``name`` is required; the list values under
    ``accumulate`` are unions in first-seen order (an option given on resume adds, never removes); every other
    key keeps its recorded value."""
    if old.get("name") != new.get("name"):
        raise SweepError(f"the directory holds suite {old.get('name')!r}, not {new.get('name')!r}; use another --out")
    out, grown = dict(old), []
    for k in accumulate:
        have = [json.dumps(x, sort_keys=True) for x in old.get(k, [])]
        add = [x for x in new.get(k, []) if json.dumps(x, sort_keys=True) not in have]
        if add:
            out[k] = list(old.get(k, [])) + add
            grown.append(f"{k}: added {', '.join(str(x if not isinstance(x, list) else x[0]) for x in add)}")
    return out, grown


# ----------------------------------------------------------------------------------------------------------
# Records

def run_training(config: dict, device: str, data_root: str | None) -> tuple[dict, dict]:
    """One training run -> (final metrics, curves); the one call into the training code."""
    from nsf_lab.experiment.train import run_config
    out = run_config(config, device=device, data_root=data_root)
    return out["final"], out["curves"]


def make_record(config: dict, meta: dict, device: str, data_root: str | None, threads: int) -> tuple[dict, dict]:
    """Run ``config`` (in whatever process calls this) -> (record, curves); an exception in the run gives a
    failed record with the traceback, never an exception."""
    import torch

    from nsf_lab.experiment.store import run_id, versions

    torch.set_num_threads(threads)
    t0 = time.time()
    try:
        final, curves = run_training(config, device, data_root)
        final = jsonable(final)
    except Exception as e:  # noqa: BLE001 -- a run's failure is data: recorded, and the sweep goes on
        final, curves = failed_final(f"{type(e).__name__}: {e}\n{traceback.format_exc()}"), {}
    rid = run_id(config)
    rec = {"run_id": rid, "config": config, "seed": config["seed"], "final": final, "wall_s": time.time() - t0,
           "versions": versions(), "device": str(device), "threads": torch.get_num_threads(),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "curve_file": f"curves/{rid}.json",
           **meta}
    return rec, jsonable(curves)


def failed_final(error: str) -> dict:
    return {"failed": True, "error_message": error, "diverged": False, "loss": None, "error": None, "acc": None}


def failed_record(config: dict, meta: dict, device: str, error: str) -> tuple[dict, dict]:
    """The record of a run whose worker died (no result came back)."""
    from nsf_lab.experiment.store import run_id, versions
    rid = run_id(config)
    return ({"run_id": rid, "config": config, "seed": config["seed"], "final": failed_final(error), "wall_s": None,
             "versions": versions(), "device": str(device), "threads": None,
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "curve_file": f"curves/{rid}.json",
             **meta}, {})


# ----------------------------------------------------------------------------------------------------------
# The driver

def drive(sweep: Sweep, plan: Callable[[], list], engine, progress=None) -> dict:
    """Run ``plan()``'s runs on ``engine`` until ``plan()`` is empty and nothing is in flight.

    ``plan()`` returns ``[(config, meta)]`` of runs that can start now, in priority order, and excludes finished
    runs; after each finished run it is called again, so dependent runs start as soon as they can.  Returns
    counts {"done", "failed"}.
    """
    from nsf_lab.experiment.store import run_id

    flight: dict = {}  # run_id -> (handle, config, meta)
    done = failed = 0
    try:
        while True:
            queued = 0
            for cfg, meta in plan():
                rid = run_id(cfg)
                if rid in flight:
                    continue
                if len(flight) < engine.slots:
                    flight[rid] = (engine.submit(cfg, meta), cfg, meta)
                else:
                    queued += 1
            if progress is not None:
                progress(done, len(flight), queued)
            if not flight:
                break
            for rid, (rec, curves) in engine.wait({rid: h for rid, (h, _, _) in flight.items()}):
                _, cfg, meta = flight.pop(rid)
                if rec is None:  # the worker died: ``curves`` holds the reason
                    rec, curves = failed_record(cfg, meta, engine.device, curves)
                sweep.store.add(rec, curves)
                done += 1
                failed += bool(rec["final"].get("failed"))
    finally:
        engine.close()
    return {"done": done, "failed": failed}


# ----------------------------------------------------------------------------------------------------------
# Engines: where runs execute.  ``submit(config, meta) -> handle``; ``wait({run_id: handle})`` blocks until at
# least one is finished and returns [(run_id, (record, curves))], or (None, reason) when the worker died.

class InlineEngine:
    """In this process, one run at a time (``--workers 1``)."""
    slots = 1

    def __init__(self, threads: int = 1, device: str = "cpu", data_root: str | None = None):
        self.threads, self.device, self.data_root = threads, device, data_root

    def submit(self, config, meta):
        return config, meta

    def wait(self, handles):
        rid, (config, meta) = next(iter(handles.items()))
        return [(rid, make_record(config, meta, self.device, self.data_root, self.threads))]

    def close(self):
        pass


WORKER_DIED = ("the worker process died while running this run (killed, out of memory, or a crash that "
               "ended the process)")


class PoolEngine:
    """``workers`` processes on this machine (standard library; forkserver or spawn, never fork after torch has
    started threads).  Each worker is its own single-process pool, so a worker that dies fails exactly the run
    it held and is replaced."""

    def __init__(self, workers: int, threads: int = 1, device: str = "cpu", data_root: str | None = None,
                 work: Callable = make_record):
        """``work(config, meta, device, data_root, threads) -> (record, curves)``: an importable function."""
        import multiprocessing as mp
        self.slots, self.threads, self.device, self.data_root = workers, threads, device, data_root
        self.work = work
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._pools = [self._pool() for _ in range(workers)]
        self._busy: set[int] = set()

    def _pool(self):
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(max_workers=1, mp_context=self._ctx, initializer=_exit_with_driver)

    def submit(self, config, meta):
        k = next(i for i in range(self.slots) if i not in self._busy)
        self._busy.add(k)
        return k, self._pools[k].submit(self.work, config, meta, self.device, self.data_root, self.threads)

    def wait(self, handles):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as fwait
        from concurrent.futures.process import BrokenProcessPool

        by_future = {fut: (rid, k) for rid, (k, fut) in handles.items()}
        finished, _ = fwait(list(by_future), return_when=FIRST_COMPLETED)
        out = []
        for fut in finished:
            rid, k = by_future[fut]
            self._busy.discard(k)
            try:
                out.append((rid, fut.result()))
            except BrokenProcessPool:
                self._pools[k].shutdown(wait=False, cancel_futures=True)
                self._pools[k] = self._pool()
                out.append((rid, (None, WORKER_DIED)))
            except Exception as e:  # noqa: BLE001 -- e.g. a result that could not be sent back
                out.append((rid, (None, f"{type(e).__name__}: {e}")))
        return out

    def close(self):
        for p in self._pools:
            p.shutdown(wait=True, cancel_futures=True)


def _exit_with_driver() -> None:
    """Pool-worker initializer: end the worker when the driver ends, even by kill -9 (an orphaned worker would
    otherwise wait for work forever)."""
    import multiprocessing
    import threading

    driver = multiprocessing.parent_process()
    if driver is not None:
        threading.Thread(target=lambda: (driver.join(), os._exit(1)), daemon=True).start()


class RayEngine:
    """Runs as Ray tasks (``--ray [ADDRESS]``): a local Ray when ``address`` is None, ``"auto"`` for the cluster
    this machine belongs to.  Each task asks for ``threads`` CPUs (and a GPU on ``cuda``)."""

    def __init__(self, address: str | None, threads: int = 1, device: str = "cpu", data_root: str | None = None,
                 num_cpus: int | None = None):
        import ray

        self._ray = ray
        self.threads, self.device, self.data_root = threads, device, data_root
        self._owner = not ray.is_initialized()
        if self._owner:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, cpus // threads)
        self._task = ray.remote(num_cpus=threads, num_gpus=1 if device == "cuda" else 0, max_retries=0)(make_record)

    def submit(self, config, meta):
        return self._task.remote(config, meta, self.device, self.data_root, self.threads)

    def wait(self, handles):
        ray = self._ray
        by_ref = {ref: rid for rid, ref in handles.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=1)
        out = []
        for ref in ready:
            try:
                out.append((by_ref[ref], tuple(ray.get(ref))))
            except Exception as e:  # noqa: BLE001 -- worker crashed, node lost, ...: the run is recorded failed
                out.append((by_ref[ref], (None, f"{type(e).__name__}: {str(e).splitlines()[0]}")))
        return out

    def close(self):
        if self._owner:
            self._ray.shutdown()

"""Shared helpers of the spectral instruments: optimizers from registry specs, matched-loss reading, LR tuning.

Seeding, JSON, statistics, data, models and the training loop come from :mod:`nsf_lab.experiment`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from nsf_lab.experiment.tuner import Decision, Grid, LRTuner, score, tune
from nsf_lab.experiment.util import jsonable

OptimizerSpec = Any  # registry string, registry dict, or callable(params, lr) -> torch.optim.Optimizer


def make_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float | None = None,
                   total_steps: int | None = None):
    """Build an optimizer from a registry spec (``"adam"``, ``"nsf-fixed:p=-0.25"``, ``{"name": ...}``)
    through :func:`nsf.create_optimizer`, or from a callable ``f(params, lr)`` (any torch optimizer).
    ``lr`` (when given) overrides the spec's learning rate; ``total_steps`` is the run's length, which resolves
    a p cycle stated per run (``p=cyclic(0,0.5,cycles=2)``)."""
    params = list(params)
    if callable(spec):
        return spec(params, lr) if lr is not None else spec(params, None)
    import nsf  # imported lazily: the optimizer core is a sibling package

    overrides = {} if lr is None else {"lr": float(lr)}
    return nsf.create_optimizer(spec, params, total_steps=total_steps, **overrides)


def spec_label(spec: OptimizerSpec) -> str:
    """A short human-readable name for a spec (used as the key in JSON and legends)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        from nsf.registry import spec_to_str  # lazily: the optimizer core is a sibling package
        return spec_to_str(spec)
    return getattr(spec, "__name__", None) or getattr(spec, "label", None) or repr(spec)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


def cycle_spec(name: str, period: int) -> str:
    """Registry text of optimizer ``name`` with the library's default p cycle at another period."""
    from nsf.optim.defaults import default_cycle
    from nsf.registry import spec_to_str

    return spec_to_str({"name": name, "p": default_cycle(period)})


def first_index_below(values: Sequence[float], level: float) -> int | None:
    """Index of the first entry <= level (None if never)."""
    for i, v in enumerate(values):
        if v is not None and np.isfinite(v) and v <= level:
            return i
    return None


def time_to_learn(steps: Sequence[int], errors: Sequence[float], threshold: float):
    """First recorded step after which the error stays below ``threshold`` until the end of the record
    (docs/spectral.md §2). Returns None if the last recorded error is not below it."""
    errs = np.asarray(errors, dtype=float)
    ok = np.isfinite(errs) & (errs < threshold)
    if ok.size == 0 or not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    i = 0 if bad.size == 0 else int(bad[-1]) + 1
    return int(steps[i])


def tune_lr(run: Callable[[float, int], dict], grid: Grid, *, seed: int, criterion: str = "error",
            resolution: float | None = None, cache: dict | None = None, what: str = "") -> Decision:
    """The one LR tuner (rule "full") on ``grid`` with tuning seed ``seed``.  ``run(lr, seed)`` returns the
    metrics of one run (``error``, ``loss``, ``diverged``), scored by ``nsf_lab.experiment.tuner.score``.  ``cache``
    ({str(lr): metrics}) holds finished evaluations and is filled in.  Warns when the choice is flagged
    "edge" or "cap" (the optimum may lie outside what was searched)."""
    cache = {} if cache is None else cache

    def cached(lr: float, s: int) -> tuple:
        if str(lr) not in cache:
            cache[str(lr)] = jsonable(run(lr, s))
        return score(cache[str(lr)], criterion)

    decision = tune(cached, LRTuner(None, grid, rule="full", seeds=(seed,), resolution=resolution))
    if decision.scores[decision.lr][0] != 0:
        raise RuntimeError(f"{what}every learning rate searched diverged")
    if {"edge", "cap"} & set(decision.flags):
        warnings.warn(f"{what}chosen lr {decision.lr:g} is flagged {decision.flags} on the grid "
                      f"[{grid.lo:g}, {grid.hi:g}]; widen the grid", stacklevel=2)
    return decision


def grid_dict(grid: Grid) -> dict:
    """A declared LR grid as stored in the instruments' JSON settings."""
    return {"lo": grid.lo, "hi": grid.hi, "step_decades": grid.step, "rule": "full"}


def loss_levels(curves: Sequence[Sequence[float]], hi: float, n: int = 5) -> list[float]:
    """``n`` loss levels, geometric from ``hi`` down to just above the highest minimum reached by any run
    (so every non-diverged run reaches every level)."""
    mins = [min(c) for c in curves if len(c) and all(math.isfinite(v) for v in c)]
    lo = max(mins) * 1.02 if mins else hi / 2
    lo = min(lo, hi * 0.99)
    return [float(v) for v in np.geomspace(hi, lo, n)]


def fmt_ci(c: dict, digits: int = 3) -> str:
    """``mean±ci95`` of a summary cell (``{"mean", "ci95"}``), ``n/a`` when it has no mean."""
    return "n/a" if c["mean"] is None else f"{c['mean']:.{digits}f}±{(c['ci95'] or 0):.{digits}f}"


def skipped_lines(instrument: str, data: dict) -> list[str]:
    """One line per task an instrument skipped, with the first line of the reason."""
    return [f"{instrument} [{name}] skipped: {why.splitlines()[0][:100]}" for name, why in data.get("skipped", {}).items()]


def _call_with_seed(fn: Callable, seed: int):
    return fn(seed=seed)


def map_seeds(fn: Callable, seeds: Sequence[int], workers: int = 1, on_done=None) -> list:
    """``[fn(seed=s) for s in seeds]``, in order; with ``workers > 1`` in a forkserver process pool (never fork
    after torch has started threads), each worker with this process's torch thread count. ``fn`` must pickle
    (a module-level function or a ``functools.partial`` of one). Every run seeds itself, so the results do not
    depend on ``workers``."""
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def collect(results) -> list:
        out = []
        for r in results:
            out.append(r)
            if on_done:
                on_done()
        return out

    call = functools.partial(_call_with_seed, fn)
    if workers <= 1:
        return collect(map(call, seeds))
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=torch.set_num_threads,
                             initargs=(torch.get_num_threads(),)) as pool:
        return collect(pool.map(call, seeds))


"""Shared helpers of the spectral instruments: building optimizers from registry specs, seeds, statistics, I/O."""
from __future__ import annotations

import json
import math
import os
import random
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

OptimizerSpec = Any  # registry string, registry dict, or callable(params, lr) -> torch.optim.Optimizer


def make_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], lr: float | None = None):
    """Build an optimizer from a registry spec (``"adam"``, ``"nsf-fixed:p=-0.25"``, ``{"name": ...}``)
    through :func:`nsf.create_optimizer`, or from a callable ``f(params, lr)`` (any torch optimizer).
    ``lr`` (when given) overrides the spec's learning rate."""
    params = list(params)
    if callable(spec):
        return spec(params, lr) if lr is not None else spec(params, None)
    import nsf  # imported lazily: the optimizer core is a sibling package

    overrides = {} if lr is None else {"lr": float(lr)}
    return nsf.create_optimizer(spec, params, **overrides)


def spec_label(spec: OptimizerSpec) -> str:
    """A short human-readable name for a spec (used as the key in JSON and legends)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        from nsf.registry import spec_to_str  # lazily: the optimizer core is a sibling package
        return spec_to_str(spec)
    return getattr(spec, "__name__", None) or getattr(spec, "label", None) or repr(spec)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


# two-sided 97.5% Student-t quantiles for small samples (df = n - 1); avoids a scipy dependency
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def t975(df: int) -> float:
    if df <= 0:
        return float("nan")
    if df in _T975:
        return _T975[df]
    keys = sorted(k for k in _T975 if k <= df)
    return _T975[keys[-1]] if df < 30 else 1.96


def mean_ci(values: Sequence[float]) -> dict:
    """Mean and half-width of the 95 % t confidence interval over finite values (seeds). Non-finite values
    (e.g. 'never reached') are counted in ``n_missing`` and excluded."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    out = {"n": n, "n_missing": int(len(values) - n)}
    if n == 0:
        out.update(mean=None, ci95=None, std=None)
        return out
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    out.update(mean=mean, std=std, ci95=float(t975(n - 1) * std / math.sqrt(n)) if n > 1 else None)
    return out


def first_index_below(values: Sequence[float], level: float) -> int | None:
    """Index of the first entry <= level (None if never)."""
    for i, v in enumerate(values):
        if v is not None and np.isfinite(v) and v <= level:
            return i
    return None


def time_to_learn(steps: Sequence[int], errors: Sequence[float], threshold: float):
    """First recorded step after which the error stays below ``threshold`` until the end of the record
    (SPEC §4.2). Returns None if the last recorded error is not below it."""
    errs = np.asarray(errors, dtype=float)
    ok = np.isfinite(errs) & (errs < threshold)
    if ok.size == 0 or not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    i = 0 if bad.size == 0 else int(bad[-1]) + 1
    return int(steps[i])


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    return obj


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=1)
    return path


def log_grid(lo: float, hi: float, per_decade: int = 2) -> list[float]:
    """Log-spaced grid from lo to hi inclusive with ``per_decade`` points per decade (rounded to 3 s.f.)."""
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [float(f"{v:.3g}") for v in np.logspace(math.log10(lo), math.log10(hi), n)]


def tune_lr(run: Callable[[float], float], grid: Sequence[float]) -> tuple[float, dict]:
    """Evaluate ``run(lr) -> score`` (lower is better; NaN/inf = diverged) on every grid point with the same
    budget and return the best lr and all scores."""
    scores = {}
    for lr in grid:
        s = float(run(lr))
        scores[lr] = s if math.isfinite(s) else float("inf")
    best = min(scores, key=lambda k: scores[k])
    if not math.isfinite(scores[best]):
        raise RuntimeError("every learning rate on the grid diverged")
    warn_if_grid_edge(best, grid)
    return best, scores


def warn_if_grid_edge(best: float, grid: Sequence[float], what: str = "") -> bool:
    """Warn (and return True) when the chosen LR is the smallest or largest grid value: the optimum may lie
    outside the grid, so widen it."""
    if len(grid) > 1 and best in (min(grid), max(grid)):
        import warnings

        warnings.warn(f"{what}chosen lr {best:g} is at the edge of the grid [{min(grid):g}, {max(grid):g}]; "
                      "widen the grid", stacklevel=3)
        return True
    return False

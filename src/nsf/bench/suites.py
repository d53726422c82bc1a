"""Suites and the benchmark protocol (SPEC.md §5).

Protocol, per task:
  stage "tune"   each optimizer's base LR is chosen on the validation split (carved from the training set)
                 with seed ``tune_seed`` and the full budget, on ONE shared log grid (half-decades).  The
                 grid is walked from the optimizer's reference point: its neighbours are evaluated, and the
                 walk extends toward the better side until the best LR is interior (or at the grid edge).
                 Diverged runs count as worst and are kept.
  stage "seeds"  every optimizer at its chosen LR, ``seeds`` seeds, evaluated on the test set.
  stage "budget" the NSF default at budgets in ``budgets`` (whole schedule compressed), same seeds.
An optional stage "search" (standard suite) first chooses the NSF default configuration on the validation
splits of ``search.tasks`` from a declared space; the winner is then "NSF default" in the other stages.
Everything is a pure function of the finished runs, so a resumed sweep plans exactly the same runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

LR_GRID = [round(10 ** (k / 2), 12) for k in range(-10, 3)]  # 1e-5 ... 10, half-decades


def _snap(lr: float) -> int:
    return min(range(len(LR_GRID)), key=lambda i: abs(math.log10(LR_GRID[i]) - math.log10(lr)))


def ref_lr(spec: dict) -> float:
    """Starting point of the LR walk: the spec's own lr, else a scale-aware guess."""
    import inspect

    from nsf.registry import OPTIMIZERS
    name = spec["name"]
    factory, preset = OPTIMIZERS[name]
    if "lr" in spec:
        return float(spec["lr"])
    try:  # effective options = constructor defaults < registry preset (< spec, below)
        defaults = {k: v.default for k, v in inspect.signature(factory).parameters.items()
                    if v.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    preset = {**defaults, **preset}
    if name.startswith("nsf") or name == "padam":
        scale = spec.get("scale", preset.get("scale", "raw"))
        if scale == "adam":
            return 1e-3
        if scale == "sgd":
            return 1e-1
        p = spec.get("p", preset.get("p"))
        c = _centre(p)
        if c is not None:  # raw: step ~ |g|^(1-2p): p = 1/2 -> Adam scale, p = 0 -> SGD-EMA scale
            return 10 ** (-3 + 4 * (0.5 - c))
    return float(preset.get("lr", 1e-3))


def _centre(p):
    if hasattr(p, "to_dict"):
        p = p.to_dict()
    if isinstance(p, (int, float)):
        return float(p)
    if isinstance(p, dict):
        if p.get("type") == "constant":
            return float(p["value"])
        if p.get("type") == "cyclic":
            return 0.5 * (p["low"] + p["high"])
    return None


@dataclass
class Search:
    """Declared search for the default NSF configuration (validation splits only)."""
    tasks: list
    stage_a: list           # specs: p range x scale mode, at a fixed period/shape
    periods: list           # stage B: the winner of A at each period x shape
    shapes: list
    seed: int = 0

    def stage_b(self, winner: dict) -> list:
        out = []
        for per in self.periods:
            for shape in self.shapes:
                d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in winner.items()}
                d["p"]["period"] = per
                d["p"]["shape"] = shape
                out.append(d)
        return out


@dataclass
class Suite:
    name: str
    tasks: list
    baselines: list                      # (label, spec)
    default: str | None = "nsf"          # spec of "NSF default" when there is no search
    ablations: bool = True               # NSF fixed p at the values the cycle visits + raw/sgd/adam cyclic
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    budgets: list = field(default_factory=lambda: [0.25, 0.5])
    tune_seed: int = 100
    max_walk: int = 6
    search: Search | None = None
    extra: list = field(default_factory=list)  # (label, spec) from the command line


def _cyclic(low, high, period=250, shape="cosine"):
    return {"type": "cyclic", "low": low, "high": high, "period": period, "shape": shape, "phase": 0.0}


BASELINES = [("SGD-M", "sgd"), ("Adam", "adam"), ("AdamW", "adamw"), ("Padam", "padam")]

SEARCH = Search(
    tasks=["mnist1d-mlp", "fashion-mlp"],
    stage_a=[{"name": "nsf", "p": _cyclic(lo, hi), "scale": sc}
             for (lo, hi) in [(-0.05, 0.05), (-0.25, 0.25), (0.0, 0.5), (0.2, 0.3)]
             for sc in ["raw", "sgd", "adam"]],
    periods=[100, 250, 1000],
    shapes=["cosine", "triangle", "square"],
)

SUITES = {
    "smoke": Suite("smoke", ["digits-mlp-tiny"], [("SGD-M", "sgd"), ("Adam", "adam")], default="nsf",
                   ablations=False, seeds=[0, 1], budgets=[0.5], max_walk=3),
    "quick": Suite("quick", ["digits-mlp", "mnist1d-mlp-short", "shakespeare-gru-short"],
                   [("SGD-M", "sgd"), ("Adam", "adam")], default="nsf", ablations=False, seeds=[0, 1, 2],
                   budgets=[0.25, 0.5], max_walk=6),
    "standard": Suite("standard", ["digits-mlp", "mnist1d-mlp", "fashion-mlp", "mnist1d-cnn", "mnist-cnn",
                                   "fashion-cnn", "shakespeare-gru"], BASELINES, default=None, search=SEARCH),
    "search": Suite("search", [], [], default=None, search=SEARCH),
}


def get_suite(name: str) -> Suite:
    import copy
    try:
        return copy.deepcopy(SUITES[name])
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}") from None

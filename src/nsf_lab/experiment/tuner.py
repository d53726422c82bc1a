"""The one learning-rate tuner: a declared log grid, two search rules, pure ask/tell.

The tuner never trains.  A caller asks :meth:`LRTuner.pending` which learning rates still need a score (every
tuning seed of each), evaluates them however it likes (a blocking loop, :func:`tune`; a resumable planner that
reads finished runs back from disk; a process pool), and asks again with everything it has; once nothing is
pending, :meth:`LRTuner.decide` gives the choice.  Both methods are pure functions of the scores, so a resumed
sweep takes exactly the same decisions.

Rules:

- ``"walk"``: start at the grid point nearest ``start_lr``, evaluate it and its two neighbours, and extend one
  point at a time toward the better side until the best point is interior, the declared grid ends, or
  ``max_points`` points were tried.  This is the protocol of the committed standard-suite archive.
- ``"full"``: every point of the declared grid; extended (beyond the declared range if need be) until the best
  point has at least two evaluated points on each side, at most ``max_points`` grid points; then a refinement
  at half the grid step on each side of the best.

Scores are tuples ``(status, primary, tie-break...)``, lower is better (see :func:`score`; a bare number is
accepted, see :func:`as_score`); a learning rate's score is the element-wise mean over its tuning seeds.  The decision carries flags: ``"edge"`` (the choice is not inside the
evaluated grid points), ``"cap"`` (the search stopped at ``max_points`` while the best was not bracketed) and
``"within-one-sample"`` (another learning rate's primary score is within ``resolution`` of the best, e.g. one
validation sample of the error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

INF = float("inf")
RULES = ("walk", "full")
CRITERIA = ("error", "loss", "loss_ts")


# ----------------------------------------------------------------------------------------------------------
# Scores

def score(rec: Mapping | None, criterion: str = "error") -> tuple:
    """Score of a run record (``{"final": metrics}``) or of a metrics dict; lower is better.

    ``(0, error, loss)`` for criterion ``"error"`` (loss breaks ties), ``(0, loss, error)`` for ``"loss"``,
    ``(0, loss_ts, error)`` for ``"loss_ts"`` (the loss at the temperature that minimises it: what the model
    ranks, not how confident it is, so it agrees with the error where a model overfits in confidence);
    a diverged run (or one without a finite loss) is ``(1, inf, inf)``, a missing one ``(2, inf, inf)``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if rec is None:
        return (2, INF, INF)
    f = rec.get("final", rec)
    loss = f.get("loss")
    if f.get("diverged") or loss is None or not math.isfinite(loss):
        return (1, INF, INF)
    if criterion == "loss_ts":
        return (0, f["loss_ts"], f["error"]) if math.isfinite(f.get("loss_ts", math.nan)) else (1, INF, INF)
    return (0, loss, f["error"]) if criterion == "loss" else (0, f["error"], loss)


def as_score(x) -> tuple:
    """A score tuple; a bare number ``x`` (lower is better, NaN/inf = diverged) becomes ``(0, x)`` or ``(1, inf)``."""
    if isinstance(x, tuple):
        return x
    x = float(x)
    return (0, x) if math.isfinite(x) else (1, INF)


def mean_score(per_seed: Sequence[tuple]) -> tuple:
    """Element-wise mean over seeds (a diverged seed makes the mean infinite, so it loses to any finite one)."""
    n = len(per_seed)
    return tuple(sum(s[i] for s in per_seed) / n for i in range(len(per_seed[0])))


# ----------------------------------------------------------------------------------------------------------
# Grid

def _lr(x: float) -> float:
    return round(10 ** x, 12)


@dataclass(frozen=True)
class Grid:
    """Log grid ``lo .. hi`` in steps of ``step`` decades; points are ``round(10**(j*step), 12)``.

    Learning rates are addressed by their index on the *fine* lattice (half a step), so grid points and
    refinement points share one exact float each (the float is part of a run's identity).
    """
    lo: float = 1e-5
    hi: float = 10.0
    step: float = 0.5

    @classmethod
    def default(cls) -> "Grid":
        return cls()

    def __post_init__(self):
        if not (0 < self.lo <= self.hi and self.step > 0):
            raise ValueError(f"invalid grid: lo={self.lo}, hi={self.hi}, step={self.step}")

    # fine lattice index <-> lr
    def fine(self, lr: float) -> int:
        return int(round(math.log10(lr) / (self.step / 2)))

    def at(self, f: int) -> float:
        return _lr(f * self.step / 2) if f % 2 else _lr((f // 2) * self.step)

    def on_lattice(self, lr: float) -> bool:
        return lr > 0 and self.at(self.fine(lr)) == lr

    @property
    def range(self) -> tuple[int, int]:
        """(first, last) coarse index of the declared grid."""
        return round(math.log10(self.lo) / self.step), round(math.log10(self.hi) / self.step)

    def points(self) -> list[float]:
        a, b = self.range
        return [self.at(2 * j) for j in range(a, b + 1)]

    def snap(self, lr: float) -> float:
        """The declared grid point nearest ``lr`` (clamped to the grid)."""
        a, b = self.range
        j = min(max(round(math.log10(lr) / self.step), a), b)
        return self.at(2 * j)


LR_GRID = Grid.default().points()  # 1e-5 ... 10, half-decades: the bench's shared grid


def ref_lr(spec) -> float:
    """A spec's natural starting learning rate: its own ``lr``, else a scale-aware guess from the registry."""
    import inspect

    from nsf.registry import OPTIMIZERS, parse_spec
    spec = parse_spec(spec)
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
        c = _centre(spec.get("p", preset.get("p")))
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


# ----------------------------------------------------------------------------------------------------------
# Tuner

@dataclass
class Decision:
    lr: float
    scores: dict = field(default_factory=dict)  # {lr: mean score} of the points the rule looked at, by lr
    flags: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"lr": self.lr, "scores": [[lr, list(s)] for lr, s in self.scores.items()], "flags": list(self.flags)}


def default_max_points(rule: str, grid: Grid) -> int:
    """The cap on evaluated grid points: 6 for "walk"; the declared grid plus six (three decades) for "full"."""
    a, b = grid.range
    return 6 if rule == "walk" else b - a + 1 + 6


class LRTuner:
    """Ask/tell LR search on a declared grid (see the module docstring for the rules)."""

    def __init__(self, start_lr: float | None = None, grid: Grid | None = None, *, rule: str = "full",
                 seeds: Sequence[int] = (100,), max_points: int | None = None, resolution: float | None = None):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if not seeds:
            raise ValueError("at least one tuning seed is needed")
        self.grid = grid or Grid.default()
        self.rule = rule
        self.seeds = tuple(seeds)
        a, b = self.grid.range
        if rule == "walk" and start_lr is None:
            raise ValueError("rule 'walk' needs start_lr")
        self.start_lr = start_lr
        self.max_points = max_points if max_points is not None else default_max_points(rule, self.grid)
        if self.max_points < (3 if rule == "walk" else b - a + 1):
            raise ValueError(f"max_points={self.max_points} is smaller than the rule's first round")
        self.resolution = resolution

    # -- score lookup on the fine lattice --------------------------------------------------------------------
    def _table(self, scores: Mapping[float, Sequence[tuple]]) -> dict[int, tuple]:
        """{fine index: mean score} for every lattice lr with all its seeds scored."""
        out = {}
        for lr, per in scores.items():
            per = list(per.values()) if isinstance(per, Mapping) else list(per)
            if len(per) >= len(self.seeds) and self.grid.on_lattice(lr):
                out[self.grid.fine(lr)] = mean_score([as_score(x) for x in per[:len(self.seeds)]])
        return out

    def _run(self, scores) -> tuple[list[int], int | None, list[int], list[str]]:
        """(fine indices pending, best fine index or None, fine indices looked at, flags)."""
        t = self._table(scores)
        return self._walk(t) if self.rule == "walk" else self._full(t)

    @staticmethod
    def _best(t: dict, idx) -> int:
        return min(sorted(idx), key=lambda f: t[f])  # ties: the lowest lr

    def _walk(self, t):
        a, b = self.grid.range
        j0 = self.grid.fine(self.grid.snap(self.start_lr)) // 2
        done = [j for j in (j0 - 1, j0, j0 + 1) if a <= j <= b]
        miss = [2 * j for j in done if 2 * j not in t]
        if miss:
            return miss, None, [], []
        while True:
            best = self._best(t, [2 * j for j in done]) // 2
            nxt = None
            if best == min(done) and best - 1 >= a:
                nxt = best - 1
            elif best == max(done) and best + 1 <= b:
                nxt = best + 1
            if nxt is None or len(done) >= self.max_points:
                flags = []
                if best in (min(done), max(done)):
                    flags.append("cap" if nxt is not None else "edge")
                return [], 2 * best, [2 * j for j in sorted(done)], flags
            if 2 * nxt not in t:
                return [2 * nxt], None, [], []
            done.append(nxt)

    def _full(self, t):
        lo, hi = self.grid.range
        capped = False
        while True:
            miss = [2 * j for j in range(lo, hi + 1) if 2 * j not in t]
            if miss:
                return miss, None, [], []
            best = self._best(t, [2 * j for j in range(lo, hi + 1)]) // 2
            room = self.max_points - (hi - lo + 1)
            down, up = max(0, 2 - (best - lo)), max(0, 2 - (hi - best))
            if down + up == 0:
                break
            if room <= 0:
                capped = True
                break
            down = min(down, room)
            up = min(up, room - down)
            lo, hi = lo - down, hi + up
        refine = [2 * best - 1, 2 * best + 1]
        miss = [f for f in refine if f not in t]
        if miss:
            return miss, None, [], []
        looked = list(range(2 * lo, 2 * hi + 1, 2)) + refine
        choice = self._best(t, looked)
        flags = (["cap"] if capped else []) + (["edge"] if not 2 * lo < choice < 2 * hi else [])
        return [], choice, sorted(looked), flags

    # -- public ----------------------------------------------------------------------------------------------
    def pending(self, scores: Mapping[float, Sequence[tuple]]) -> list[float]:
        """Learning rates still to evaluate (every tuning seed of each); [] once the rule has decided."""
        return [self.grid.at(f) for f in self._run(scores)[0]]

    def decide(self, scores: Mapping[float, Sequence[tuple]]) -> Decision:
        todo, best, looked, flags = self._run(scores)
        if best is None:
            raise ValueError(f"the LR search is not finished: {len(todo)} learning rate(s) pending")
        t = self._table(scores)
        if self.resolution is not None and any(
                f != best and t[f][0] == t[best][0] and abs(t[f][1] - t[best][1]) <= self.resolution + 1e-12
                for f in looked):
            flags = flags + ["within-one-sample"]
        return Decision(self.grid.at(best), {self.grid.at(f): t[f] for f in looked}, flags)


def tune(run: Callable[[float, int], tuple], tuner: LRTuner) -> Decision:
    """Blocking search: ``run(lr, seed) -> score`` (a tuple, or a number: see :func:`as_score`) for every
    pending lr and tuning seed until decided."""
    scores: dict[float, list[tuple]] = {}
    while True:
        todo = tuner.pending(scores)
        if not todo:
            return tuner.decide(scores)
        for lr in todo:
            scores[lr] = [as_score(run(lr, s)) for s in tuner.seeds]

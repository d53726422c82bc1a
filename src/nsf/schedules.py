"""Schedules for any hyperparameter, as pure functions of the step count.

A schedule is closed-form in the number of completed steps (0 for the first update), so resuming needs only
that count, and it describes itself with primitives (``to_dict``) so that optimizer state dicts holding it load
with ``torch.load(weights_only=True)``. ``HyperparamScheduler`` drives any param-group key with a schedule in
the style of ``torch.optim.lr_scheduler``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from typing import Any, Callable, Sequence as SequenceT

import torch

__all__ = [
    "Schedule",
    "Constant",
    "Cyclic",
    "Anneal",
    "Sequence",
    "CallableSchedule",
    "as_schedule",
    "from_dict",
    "epochs",
    "per_run",
    "HyperparamScheduler",
]


def _finite(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer number of steps, got {value!r}")
    return int(value)


def _positive(name: str, value: Any) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def epochs(n: float, steps_per_epoch: int) -> int:
    """Steps in ``n`` epochs: ``Cyclic(-0.25, 0.25, period=epochs(2, len(loader)))``."""
    n = _finite("n (epochs)", n)
    steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
    steps = round(n * steps_per_epoch)
    if steps <= 0:
        raise ValueError(f"{n} epochs of {steps_per_epoch} steps is less than one step")
    return steps


class Schedule:
    """Base class: ``schedule(step) -> float`` with ``step`` = completed steps (0, 1, 2, ...)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict | None:
        """Primitive description (``from_dict`` inverts it), or None when it cannot be saved."""
        raise NotImplementedError

    def for_run(self, total_steps: int | None) -> Schedule:
        """This schedule in a run of T = ``total_steps`` optimizer steps: each cycle stated per run takes T (with
        T None it raises a ValueError); anything else, an explicit period too, comes back as it is."""
        return self

    def __repr__(self) -> str:
        d = self.to_dict() or {}
        args = ", ".join(f"{k}={v!r}" for k, v in d.items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_dict() is not None and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))


class Constant(Schedule):
    def __init__(self, value: float):
        self.value = _finite("value", value)

    def __call__(self, step: int) -> float:
        return self.value

    def to_dict(self) -> dict:
        return {"type": "constant", "value": self.value}


class Cyclic(Schedule):
    """Periodic between ``low`` and ``high``; ``phase`` is a fraction of the period.

    triangle, cosine and square start at ``low`` (square holds ``low`` for the first half period);
    sine starts at the midpoint going up. ``quantize=q`` rounds every value to the nearest multiple of ``q``
    (a stepped cycle): with ``q = 0.125`` (or ¼) and ``low, high`` in [−1, 1], NSF's p stays on the exact
    square-root fast paths (p = 0 or |p| a multiple of ⅛) instead of a log and an exp per element.

    The length of a cycle is either ``period`` (optimizer steps) or relative to the run: ``cycles=k,
    total_steps=T`` runs k whole cycles in T steps (period T/k, not rounded), so the last cycle completes
    whatever the run's length. ``cycles=k`` alone states it per run before T is known (``for_run(T)``, or
    ``nsf.NSF(..., total_steps=T)``, gives it T; until then it cannot be evaluated). ``to_dict`` saves each form.
    """

    SHAPES = ("triangle", "cosine", "square", "sine")

    def __init__(self, low: float, high: float, period: int | None = None, shape: str = "triangle",
                 phase: float = 0.0, quantize: float | None = None, *, cycles: float | None = None,
                 total_steps: int | None = None):
        self.quantize = None if quantize is None else _finite("quantize", quantize)
        if self.quantize is not None and self.quantize <= 0:
            raise ValueError(f"quantize must be > 0 (or None), got {quantize}")
        self.low = _finite("low", low)
        self.high = _finite("high", high)
        if self.high < self.low:
            raise ValueError(f"high ({high}) must be >= low ({low})")
        if (period is None) == (cycles is None):
            raise ValueError("give the cycle's length either as period (steps) or as cycles (per run) with "
                             f"total_steps; got period={period!r}, cycles={cycles!r}")
        if period is not None:
            if total_steps is not None:
                raise ValueError("total_steps goes with cycles, not with period")
            self.period, self.cycles, self.total_steps = _positive_int("period", period), None, None
            self._length: float = self.period
        else:
            self.period = None
            self.cycles = _positive("cycles", cycles)
            self.total_steps = None if total_steps is None else _positive_int("total_steps", total_steps)
            if self.total_steps is not None and self.cycles > self.total_steps:
                raise ValueError(f"cycles ({cycles}) must not exceed total_steps ({total_steps}): a cycle needs "
                                 "at least one step")
            self._length = None if self.total_steps is None else self.total_steps / self.cycles
        self.shape = _choice("shape", shape, self.SHAPES)
        self.phase = _finite("phase", phase)

    def __call__(self, step: int) -> float:
        if self._length is None:
            self.for_run(None)  # raises: the period is unknown until the run's length is
        u = (step / self._length + self.phase) % 1.0
        if self.shape == "triangle":
            frac = 1.0 - abs(2.0 * u - 1.0)
        elif self.shape == "cosine":
            frac = 0.5 * (1.0 - math.cos(2.0 * math.pi * u))
        elif self.shape == "square":
            frac = 0.0 if u < 0.5 else 1.0
        else:  # sine
            frac = 0.5 * (1.0 + math.sin(2.0 * math.pi * u))
        value = self.low + (self.high - self.low) * frac
        return self._quantized(value)

    def _quantized(self, value: float) -> float:
        if self.quantize is None:
            return value
        return round(value / self.quantize) * self.quantize + 0.0  # + 0.0: never -0.0

    def for_run(self, total_steps: int | None) -> Cyclic:
        if self.cycles is None or self.total_steps is not None:
            return self
        if total_steps is None:
            raise ValueError(f"the cycle {self!r} is stated per run (cycles={self.cycles:g}): give the run's total "
                             "number of optimizer steps (total_steps=T)")
        return from_dict({**self.to_dict(), "total_steps": total_steps})

    def to_dict(self) -> dict:
        length = ({"period": self.period} if self.period is not None
                  else {"cycles": self.cycles, "total_steps": self.total_steps} if self.total_steps is not None
                  else {"cycles": self.cycles})  # stated per run, its length not yet known
        d = {"type": "cyclic", "low": self.low, "high": self.high, **length, "shape": self.shape, "phase": self.phase}
        if self.quantize is not None:  # only when set: older descriptions stay as they were
            d["quantize"] = self.quantize
        return d


class Anneal(Schedule):
    """Monotone move from ``start`` to ``end`` over ``steps``, then held at ``end``."""

    SHAPES = ("linear", "cosine")

    def __init__(self, start: float, end: float, steps: int, shape: str = "linear"):
        self.start = _finite("start", start)
        self.end = _finite("end", end)
        self.steps = _positive_int("steps", steps)
        self.shape = _choice("shape", shape, self.SHAPES)

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0) / self.steps, 1.0)
        if self.shape == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac

    def to_dict(self) -> dict:
        return {"type": "anneal", "start": self.start, "end": self.end, "steps": self.steps, "shape": self.shape}


class Sequence(Schedule):
    """Segments run one after another, each seeing its own step count from 0; the last one runs on forever."""

    def __init__(self, segments: SequenceT[tuple[int, Any]]):
        segments = list(segments)
        if not segments:
            raise ValueError("segments must not be empty")
        self.segments: list[tuple[int, Schedule]] = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, (tuple, list)) or len(seg) != 2:
                raise ValueError(f"segments[{i}] must be a (steps, schedule) pair, got {seg!r}")
            steps, sched = seg
            self.segments.append((_positive_int(f"segments[{i}] steps", steps), as_schedule(sched)))

    def __call__(self, step: int) -> float:
        for steps, sched in self.segments[:-1]:
            if step < steps:
                return sched(step)
            step -= steps
        return self.segments[-1][1](step)

    def for_run(self, total_steps: int | None) -> Sequence:
        """Each segment's cycles stated per run take the run's T too (period T/k wherever the cycle sits)."""
        resolved = [(steps, sched.for_run(total_steps)) for steps, sched in self.segments]
        return self if all(a is b for (_, a), (_, b) in zip(resolved, self.segments)) else Sequence(resolved)

    def to_dict(self) -> dict | None:
        parts = [[steps, sched.to_dict()] for steps, sched in self.segments]
        if any(d is None for _, d in parts):
            return None
        return {"type": "sequence", "segments": parts}

    def __repr__(self) -> str:
        return f"Sequence({self.segments!r})"


class CallableSchedule(Schedule):
    """A plain ``f(step) -> float``. It works, but cannot be saved in a state dict."""

    def __init__(self, fn: Callable[[int], float]):
        self.fn = fn

    def __call__(self, step: int) -> float:
        return _finite(f"value returned by {self.fn!r} at step {step}", self.fn(step))

    def to_dict(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CallableSchedule({self.fn!r})"


_TYPES = {"constant": Constant, "cyclic": Cyclic, "anneal": Anneal}


def from_dict(d: dict) -> Schedule:
    """Inverse of ``Schedule.to_dict``; a malformed description raises a ValueError that says what is wrong."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a schedule description is a dict with a 'type' key, got {d!r}")
    kind = d["type"]
    kwargs = {k: v for k, v in d.items() if k != "type"}
    if kind == "sequence":
        segments = kwargs.get("segments")
        if set(kwargs) != {"segments"} or not isinstance(segments, (list, tuple)):
            raise ValueError("a sequence is described as {'type': 'sequence', 'segments': [[steps, {schedule}], "
                             f"...]}}; got {d!r}")
        pairs = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                raise ValueError(f"sequence segments[{i}] must be a [steps, schedule] pair, got {seg!r}")
            pairs.append((seg[0], from_dict(seg[1])))
        return Sequence(pairs)
    if kind not in _TYPES:
        raise ValueError(f"unknown schedule type {kind!r}; known: {', '.join([*_TYPES, 'sequence'])}")
    accepted = inspect.signature(_TYPES[kind]).parameters
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(f"a {kind} schedule has no parameter {', '.join(map(str, unknown))}; "
                         f"its parameters: {', '.join(accepted)}")
    try:
        return _TYPES[kind](**kwargs)
    except TypeError as e:  # a required parameter is missing
        raise ValueError(f"{kind} schedule {d!r}: {e}") from None


def per_run(value: Any, total_steps: int | None) -> Any:
    """``value`` (a schedule or its description) with every cycle stated per run given the run's length (a
    ValueError when ``total_steps`` is None); anything else, a malformed description too, comes back as it is."""
    if isinstance(value, Schedule):
        return value.for_run(total_steps)
    if not isinstance(value, dict):
        return value
    try:
        schedule = from_dict(value)
    except ValueError:  # its user says what is wrong
        return value
    resolved = schedule.for_run(total_steps)
    return value if resolved is schedule else resolved.to_dict()


def as_schedule(value: Any) -> Schedule:
    """Numbers, 0-dim tensors, dicts, Schedules and plain callables all become a Schedule."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict):
        return from_dict(value)
    if isinstance(value, (numbers.Real, torch.Tensor)) and not isinstance(value, bool):
        return Constant(value)
    if callable(value):
        return CallableSchedule(value)
    raise ValueError(f"cannot make a schedule from {value!r}: give a number, a Schedule, a dict or f(step)")


def _extremes(schedule: Schedule) -> list[float]:
    """Values that bound everything ``schedule`` can give (empty for a plain callable: checked as it runs)."""
    if isinstance(schedule, Constant):
        return [schedule.value]
    if isinstance(schedule, Cyclic):
        return [schedule._quantized(schedule.low), schedule._quantized(schedule.high)]
    if isinstance(schedule, Anneal):
        return [schedule.start, schedule.end]
    if isinstance(schedule, Sequence):
        return [v for _, sub in schedule.segments for v in _extremes(sub)]
    return []


#: what torch's optimizers accept for the keys they share: key -> (test, the rule in words)
_LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v >= 0, ">= 0"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
}


class HyperparamScheduler:
    """Drive any param-group key (``"p"``, ``"lr"``, ``"beta1"``, ``"beta2"``, ...) with a schedule.

    Works like ``torch.optim.lr_scheduler``: construct it (the value for step 0 is applied at once), call
    ``step()`` after each ``optimizer.step()``. Tensor-valued keys are updated in place with ``fill_`` so a
    compiled step sees the new value without recompiling. ``schedule`` may be one schedule or one per group.
    Several schedulers on different keys of one optimizer chain without interfering.

    An optimizer may define ``hyperparam_scheduled(key)``, called once the scheduler takes ``key`` over:
    ``nsf.NSF`` uses it to turn its groups' own p schedules off when a scheduler drives ``"p"``. Every value
    written to ``lr``, ``beta1``, ``beta2``, ``eps``, ``weight_decay`` or ``momentum`` is checked against the
    range torch's optimizers accept (the whole range of a schedule up front, a plain callable at each step).

    ``total_steps``, the run's number of optimizer steps (saved in ``state_dict``; default: each group's own,
    as ``nsf.NSF(..., total_steps=T)`` keeps it), is the length of every cycle stated per run
    (``Cyclic(0, 0.5, cycles=2)``); such a cycle without either raises a ValueError here.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, key: str, schedule: Any, last_step: int = -1, *,
                 total_steps: int | None = None):
        self.optimizer = optimizer
        self.key = key
        self.total_steps = total_steps
        groups = optimizer.param_groups
        schedules = list(schedule) if isinstance(schedule, (list, tuple)) else [schedule] * len(groups)
        if len(schedules) != len(groups):
            raise ValueError(f"got {len(schedules)} schedules for {len(groups)} param groups")
        self.schedules = [as_schedule(s).for_run(total_steps if total_steps is not None else g.get("total_steps"))
                          for s, g in zip(schedules, groups)]
        for group in groups:
            self._read(group)  # fail now, not at the first step, on a key the groups lack
        for sched in self.schedules:  # fail now on a schedule that would leave the key's valid range
            for value in _extremes(sched):
                self._check(value, f"{sched!r} reaches {value}")
        hook = getattr(optimizer, "hyperparam_scheduled", None)
        if callable(hook):  # e.g. NSF: its own p schedule stops when a scheduler drives "p"
            hook(key)
        self.last_step = last_step
        self.step()

    def _check(self, value: float, where: str) -> None:
        test, rule = _LIMITS.get(self.key, (None, ""))
        if test is not None and not test(value):
            raise ValueError(f"HyperparamScheduler: {self.key} must be {rule}; {where}")

    def _read(self, group: dict) -> Any:
        if self.key in ("beta1", "beta2"):
            return group["betas"][self.key == "beta2"]
        if self.key not in group:
            raise KeyError(f"param group has no key {self.key!r}; it has {sorted(k for k in group if k != 'params')}")
        return group[self.key]

    def _write(self, group: dict, value: float) -> None:
        if self.key in ("beta1", "beta2"):
            betas = list(group["betas"])
            i = int(self.key == "beta2")
            if isinstance(betas[i], torch.Tensor):
                betas[i].fill_(value)
            else:
                betas[i] = value
            group["betas"] = tuple(betas)
        elif isinstance(group[self.key], torch.Tensor):
            group[self.key].fill_(value)
        else:
            group[self.key] = value

    def get_last_value(self) -> list[float]:
        return [float(self._read(g)) for g in self.optimizer.param_groups]

    def step(self) -> None:
        values = [sched(self.last_step + 1) for sched in self.schedules]
        for value in values:  # all checked before any is written
            self._check(value, f"the schedule gives {value} at step {self.last_step + 1}")
        self.last_step += 1
        for group, value in zip(self.optimizer.param_groups, values):
            self._write(group, value)

    def state_dict(self) -> dict:
        descriptions = [s.to_dict() for s in self.schedules]
        if any(d is None for d in descriptions):
            warnings.warn("a plain-callable schedule is not saved in the state dict; pass it again on rebuild",
                          stacklevel=2)
        return {"key": self.key, "last_step": self.last_step, "schedules": descriptions,
                "total_steps": self.total_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["key"] != self.key:
            raise ValueError(f"state dict drives {state_dict['key']!r}, this scheduler drives {self.key!r}")
        total_steps = state_dict.get("total_steps", self.total_steps)  # older state dicts: this scheduler's
        schedules = [from_dict(d).for_run(total_steps) if d is not None else s
                     for d, s in zip(state_dict["schedules"], self.schedules)]
        for sched in schedules:
            for value in _extremes(sched):
                self._check(value, f"the loaded {sched!r} reaches {value}")
        self.schedules, self.total_steps = schedules, total_steps
        self.last_step = state_dict["last_step"] - 1
        self.step()

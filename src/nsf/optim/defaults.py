"""The library's default NSF configuration, defined once: every module, report and doc imports it from here.

``scale="adam"`` with Adam's ``lr=1e-3``, so that swapping ``torch.optim.Adam(params)`` for
``nsf.NSF(params)`` keeps the step length (each tensor's step has the length of Adam's; p only turns its
direction, between momentum's (p = 0) and Adam's (p = ½)).

The p cycle, a cosine between 0 and ½, is the evidence protocol's search winner (docs/evidence.md, stage 1:
p range × scale, then 1/2/4/8 cycles per run, LRs tuned, validation splits only; docs/RESULTS_v2.md): (0, ½)
beat (−¼, ¼) under the adam and sgd scales (under raw, (−¼, ¼) was better: 0.7337 vs 0.7409 nats), and 2 cycles
per run beat 1, 4 and 8. The one deviation from the declared rule is the scale: the winner was sgd-grafted,
0.0007 nats of validation loss ahead of adam-grafted, far inside the noise, and "adam" keeps Adam's meaning of
``lr`` (drop-in). The cycle is stepped on multiples of ⅛ (square-root chains, no log/exp per element): on the
search tasks' validation splits that changed the final loss by
−0.0000 [−0.0021, +0.0021] and −0.0003 [−0.0014, +0.0008] nats (10 seeds, benchmarks/quantized_default.py).
The searched form is two cycles per run: ``NSF(params, total_steps=T)`` (the run's number of optimizer steps)
takes it. Without T the library cannot know the run's length, and the period is ``DEFAULT_P``'s 1000 steps.
"""
from __future__ import annotations

from .. import schedules

#: lr of the default configuration: Adam's learning rate, since DEFAULT_SCALE grafts onto Adam's step length.
DEFAULT_LR = 1e-3
#: the default p schedule: a cosine cycle between 0 and 1/2, stepped on multiples of 1/8.
DEFAULT_P = schedules.Cyclic(0.0, 0.5, period=1000, shape="cosine", quantize=0.125)
#: cycles per run of the searched default, for runs whose length is known (``default_cycle(cycles=...)``).
DEFAULT_CYCLES = 2
#: the default step-length mode ("raw", "sgd" or "adam").
DEFAULT_SCALE = "adam"


def default_cycle(period: int | None = None, *, cycles: float | None = None,
                  total_steps: int | None = None) -> schedules.Cyclic:
    """The default p cycle with another period (optimizer steps), or ``cycles`` per run of ``total_steps``:
    ``default_cycle(total_steps=T)`` is the searched form, ``DEFAULT_CYCLES`` per run (at most one per step, so
    that a run of one step, e.g. a smoke test, still works); ``cycles`` without T is stated per run, and
    ``NSF(..., total_steps=T)`` gives it the run's length."""
    d = DEFAULT_P.to_dict()
    if total_steps is not None and cycles is None:
        one_per_step = type(total_steps) is int and 0 < total_steps < DEFAULT_CYCLES
        cycles = total_steps if one_per_step else DEFAULT_CYCLES
    if cycles is not None:
        del d["period"]
        d.update(cycles=cycles, total_steps=total_steps)
    elif period is not None:
        d["period"] = int(period)
    return schedules.from_dict(d)

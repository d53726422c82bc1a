"""The library's default NSF configuration, defined once: every module, report and doc imports it from here.

``scale="adam"`` with Adam's ``lr=1e-3``, so that swapping ``torch.optim.Adam(params)`` for
``nsf.NSF(params)`` keeps the step length (each tensor's step has the length of Adam's; p only turns its
direction). The ±1/4 cosine cycle of p is the one chosen by the declared search of issue #4 on validation
splits (docs/RESULTS.md); its period is in optimizer steps because the library cannot know a run's length:
state it per run with ``Cyclic(-0.25, 0.25, cycles=k, total_steps=T, shape="cosine")``. Provisional: the
evidence protocol's stage-1 search (docs/RESULTS_evidence.md) ranked cyclic(0, 1/2) sgd-grafted first, 0.0006
nats of validation loss ahead of the adam-grafted variant, too close to change what ``lr`` means; stage 2
decides.
"""
from __future__ import annotations

from .. import schedules

#: lr of the default configuration: Adam's learning rate, since DEFAULT_SCALE grafts onto Adam's step length.
DEFAULT_LR = 1e-3
#: the default p schedule: a cosine cycle between -1/4 and +1/4.
DEFAULT_P = schedules.Cyclic(-0.25, 0.25, period=1000, shape="cosine")
#: the default step-length mode ("raw", "sgd" or "adam").
DEFAULT_SCALE = "adam"


def default_cycle(period: int | None = None, *, cycles: float | None = None,
                  total_steps: int | None = None) -> schedules.Cyclic:
    """The default p cycle with another period (optimizer steps), or ``cycles`` per run of ``total_steps``."""
    d = DEFAULT_P.to_dict()
    if cycles is not None:
        del d["period"]
        d.update(cycles=cycles, total_steps=total_steps)
    elif period is not None:
        d["period"] = int(period)
    return schedules.from_dict(d)

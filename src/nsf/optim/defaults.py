"""The library's default NSF configuration, defined once: every module, report and doc imports it from here.

Chosen by the declared search of issue #4 on validation splits (docs/RESULTS.md); provisional until the
evidence protocol (issue #9) re-chooses it.
"""
from __future__ import annotations

from .. import schedules

#: lr of the default configuration (its meaning depends on DEFAULT_SCALE; see docs/optimizer.md).
DEFAULT_LR = 1.0
#: the default p schedule: a cosine cycle between -1/4 and +1/4.
DEFAULT_P = schedules.Cyclic(-0.25, 0.25, period=1000, shape="cosine")
#: the default step-length mode ("raw", "sgd" or "adam").
DEFAULT_SCALE = "sgd"


def default_cycle(period: int | None = None) -> schedules.Cyclic:
    """The default p cycle, optionally with another period (in optimizer steps)."""
    d = DEFAULT_P.to_dict()
    if period is not None:
        d["period"] = int(period)
    return schedules.from_dict(d)

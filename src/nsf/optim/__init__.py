"""The optimizers. The functional step is ``nsf.optim.nsf.nsf`` (the module ``nsf.optim.nsf`` holds the class,
the functional step and its constants, such as ``AUTO_FUSED_MIN_NUMEL``)."""

from ._step_options import StepOptions
from .fsgdm import FSGDM
from .nsf import NSF, SCALES
from .reference import reference_step

__all__ = ["FSGDM", "NSF", "SCALES", "StepOptions", "reference_step"]

"""Natural Spectral Fusion: an Adam-family optimizer with a signed, scheduled second-moment exponent."""

from . import schedules
from .groups import param_groups
from .optim import FSGDM, NSF
from .optim.defaults import default_cycle
from .registry import OPTIMIZERS, create_optimizer, parse_spec
from .schedules import HyperparamScheduler

__all__ = ["FSGDM", "NSF", "HyperparamScheduler", "OPTIMIZERS", "create_optimizer", "default_cycle", "param_groups",
           "parse_spec", "schedules"]
__version__ = "0.2.0"

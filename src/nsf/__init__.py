"""Natural Spectral Fusion: an Adam-family optimizer with a signed, scheduled second-moment exponent."""

from . import schedules
from .optim import NSF
from .registry import OPTIMIZERS, create_optimizer, parse_spec
from .schedules import HyperparamScheduler

__all__ = ["NSF", "HyperparamScheduler", "OPTIMIZERS", "create_optimizer", "parse_spec", "schedules"]
__version__ = "0.1.0"

from .fsgdm import FSGDM
from .nsf import NSF, SCALES, nsf

__all__ = ["FSGDM", "NSF", "SCALES", "nsf"]

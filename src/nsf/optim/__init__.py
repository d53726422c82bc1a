from .nsf import NSF, SCALES, nsf

__all__ = ["NSF", "SCALES", "nsf"]

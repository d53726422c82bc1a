"""Spectral instruments for any torch optimizer (docs/spectral.md; the two senses of
"frequency": docs/method.md).

* :mod:`nsf_lab.spectral.response` — the optimizer as a filter of gradient streams (gain, single-tone transfer)
* :mod:`nsf_lab.spectral.fprinciple` — what an MLP learns first on 1-D regression (per-frequency DFT error)
* :mod:`nsf_lab.spectral.filtering` — Xu et al.'s low/high-frequency error split on real classification data
* :mod:`nsf_lab.spectral.alignment` — :class:`AlignmentRecorder`, a callback for test accuracy/loss/ECE/margins

Command line: ``nsf spectrum <instrument> [--quick] --out DIR``.
"""
from .alignment import AlignmentRecorder, classification_metrics, early_dense_cadence

__all__ = ["AlignmentRecorder", "classification_metrics", "early_dense_cadence"]

"""nsf_lab.bench: benchmark harness (tasks on real offline data, tuned baselines, resumable sweeps, reports).

``nsf bench --suite smoke|quick|standard --out DIR`` runs a suite; ``nsf report DIR`` writes DIR/report.md.
"""
from .suites import SUITES, get_suite

__all__ = ["SUITES", "get_suite"]

"""nsf.bench: benchmark harness (tasks on real offline data, tuned baselines, resumable sweeps, reports).

``nsf bench --suite smoke|quick|standard --out DIR`` runs a suite; ``nsf report DIR`` writes DIR/report.md.
"""
from .runner import RunStore, make_config, run_id
from .suites import SUITES, get_suite

__all__ = ["RunStore", "make_config", "run_id", "SUITES", "get_suite"]

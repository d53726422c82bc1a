"""nsf_lab: the laboratory around the ``nsf`` optimizer library.

It imports :mod:`nsf`, never the reverse:

* :mod:`nsf_lab.experiment` — data, models, tasks, one training loop, metrics, statistics, the LR tuner, sweeps
* :mod:`nsf_lab.bench` — benchmark suites, the protocol planner, reports and verdicts
* :mod:`nsf_lab.spectral` — the spectral instruments (frequency response, F-principle, filtering, alignment)
* :mod:`nsf_lab.cli` — the ``nsf`` command; :mod:`nsf_lab.demo` — ``nsf demo``

Installed with the ``lab`` extra: ``pip install "nsf[lab]"``.
"""

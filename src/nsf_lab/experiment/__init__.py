"""The experiment layer shared by ``nsf_lab.bench``, ``nsf_lab.spectral``, the demo and ``benchmarks/``.

* :mod:`~nsf_lab.experiment.data` — datasets; one split-then-standardise order (training-row statistics only)
* :mod:`~nsf_lab.experiment.models` — every model builder
* :mod:`~nsf_lab.experiment.tasks` — the benchmark task registry (data + model + budget + LR shape + eval cadence)
* :mod:`~nsf_lab.experiment.train` — one training loop with callbacks; :func:`~nsf_lab.experiment.train.run_config`
* :mod:`~nsf_lab.experiment.metrics` — classification metrics (one ECE)
* :mod:`~nsf_lab.experiment.stats` — mean, t confidence intervals, Welch and paired tests, bootstrap
* :mod:`~nsf_lab.experiment.tuner` — the one LR tuner; :mod:`~nsf_lab.experiment.sweep` — resumable sweeps
* :mod:`~nsf_lab.experiment.util` — seeding, atomic JSON, saving figures

Submodules are imported on demand (``from nsf_lab.experiment import train``), so importing the package is cheap.
"""

"""The experiment layer shared by ``nsf.bench``, ``nsf.spectral``, the demo and ``benchmarks/``.

* :mod:`~nsf.experiment.data` — datasets; one split-then-standardise order (training-row statistics only)
* :mod:`~nsf.experiment.models` — every model builder
* :mod:`~nsf.experiment.tasks` — the benchmark task registry (data + model + budget + LR shape + eval cadence)
* :mod:`~nsf.experiment.train` — one training loop with callbacks; :func:`~nsf.experiment.train.run_config`
* :mod:`~nsf.experiment.metrics` — classification metrics (one ECE)
* :mod:`~nsf.experiment.stats` — mean, t confidence intervals, Welch and paired tests, bootstrap
* :mod:`~nsf.experiment.tuner` — the one LR tuner; :mod:`~nsf.experiment.sweep` — resumable sweeps
* :mod:`~nsf.experiment.util` — seeding, atomic JSON, saving figures

Submodules are imported on demand (``from nsf.experiment import train``), so importing the package is cheap.
"""

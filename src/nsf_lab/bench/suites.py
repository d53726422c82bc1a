"""Suites and the benchmark protocol (docs/bench.md, docs/evidence.md).

Protocol, per task:
  stage "tune"   each optimizer's base LR is chosen on the validation split (carved from the training set)
                 with seeds ``tune_seeds`` and the full budget by the one tuner (nsf_lab.experiment.tuner) on
                 ONE shared log grid (half-decades), with the suite's ``rule`` and ``criterion``.  Rule
                 "walk" (the smoke and standard suites: the committed standard archive): the grid is walked
                 from the optimizer's reference point until the best LR is interior (or at the grid edge, or
                 ``max_points``).
                 Diverged runs count as worst and are kept.
  stage "seeds"  every optimizer at its chosen LR, ``seeds`` seeds, evaluated on the test set.
  stage "budget" the NSF default at budgets in ``budgets`` (whole schedule compressed), same seeds.
An optional stage "search" (standard suite) first chooses the NSF default configuration on the validation
splits of ``search.tasks`` from a declared space; the winner is then "NSF default" in the other stages.
Protocol "evidence" (docs/evidence.md; suite "quick" is its miniature) adds tied and one-shot arms and re-tunes
the LR per budget for NSF default and the task's best baseline (see nsf_lab.bench.protocol); its grid is per arm
(``grid_span`` decades on each side of the arm's snapped reference LR).
Everything is a pure function of the finished runs, so a resumed sweep plans exactly the same runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nsf.optim.defaults import DEFAULT_CYCLES
from nsf.registry import spec_to_str
from nsf_lab.experiment.tuner import CRITERIA, Grid, LRTuner

SEARCH_SCORES = CRITERIA + ("relative",)


@dataclass
class Search:
    """Declared search for the default NSF configuration (validation splits only)."""
    tasks: list
    stage_a: list           # specs: p range x scale mode, at a fixed period/shape
    periods: list = field(default_factory=list)  # stage B (old form): the winner of A at each period x shape
    shapes: list = field(default_factory=list)
    variants: list | None = None  # stage B (new form): the winner with each of these overrides of its p
    # the mean over tasks ranked by "error" (loss breaks ties) or "loss" (error breaks ties); or "relative": the
    # mean over tasks of the tuned criterion over the best candidate's on that task (scale-free across tasks)
    score: str = "error"
    label: str | None = None  # None: the winner is "NSF default"; else an extra tuned arm of this label

    def __post_init__(self):
        if self.score not in SEARCH_SCORES:
            raise ValueError(f"search score must be one of {SEARCH_SCORES}, got {self.score!r}")

    def rank(self, row: dict) -> tuple:
        if self.score == "relative":
            return row["relative"], row["error"]
        return (row["error"], row["loss"]) if self.score == "error" else (row["loss"], row["error"])

    def stage_b(self, winner: dict) -> list:
        if self.variants is not None:
            from nsf.registry import parse_spec
            return [parse_spec({**winner, "p": {**winner["p"], **v}}) for v in self.variants]
        out = []
        for per in self.periods:
            for shape in self.shapes:
                d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in winner.items()}
                d["p"]["period"] = per
                d["p"]["shape"] = shape
                out.append(d)
        return out


PROTOCOLS = ("standard", "evidence", "evidence3")


def arm_grid(ref: float, span: float | None) -> Grid:
    """The declared grid of an arm: the shared default grid, or half-decades from ``10**-span`` to ``10**span``
    times ``ref`` snapped to a half-decade (same lattice, so every LR is one exact float)."""
    if span is None:
        return Grid.default()
    step = Grid.default().step
    j = round(math.log10(ref) / step)
    k = round(span / step)
    return Grid(lo=10 ** ((j - k) * step), hi=10 ** ((j + k) * step), step=step)


@dataclass
class Suite:
    name: str
    tasks: list
    baselines: list                      # (label, spec)
    default: str | None = "nsf"          # spec of "NSF default" when there is no search
    ablations: bool = True               # NSF fixed p at the values the cycle visits + raw/sgd/adam cyclic
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    budgets: list = field(default_factory=lambda: [0.25, 0.5])
    tune_seeds: list = field(default_factory=lambda: [100])
    rule: str = "walk"                   # LR search rule of nsf_lab.experiment.tuner: "walk" or "full"
    max_points: int | None = None        # the tuner's cap on grid points (None: the rule's default)
    criterion: str = "auto"              # tuning score: "error", "loss", or "auto" (loss for text, else error)
    search: Search | None = None
    extra: list = field(default_factory=list)  # (label, spec) from the command line
    grid_span: float | None = None       # per-arm grid: this many decades each side of the arm's reference LR
    protocol: str = "standard"           # "standard", "evidence" (tied and one-shot arms, re-tuned budgets), "evidence3"
    fixed_p: list | None = None          # the ablations' fixed p values (None: low, centre, high of the cycle)
    one_shot_tasks: list | None = None   # evidence3: the tasks with one-shot arms (None: every task)
    budget_tasks: list | None = None     # evidence3: the tasks with budget runs (C3; None: every task)
    reference_budget: float | None = None  # evidence3: the best baseline's longer run (validation, tuning seeds)
    note: str = ""                       # shown under the report's title (e.g. what a miniature can decide)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"suite {self.name!r}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.criterion not in CRITERIA + ("auto",):
            raise ValueError(f"suite {self.name!r}: unknown criterion {self.criterion!r}")
        try:  # rule, tuning seeds and point cap are checked by the tuner itself
            LRTuner(1e-3, arm_grid(1e-3, self.grid_span), rule=self.rule, seeds=self.tune_seeds,
                    max_points=self.max_points)
        except ValueError as e:
            raise ValueError(f"suite {self.name!r}: {e}") from None


def _cyclic(low, high, period=250, shape="cosine"):
    return {"type": "cyclic", "low": low, "high": high, "period": period, "shape": shape, "phase": 0.0}


BASELINES = [("SGD-M", "sgd"), ("Adam", "adam"), ("AdamW", "adamw"), ("Padam", "padam")]

SEARCH = Search(
    tasks=["mnist1d-mlp", "fashion-mlp"],
    stage_a=[{"name": "nsf", "p": _cyclic(lo, hi), "scale": sc}
             for (lo, hi) in [(-0.05, 0.05), (-0.25, 0.25), (0.0, 0.5), (0.2, 0.3)]
             for sc in ["raw", "sgd", "adam"]],
    periods=[100, 250, 1000],
    shapes=["cosine", "triangle", "square"],
)

def _per_run(low, high, cycles=2.0, shape="cosine"):
    """A p cycle stated per run (the registry's canonical form of ``cyclic(low,high,cycles=c,shape=s)``)."""
    return {"type": "cyclic", "low": low, "high": high, "cycles": float(cycles), "shape": shape, "phase": 0.0}


# docs/evidence.md: stage A = p range x scale at 2 cosine cycles per run; stage B = the winner at 1, 2, 4, 8 cycles
EVIDENCE_SEARCH = Search(
    tasks=["mnist1d-mlp", "fashion-mlp"],
    stage_a=[{"name": "nsf", "p": _per_run(lo, hi), "scale": sc}
             for (lo, hi) in [(-0.25, 0.25), (0.0, 0.5)] for sc in ["adam", "sgd", "raw"]],
    variants=[{"cycles": float(c)} for c in (1, 2, 4, 8)], score="loss",
)
EVIDENCE_SMOKE_SEARCH = Search(
    tasks=["digits-mlp-tiny"],
    stage_a=[{"name": "nsf", "p": _per_run(-0.25, 0.25), "scale": "adam"},
             {"name": "nsf", "p": _per_run(0.0, 0.5), "scale": "sgd"}],
    variants=[{"cycles": 1.0}, {"cycles": 2.0}], score="loss",
)


def library_default() -> dict:
    """The library default as a spec stated per run: its p cycle (adam-grafted, on multiples of ⅛) at
    ``DEFAULT_CYCLES`` cycles per run, so that every cycle completes whatever the run's length."""
    from nsf.optim.defaults import DEFAULT_CYCLES, DEFAULT_P, DEFAULT_SCALE
    p = {k: v for k, v in DEFAULT_P.to_dict().items() if k != "period"}
    return {"name": "nsf", "p": {**p, "cycles": float(DEFAULT_CYCLES)}, "scale": DEFAULT_SCALE}


# docs/evidence_v3.md: the paper's own form (raw step, p cycling across zero), its range chosen on validation
RAW_RANGES = [(-0.25, 0.5), (-0.5, 0.5), (-0.25, 0.25)]
EVIDENCE3_TASKS = ["mnist1d-mlp", "fashion-mlp-long", "fashion-resnet-20k", "shakespeare-charlm-2k"]
EVIDENCE3_SEARCH = Search(tasks=EVIDENCE3_TASKS[:2], stage_a=[{"name": "nsf", "p": _per_run(lo, hi), "scale": "raw"}
                                                              for lo, hi in RAW_RANGES],
                          variants=[], score="relative", label="NSF raw signed-p")


#: ``nsf bench --suite quick`` (scripts/reproduce.sh): the evidence protocol in miniature, about 3 minutes on 2 cores
QUICK = dict(tasks=["digits-mlp", "mnist1d-mlp"], seeds=list(range(8)), tune_seeds=[100, 101], grid_span=1.0)
QUICK_NOTE = (f"**A miniature of the evidence protocol (docs/evidence.md), which decides nothing at its size**: its "
              f"rules (every LR of a per-arm half-decade grid ±{QUICK['grid_span']:g} decade around the arm's "
              f"reference LR, extended until the best LR has two grid points on each side, then refined; "
              f"criterion: mean validation loss over {len(QUICK['tune_seeds'])} tuning seeds; LRs re-tuned per "
              f"budget; tuned, tied and one-shot arms; paired CIs, Holm, verdict rules) on {len(QUICK['tasks'])} "
              f"small tasks, {len(QUICK['seeds'])} seeds, baselines SGD-M and Adam only and no search of the "
              f"default. The verdicts are docs/RESULTS.md's. NSF default = the library default with its p cycle "
              f"stated per run, `{spec_to_str(library_default())}`: {DEFAULT_CYCLES} whole cycles in every run, at "
              f"every budget.")

SUITES = {
    "smoke": Suite("smoke", ["digits-mlp-tiny"], [("SGD-M", "sgd"), ("Adam", "adam")], default="nsf",
                   ablations=False, seeds=[0, 1], budgets=[0.5], max_points=3),
    "quick": Suite("quick", baselines=[("SGD-M", "sgd"), ("Adam", "adam")], default=library_default(),
                   ablations=False, budgets=[0.25, 0.5], rule="full", criterion="loss", protocol="evidence",
                   note=QUICK_NOTE, **QUICK),
    "standard": Suite("standard", ["digits-mlp", "mnist1d-mlp", "fashion-mlp", "mnist1d-cnn", "mnist-cnn",
                                   "fashion-cnn", "shakespeare-gru"], BASELINES, default=None, search=SEARCH),
    "search": Suite("search", [], [], default=None, search=SEARCH),
    "evidence": Suite("evidence", ["mnist1d-mlp", "fashion-mlp"], BASELINES + [("FSGDM", "fsgdm")], default=None,
                      seeds=list(range(10)), budgets=[0.25, 0.5], tune_seeds=[100, 101], rule="full",
                      criterion="loss", search=EVIDENCE_SEARCH, grid_span=2.0, protocol="evidence",
                      fixed_p=[-0.25, 0.0, 0.25]),
    "evidence-smoke": Suite("evidence-smoke", ["digits-mlp-tiny"], [("SGD-M", "sgd"), ("Adam", "adam"),
                                                                     ("FSGDM", "fsgdm")], default=None,
                            seeds=[0, 1], budgets=[0.5], tune_seeds=[100], rule="full", max_points=5,
                            criterion="loss", search=EVIDENCE_SMOKE_SEARCH, grid_span=0.5, protocol="evidence"),
    "evidence3": Suite("evidence3", EVIDENCE3_TASKS, BASELINES + [("FSGDM", "fsgdm")], default=library_default(),
                       ablations=False, seeds=list(range(10)), budgets=[0.25, 0.5], tune_seeds=[100, 101, 102],
                       rule="full", criterion="loss_ts", search=EVIDENCE3_SEARCH, grid_span=1.0, protocol="evidence3",
                       one_shot_tasks=EVIDENCE3_TASKS[:2], budget_tasks=EVIDENCE3_TASKS[:2], reference_budget=2.0),
    "evidence3-smoke": Suite("evidence3-smoke", ["digits-mlp-tiny"], [("SGD-M", "sgd"), ("Adam", "adam"),
                                                                       ("FSGDM", "fsgdm")],
                             default=library_default(), ablations=False, seeds=[0, 1], budgets=[0.5],
                             tune_seeds=[100, 101], rule="full", max_points=5, criterion="loss_ts",
                             search=Search(tasks=["digits-mlp-tiny"], stage_a=EVIDENCE3_SEARCH.stage_a[:2], variants=[],
                                           score="relative", label="NSF raw signed-p"),
                             grid_span=0.5, protocol="evidence3", reference_budget=2.0),
}


def get_suite(name: str) -> Suite:
    import copy
    try:
        return copy.deepcopy(SUITES[name])
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}") from None


def suite_to_dict(s: Suite) -> dict:
    import dataclasses
    return dataclasses.asdict(s)


def suite_from_dict(d: dict) -> Suite:
    """A suite from its ``suite.json`` form; directories written before the tuner (``tune_seed``, ``max_walk``,
    ``search.seed``) still load."""
    try:
        return _suite_from_dict(dict(d))
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        from nsf_lab.experiment.sweep import SweepError
        raise SweepError(f"invalid suite.json: {type(e).__name__}: {e}") from None


def _suite_from_dict(d: dict) -> Suite:
    if "tune_seed" in d:
        d["tune_seeds"] = [d.pop("tune_seed")]
    if "max_walk" in d:
        d["max_points"] = d.pop("max_walk")
    if d.get("search"):
        d["search"] = Search(**{k: v for k, v in d["search"].items() if k != "seed"})
    d["extra"] = [tuple(x) for x in d.get("extra", [])]
    d["baselines"] = [tuple(x) for x in d.get("baselines", [])]
    return Suite(**d)

"""The analysis of the declared evidence protocol (docs/evidence.md): paired comparisons with Holm-corrected
CIs and verdicts per claim (C1 test error, C2 test loss, C3 time to target, C4 early alignment), and the power
analysis.  Pure functions of the finished runs; ``nsf_lab.bench.evidence_md`` renders them.

The arms come as ``{task: {label: Arm}}`` (see :func:`arms_of`); every comparison pairs runs by seed,
since every arm shares a seed's initialisation and batch order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nsf_lab.experiment import stats as S

ALPHA = 0.05
BEST = "best baseline"  # placeholder for the task's best tuned baseline (chosen on validation)
# The declared primary comparisons (docs/evidence.md): id, arm kind, NSF arm, baseline arm.
PRIMARY = (("P1", "tuned", "NSF default", BEST), ("P2", "tied", "NSF-adam tied", "Adam"),
           ("P3", "tied", "NSF-sgd tied", "SGD-M"), ("P4", "one-shot", "NSF-adam 1e-3", "Adam 1e-3"))
# Secondary comparisons: reported with CIs, no verdict.  FSGDM is in every table through the first one.
SECONDARY = (("tuned", "NSF default", "FSGDM"), ("tied", "NSF-raw[1/4,1/2] tied", "Adam"),
             ("one-shot", "NSF-sgd 1.0", "SGD-M 0.1"))
CONTROL = ("AdamW", "Adam")  # the negative control of C4


@dataclass(frozen=True)
class Design:
    """A protocol's declared comparisons.  ``counted_once`` (evidence3): a primary whose arms the protocol does
    not plan on a task is not in the family there, and one whose runs are an earlier primary's (e.g. the tied
    and the one-shot pair when Adam's chosen LR is 1e-3) is reported as that one and counted once."""
    primary: tuple = PRIMARY
    secondary: tuple = SECONDARY
    control: tuple = CONTROL
    counted_once: bool = False
    intro: str = ("Primary comparisons P1 (tuned: NSF default vs the best tuned baseline, chosen on validation), P2/P3 "
                  "(tied: NSF-adam at Adam's LR vs Adam; NSF-sgd at 10× SGD-M's LR vs SGD-M), P4 (one-shot: NSF-adam "
                  "vs Adam at 1e-3).")
    family: str = "every task × P1–P4"


V2 = Design()
RAW = "NSF raw signed-p"
V3 = Design(primary=(("P1", "tuned", "NSF default", BEST), ("P2", "tuned", RAW, BEST),
                     ("P3", "tied", "NSF default tied", "Adam"), ("P4", "tied", f"{RAW} tied", "Adam"),
                     ("P5", "tied", "NSF-sgd tied", "SGD-M"), ("P6", "one-shot", "NSF default 1e-3", "Adam 1e-3")),
            secondary=(("tuned", "NSF default", "FSGDM"), ("tuned", RAW, "FSGDM"), ("tuned", RAW, "NSF default"),
                       ("one-shot", "NSF-sgd 1.0", "SGD-M 0.1")),
            control=("AdamW control", "Adam"), counted_once=True,
            intro="Primary comparisons P1, P2 (tuned: NSF default, and the raw signed-p cycle, vs the best tuned "
                  "baseline, chosen on validation), P3, P4 (tied: the same two at Adam's LR vs Adam), P5 (tied: "
                  "NSF-sgd at 10× SGD-M's LR vs SGD-M), P6 (one-shot: NSF default vs Adam at 1e-3, where run). A "
                  "comparison whose runs are an earlier one's is counted once (\"= Pk\").",
            family="every task × P1–P6 where planned, each comparison counted once")


def design_of(protocol: str | None) -> Design:
    return V3 if protocol == "evidence3" else V2
SMALL_TEST = 3000  # test sets below this resolve effects of >= 1 point only
EARLY_FRAC = 0.2
PILOT = range(10)  # the pilot's seeds, whose paired SDs size the rest


@dataclass
class Arm:
    label: str
    kind: str = "tuned"
    lr: dict = field(default_factory=dict)      # budget -> LR of the test runs
    flags: list = field(default_factory=list)   # tuner flags (edge / cap / within one sample)
    runs: dict = field(default_factory=dict)    # budget -> {seed: record}

    def finals(self, key: str, budget: float = 1.0) -> dict:
        """seed -> final metric.  A diverged run keeps its recorded error (chance level: what the arm achieved
        with that seed); its loss is missing (NaN), so that seed drops out of loss comparisons, counted there."""
        return {s: r["final"].get(key) for s, r in self.runs.get(budget, {}).items()}


def arms_of(dec) -> dict:
    """``{task: {label: Arm}}`` from a sweep's decisions (:class:`~nsf_lab.bench.protocol.Decided`): each arm's
    finished test runs at its chosen (or derived, or fixed) LR per budget, so a run shared by two arms (a tied
    arm whose config equals another's) serves both."""
    kinds = dec.d.get("arm_kinds") or {}
    out: dict = {}
    for task, decided in (dec.d.get("tuning") or {}).items():
        arms = out[task] = {}
        for label, spec in dec.optimizers():
            t = decided.get(label)
            if t is None:
                continue
            arm = arms[label] = Arm(label, t.get("kind") or kinds.get(label, "tuned"), flags=list(t.get("flags") or []))
            per_budget = [(1.0, t)] + [(float(b), x) for b, x in (t.get("budgets") or {}).items()]
            for b, x in per_budget:
                arm.lr[b] = x["lr"]
                arm.runs[b] = {r["config"]["seed"]: r for r in dec.final_runs(task, label, spec, b)}
                if b != 1.0:
                    arm.flags += [f"{f} @{b:g}" for f in x.get("flags") or []]
    return out


# ----------------------------------------------------------------------------------------------------------
# C1 / C2: paired final metrics

def paired_seeds(a: dict, b: dict) -> tuple[list, list, list]:
    """(seeds, a values, b values) over the seeds where both are finite."""
    seeds = sorted(s for s in a if s in b and S.finite([a[s]]) and S.finite([b[s]]))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def compare(nsf: Arm, base: Arm, key: str, scale: float = 1.0, level: float = 0.95, seeds=None) -> dict | None:
    """Paired difference nsf − base of a final metric (× ``scale``: 100 for error in points) over ``seeds``
    (default: all): mean, CI at ``level``, p, paired SD, n, and the seeds left out (missing on a side)."""
    fa, fb = ({s: v for s, v in a.finals(key).items() if seeds is None or s in seeds} for a in (nsf, base))
    seeds, x, y = paired_seeds(fa, fb)
    res = S.paired([scale * v for v in x], [scale * v for v in y], level=level)
    if res is None:
        return None
    d = np.subtract(x, y) * scale
    res.update(sd=float(np.std(d, ddof=1)), level=level, seeds=seeds,
               left_out=sorted((set(fa) | set(fb)) - set(seeds)))
    return res


def resolve(label: str, best: str | None) -> str | None:
    return best if label == BEST else label


def primary_pairs(arms_by_task: dict, best: dict, design: Design = V2) -> list[tuple]:
    """[(task, id, kind, nsf label, baseline label, id of the earlier primary with the same runs or None)] of the
    declared primary list, in order (see :class:`Design` for what ``counted_once`` leaves out)."""
    out = []
    for t, arms in arms_by_task.items():
        seen = {}
        for pid, kind, n, b in design.primary:
            b = resolve(b, best.get(t))
            dup = None
            if design.counted_once:
                if n not in arms or b not in arms:
                    continue  # not planned on this task (or the best baseline not chosen yet)
                key = tuple(frozenset(r["run_id"] for r in arms[x].runs.get(1.0, {}).values()) if x in arms
                            else frozenset() for x in (n, b))
                dup = seen.get(key) if all(key) else None
                seen.setdefault(key, pid)
            out.append((t, pid, kind, n, b, dup))
    return out


def claim_c1_c2(arms_by_task: dict, best: dict, n_test: dict, design: Design = V2) -> dict:
    """Per claim ("C1", "C2"): rows of the primary comparisons with Holm-corrected CIs and verdicts, plus the
    secondary rows (CI only).  ``n_test``: test-set size per task (None: unknown, treated as small)."""
    out = {}
    for claim, key, scale in (("C1", "error", 100.0), ("C2", "loss", 1.0)):
        rows, dups = [], []
        for task, pid, kind, n, b, dup in primary_pairs(arms_by_task, best, design):
            arms = arms_by_task[task]
            res = compare(arms[n], arms[b], key, scale) if n in arms and b in arms else None
            row = {"task": task, "id": pid, "kind": kind, "nsf": n, "base": b, "res": res}
            (dups if dup else rows).append({**row, "same_as": dup} if dup else row)
        for h, row in zip(S.holm([r["res"]["p"] if r["res"] else None for r in rows]), rows):
            row["holm"] = h
            if row["res"]:
                arms = arms_by_task[row["task"]]
                row["res"] = compare(arms[row["nsf"]], arms[row["base"]], key, scale, level=h["level"])
            margin = None
            if claim == "C1":
                margin = 0.3 if (n_test.get(row["task"]) or 0) >= SMALL_TEST else 1.0
            row["margin"] = margin
            row["verdict"] = verdict_paired(row["res"], h, margin, small=claim == "C1" and margin > 0.3)
        for row in dups:  # counted once: the verdict of the earlier primary with the same runs
            first = next(r for r in rows if r["task"] == row["task"] and r["id"] == row["same_as"])
            row.update(holm=first["holm"], res=first["res"], margin=first["margin"],
                       verdict=f"= {row['same_as']} (same runs)")
        rows = sorted(rows + dups, key=lambda r: (list(arms_by_task).index(r["task"]), r["id"]))
        sec = []
        for task, arms in arms_by_task.items():
            for kind, n, b in design.secondary:
                if n in arms and b in arms:
                    sec.append({"task": task, "kind": kind, "nsf": n, "base": b,
                                "res": compare(arms[n], arms[b], key, scale)})
        out[claim] = {"rows": rows, "secondary": sec}
    return out


def verdict_paired(res: dict | None, holm: dict, margin: float | None, small: bool = False) -> str:
    """docs/evidence.md C1/C2: held if the Holm-corrected CI is below 0 (and Holm's step-down rejects); not held
    if it is above 0 or inside ±margin; else inconclusive.  ``small``: a test set that resolves >= 1-point
    effects only, so a held needs a mean improvement of at least the margin."""
    if res is None:
        return "no data"
    if res["hi"] < 0 and holm["reject"]:
        return "held" if not small or res["diff"] <= -margin else "inconclusive (< 1 point on a small test set)"
    if res["lo"] > 0 or (margin is not None and -margin < res["lo"] and res["hi"] < margin):
        return "not held"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------------------
# Power

def power_table(arms_by_task: dict, best: dict, n_test: dict, delta: float = 0.3, design: Design = V2) -> list[dict]:
    """Per task: the largest paired SD of test error (points) among the primary comparisons over the pilot's
    seeds, the seeds a ``delta``-point difference needs (80 % power, α 0.05, two-sided paired t), and the effect
    the pilot's seeds resolve; with ``counted_once`` (evidence3) also at Holm's first step, α / the family's
    size (``holm_m``: the primaries counted once, over every task)."""
    out = []
    m = sum(1 for *_, dup in primary_pairs(arms_by_task, best, design) if dup is None)
    for task in arms_by_task:
        sds = []
        for t, pid, _, n, b, _ in primary_pairs({task: arms_by_task[task]}, best, design):
            arms = arms_by_task[task]
            r = compare(arms[n], arms[b], "error", 100.0, seeds=PILOT) if n in arms and b in arms else None
            if r is not None:
                sds.append((r["sd"], pid, r["n"]))
        if not sds:
            continue
        sd, pid, n = max(sds)
        out.append({"task": task, "sd": sd, "from": pid, "n": n, "need": S.seeds_for_paired(sd, delta),
                    "need_1pt": S.seeds_for_paired(sd, 1.0),
                    "delta": delta, "resolvable": S.resolvable_effect(sd, n), "n_test": n_test.get(task),
                    "z_formula": math.ceil(((1.959964 + 0.841621) * sd / delta) ** 2)})
        if design.counted_once:
            out[-1].update(holm_m=m, resolvable_holm=S.resolvable_effect(sd, n, alpha=ALPHA / m),
                           need_holm=S.seeds_for_paired(sd, delta, alpha=ALPHA / m))
    return out


# ----------------------------------------------------------------------------------------------------------
# C3: time to target

def first_budget(means, target: float, budgets) -> float:
    """First budget at which the piecewise-linear mean-accuracy-vs-budget curve reaches ``target``: the
    smallest budget if it already does there (a censored value: "at most"), inf if never."""
    for i, (b, m) in enumerate(zip(budgets, means)):
        if m >= target - 1e-12:
            if i == 0:
                return float(b)
            b0, m0 = budgets[i - 1], means[i - 1]
            return float(b0 + (target - m0) / (m - m0) * (b - b0))
    return math.inf


def time_to_target(nsf: Arm, base: Arm, level: float = 0.95, n_boot: int = 2000) -> dict | None:
    """C3 for one task: target = the baseline's full-budget mean test accuracy; step ratio = NSF's first budget
    reaching it / the baseline's; reverse = the baseline's first budget reaching NSF's full-budget mean accuracy
    / NSF's.  Over the budgets both arms ran (1 and at least one less); bootstrap CIs resample seeds jointly
    over both arms and all budgets.  None without budget runs or with fewer than two common seeds."""
    budgets = tuple(sorted(b for b in set(nsf.runs) & set(base.runs) if nsf.runs[b] and base.runs[b]))
    if len(budgets) < 2 or budgets[-1] != 1.0:
        return None
    seeds = sorted(set.intersection(*(set(a.runs[b]) for a in (nsf, base) for b in budgets)))
    if len(seeds) < 2:
        return None
    A, B = (np.array([[1.0 - a.runs[b][s]["final"]["error"] for b in budgets] for s in seeds]) for a in (nsf, base))

    def ratio(a, b):
        tgt = b[:, -1].mean()
        return first_budget(a.mean(0), tgt, budgets) / first_budget(b.mean(0), tgt, budgets)

    fwd = S.bootstrap_paired(ratio, A, B, level=level, n_boot=n_boot)
    rev = S.bootstrap_paired(lambda a, b: ratio(b, a), A, B, level=level, n_boot=n_boot)
    target = float(B[:, -1].mean())
    verdict = verdict_ttt(fwd[1], fwd[2])
    if A[:, 0].mean() >= target and B[:, 0].mean() >= target:  # a ratio of "at most" over "at most": censored
        verdict = f"inconclusive (both reach the target at the smallest budget run, {budgets[0]:g})"
    return {"seeds": seeds, "budgets": budgets, "level": level, "target": target,
            "acc": {"nsf": A, "base": B}, "ratio": fwd[:3], "reverse": rev[:3], "verdict": verdict}


def verdict_ttt(lo: float, hi: float) -> str:
    """docs/evidence.md C3: held if the CI of NSF's step ratio is <= 0.25; not held if its lower end is > 0.5."""
    if math.isnan(lo):
        return "no data"
    return "held" if hi <= 0.25 else "not held" if lo > 0.5 else "inconclusive"


# ----------------------------------------------------------------------------------------------------------
# C4: early alignment

def acc_at(xs, accs, level: float):
    """Accuracy where a decreasing quantity ``xs`` (a loss on the eval grid) first reaches ``level``, linearly
    interpolated between the eval points around the crossing; None if it never does or starts below it."""
    prev = None
    for x, a in zip(xs, accs):
        if x is None or a is None or not math.isfinite(x):
            return None
        if x <= level:
            if prev is None:
                return None
            (x0, a0) = prev
            return a0 + (a - a0) * (x0 - level) / (x0 - x) if x0 != x else a
        prev = (x, a)
    return None


def matched_levels(curves: list[dict], key: str, n: int = 3) -> list[float]:
    """``n`` loss levels (log-spaced, at ¼, ½, ¾) inside the range every curve passes through; [] if none."""
    firsts = [c[key][0] for c in curves if c[key] and c[key][0] is not None]
    mins = [min(v for v in c[key] if v is not None) for c in curves if any(v is not None for v in c[key])]
    if len(firsts) < len(curves) or len(mins) < len(curves) or not curves:
        return []
    hi, lo = min(firsts), max(mins)
    if not (0 < lo < hi):
        return []
    return [float(math.exp(math.log(hi) + f * (math.log(lo) - math.log(hi)))) for f in np.linspace(0, 1, n + 2)[1:-1]]


def alignment(nsf: Arm, base: Arm, curves_of, level: float = 0.95) -> dict | None:
    """C4 for one pair: per seed, the mean over matched levels of (NSF − baseline) accuracy at matched training
    loss and at matched test loss (temperature-scaled where the curves record it: ``out["test_key"]``), and the
    mean accuracy difference over the eval points of the first 20 % of the run; paired t CIs in points.
    ``curves_of(record) -> curves``."""
    fa, fb = nsf.runs.get(1.0, {}), base.runs.get(1.0, {})
    seeds = sorted(s for s in fa if s in fb and not fa[s]["final"].get("diverged")
                   and not fb[s]["final"].get("diverged"))
    if len(seeds) < 2:
        return None
    ca, cb = {s: curves_of(fa[s]) for s in seeds}, {s: curves_of(fb[s]) for s in seeds}
    out = {"seeds": seeds, "level": level}
    # the temperature-scaled test loss where every curve has it (runs since amendment 13), else the raw one
    scaled = all(any(v is not None for v in c.get("loss_ts", [])) for c in [*ca.values(), *cb.values()])
    out["test_key"] = "loss_ts" if scaled else "loss"
    for name, key in (("train", "train_loss"), ("test", out["test_key"])):
        levels = matched_levels(list(ca.values()) + list(cb.values()), key)
        per_seed = {}
        for s in seeds:
            d = [acc_at(ca[s][key], ca[s]["acc"], v) for v in levels] + [acc_at(cb[s][key], cb[s]["acc"], v)
                                                                         for v in levels]
            if levels and all(x is not None for x in d):
                k = len(levels)
                per_seed[s] = 100.0 * float(np.mean(np.subtract(d[:k], d[k:])))
        r = S.paired(list(per_seed.values()), [0.0] * len(per_seed), level=level)
        out[name] = {"levels": levels, "per_seed": per_seed, "res": r}
    early = {}
    for s in seeds:
        idx = [i for i, f in enumerate(ca[s]["frac"]) if f <= EARLY_FRAC + 1e-9]
        if idx and len(cb[s]["acc"]) > idx[-1]:
            early[s] = 100.0 * float(np.mean([ca[s]["acc"][i] - cb[s]["acc"][i] for i in idx]))
    out["early"] = {"per_seed": early, "res": S.paired(list(early.values()), [0.0] * len(early), level=level)}
    return out


def claim_c4(arms_by_task: dict, best: dict, curves_of, design: Design = V2) -> dict:
    """C4 rows for the primary pairs (Holm across them, per measure; counted once) and the negative control."""
    rows, control = [], {}
    for task, pid, kind, n, b, dup in primary_pairs(arms_by_task, best, design):
        arms = arms_by_task[task]
        if dup:
            continue
        rows.append({"task": task, "id": pid, "kind": kind, "nsf": n, "base": b,
                     "res": alignment(arms[n], arms[b], curves_of) if n in arms and b in arms else None})
    for task, arms in arms_by_task.items():
        if all(k in arms for k in design.control):
            control[task] = alignment(arms[design.control[0]], arms[design.control[1]], curves_of)
    for name in ("train", "test"):
        ps = [r["res"][name]["res"]["p"] if r["res"] and r["res"][name]["res"] else None for r in rows]
        for h, row in zip(S.holm(ps), rows):
            row.setdefault("holm", {})[name] = h
            if row["res"] and row["res"][name]["res"]:
                vals = list(row["res"][name]["per_seed"].values())
                row["res"][name]["res"] = S.paired(vals, [0.0] * len(vals), level=h["level"])
    for row in rows:
        row["verdict"] = verdict_c4(row["res"], control.get(row["task"]), row.get("holm", {}))
    return {"rows": rows, "control": control}


def verdict_c4(res: dict | None, control: dict | None, holm: dict) -> str:
    """docs/evidence.md C4: held if NSF's accuracy at matched training and test loss both exceed the baseline's
    (Holm-corrected paired CIs above 0) while Adam vs AdamW shows no such difference (its CIs contain 0); not held
    if either CI lies below 0; else inconclusive."""
    if res is None or not all(res[k]["res"] for k in ("train", "test")):
        return "no data"
    r = [res[k]["res"] for k in ("train", "test")]
    if any(x["hi"] < 0 for x in r):
        return "not held"
    if all(x["lo"] > 0 for x in r) and all(holm.get(k, {}).get("reject") for k in ("train", "test")):
        if control is None or not all(control[k]["res"] for k in ("train", "test")):
            return "inconclusive (no negative control)"
        c = [control[k]["res"] for k in ("train", "test")]
        return "held" if all(x["lo"] <= 0 <= x["hi"] for x in c) else "inconclusive (control differs too)"
    return "inconclusive"

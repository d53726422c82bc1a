"""Planning: which runs a suite needs, given the runs already finished, and the decisions it took.

Every decision (chosen LR, search winner) is a pure function of ``runs.jsonl``: the driver calls
:meth:`Planner.plan` until it returns nothing, then writes :meth:`Planner.decisions` to ``decisions.json``,
which ``nsf report`` reads (:class:`Decided`) instead of planning again.

Protocol "evidence" (docs/evidence.md) plans three kinds of arm per task: *tuned* (each its own LR search),
*tied* (seeds only, at an LR derived from another arm's chosen LR on the same task) and *one-shot* (seeds only, at
a fixed LR); and, for NSF default and the task's best baseline (lowest mean validation loss among the baselines
at their chosen LRs), an LR re-tuned at each budget, then seeds at it.  Every record's meta has ``label`` and
``arm`` (the kind; "search" for the search's runs).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys

from nsf_lab.experiment.tuner import INF, Grid, LRTuner, ref_lr, score
from nsf.registry import parse_spec, spec_to_str

from nsf_lab.experiment.store import RunStore, make_config, run_id
from .suites import Suite, arm_grid, get_suite
from nsf_lab.experiment.tasks import get_task

DECISIONS_VERSION = 1


def spec_key(spec) -> str:
    return json.dumps(parse_spec(spec), sort_keys=True)


def is_text(task: str) -> bool:
    return get_task(task).dataset == "shakespeare"


def failed(rec: dict | None) -> bool:
    return rec is not None and bool(rec["final"].get("failed"))


def summary(recs: list[dict]) -> dict:
    """Mean validation error and loss (and loss at the fitted temperature, where recorded) over the tuning seeds'
    records (diverged or failed: error 1, loss inf)."""
    bad = [score(r)[0] != 0 for r in recs]
    err = [1.0 if b else r["final"]["error"] for r, b in zip(recs, bad)]
    loss = [INF if b else r["final"]["loss"] for r, b in zip(recs, bad)]
    out = {"error": sum(err) / len(err), "loss": sum(loss) / len(loss), "diverged": any(bad)}
    if all("loss_ts" in r["final"] for r in recs):  # runs since evidence v3
        out["loss_ts"] = sum(INF if b else r["final"]["loss_ts"] for r, b in zip(recs, bad)) / len(recs)
    return out


def eval_size(task: str, split: str, data_root: str | None = None) -> int:
    """Predictions an evaluation on ``split`` averages over: the split's examples, or for text the evaluated
    characters (windows × sequence length)."""
    from nsf_lab.experiment.data import prepared
    t = get_task(task)
    ds = prepared(t.dataset, split, t.val_frac, "cpu", data_root, t.train_subset)
    return t.windows(split) * t.seq_len if ds.kind == "text" else len(ds.y_test)


class Planner:
    def __init__(self, suite: Suite | str, store: RunStore, retry_failed: bool = False, data_root: str | None = None,
                 announce: bool = False):
        """``retry_failed``: runs recorded as failed before now are planned again (once: a run that fails
        again in this session is final, so the sweep goes on).  ``data_root``: where user-supplied data live
        (rule "full" reads the validation set's size for its one-sample flag).  ``announce``: print (stderr)
        the estimated total number of runs once the search is decided."""
        self.announce = announce
        self._memo: dict = {}
        self._ids: dict[int, tuple[dict, str]] = {}
        self.suite = get_suite(suite) if isinstance(suite, str) else suite
        self.store = store
        self.data_root = data_root
        self._resolution: dict[str, float | None] = {}
        self._by_id = store.records()
        self._stale = {rid: r for rid, r in self._by_id.items() if failed(r)} if retry_failed else {}

    def _get(self, rid: str) -> dict | None:
        r = self._by_id.get(rid)
        return None if r is not None and self._stale.get(rid) is r else r

    def rec(self, config: dict) -> dict | None:
        """The finished record of ``config``; its run id is hashed once per config object (the planner's configs
        are memoised and never mutated, and the whole plan is recomputed after every finished run)."""
        hit = self._ids.get(id(config))
        if hit is None or hit[0] is not config:
            hit = self._ids[id(config)] = (config, run_id(config))  # the config is kept: its id is not reused
        return self._get(hit[1])

    # -- LR tuning -----------------------------------------------------------------------------------------
    def criterion(self, task: str) -> str:
        c = self.suite.criterion
        return ("loss" if is_text(task) else "error") if c == "auto" else c

    def resolution(self, task: str) -> float | None:
        """One validation sample of the error (rule "full" with criterion error only; None otherwise)."""
        if self.suite.rule != "full" or self.criterion(task) != "error":
            return None
        return self.one_sample(task)

    def one_sample(self, task: str) -> float:
        """1 / the number of predictions the validation error is a mean of (:func:`eval_size`)."""
        if task not in self._resolution:
            self._resolution[task] = 1.0 / eval_size(task, "val", self.data_root)
        return self._resolution[task]

    # -- memoised pure functions (checking a spec builds an optimizer: too slow to repeat in every plan) -------
    def _cached(self, f, *args):
        k = (f.__name__,) + tuple(a if isinstance(a, (str, int, float)) else json.dumps(a, sort_keys=True)
                                  for a in args)  # numbers as themselves: each function takes floats as floats
        if k not in self._memo:
            self._memo[k] = f(*args)
        return self._memo[k]

    def parse(self, spec) -> dict:
        return copy.deepcopy(self._cached(parse_spec, spec))

    def config(self, task: str, spec, lr: float, seed: int, budget: float, split: str) -> dict:
        """:func:`make_config` (the planner never mutates a config; :meth:`plan` hands out copies)."""
        return self._cached(make_config, task, spec, lr, seed, budget, split)

    def tuner(self, task: str, spec) -> LRTuner:
        s = self.suite
        ref = self._cached(ref_lr, spec)
        return LRTuner(ref, arm_grid(ref, s.grid_span), rule=s.rule, seeds=s.tune_seeds, max_points=s.max_points,
                       resolution=self.resolution(task))

    def tune(self, task: str, spec, budget: float = 1.0):
        """(configs still needed, Decision or None while unfinished, {lr: tuning records} of the decision)."""
        spec = self.parse(spec)
        tuner, crit = self.tuner(task, spec), self.criterion(task)
        scores, recs = {}, {}
        while True:
            todo = []
            for lr in tuner.pending(scores):
                cfgs = [self.config(task, spec, lr, s, budget, "val") for s in tuner.seeds]
                got = [self.rec(c) for c in cfgs]
                todo += [c for c, r in zip(cfgs, got) if r is None]
                if all(r is not None for r in got):
                    scores[lr], recs[lr] = [score(r, crit) for r in got], got
            if todo:
                return todo, None, {}
            if not tuner.pending(scores):
                d = tuner.decide(scores)
                return [], d, {lr: recs[lr] for lr in d.scores}

    def chosen_lr(self, task: str, spec) -> float | None:
        _, d, _ = self.tune(task, spec)
        return None if d is None else d.lr

    # -- default search ------------------------------------------------------------------------------------
    def _search_rows(self, specs) -> tuple[list[dict], list[dict]]:
        todo, rows = [], []
        for spec in specs:
            per_task, complete = [], True
            for task in self.suite.search.tasks:
                t, d, recs = self.tune(task, spec)
                todo += t
                if d is None:
                    complete = False
                    continue
                per_task.append({"task": task, "lr": d.lr, "score": d.scores[d.lr][1], **summary(recs[d.lr])})
            if complete:
                n = len(per_task)
                rows.append({"spec": spec, "error": sum(p["error"] for p in per_task) / n,
                             "loss": sum(p["loss"] for p in per_task) / n, "per_task": per_task})
        return todo, rows

    def _relative(self, rows: list[dict]) -> list[dict]:
        """Search score "relative": each row's mean over tasks of its tuned score / the best row's on that task."""
        if self.suite.search.score == "relative" and rows:
            best = {p["task"]: min(q["score"] for r in rows for q in r["per_task"] if q["task"] == p["task"])
                    for p in rows[0]["per_task"]}
            for r in rows:
                r["relative"] = sum(p["score"] / best[p["task"]] for p in r["per_task"]) / len(r["per_task"])
        return rows

    def search(self) -> tuple[list[dict], dict | None]:
        """(todo, details or None while unfinished): stage A and B rows, their winners."""
        s = self.suite.search
        best = lambda rows: min(rows, key=s.rank)["spec"]
        todo, rows_a = self._search_rows(s.stage_a)
        if todo:
            return todo, None
        win_a = best(self._relative(rows_a))
        todo, rows_b = self._search_rows(s.stage_b(copy.deepcopy(win_a)))
        if todo:
            return todo, None
        seen, rows = set(), []
        for r in rows_a + rows_b:
            if spec_key(r["spec"]) not in seen:
                seen.add(spec_key(r["spec"]))
                rows.append(r)
        return [], {"stage_a": rows_a, "stage_b": rows_b, "winner_a": win_a, "winner": best(self._relative(rows))}

    # -- optimizer list ------------------------------------------------------------------------------------
    def optimizers(self) -> tuple[list[dict], list[tuple[str, dict]] | None]:
        """(todo, [(label, spec)]) -- the list is None until the default is known."""
        if self.suite.search is not None:
            todo, det = self.search()
            if det is None:
                return todo, None
        own = self.suite.search.label if self.suite.search is not None else None
        default = det["winner"] if self.suite.search is not None and own is None else parse_spec(self.suite.default)
        opts = [(label, parse_spec(s)) for label, s in self.suite.baselines]
        opts.append(("NSF default", default))
        if own is not None:  # the search chose an arm of its own (evidence3: the raw signed-p cycle)
            opts.append((own, det["winner"]))
        p = default.get("p")
        if self.suite.ablations and isinstance(p, dict) and p.get("type") == "cyclic":
            scale = default.get("scale", "raw")
            fixed = self.suite.fixed_p or {p["low"], 0.5 * (p["low"] + p["high"]), p["high"]}
            for v in sorted(fixed):
                v = round(v, 6)
                opts.append((f"NSF fixed p={v:g} ({scale})", {**{k: x for k, x in default.items() if k != "p"},
                                                                 "p": v}))
            for sc in ("raw", "sgd", "adam"):
                if self.suite.protocol == "evidence" and sc == scale:
                    continue  # the evidence protocol's "other two scales"; the winner's own is NSF default
                opts.append((f"NSF cyclic {sc}", {**default, "scale": sc}))
        opts += [(label, parse_spec(s)) for label, s in self.suite.extra]
        return [], opts

    def budgets(self, label: str) -> list[float]:
        return [1.0] + (list(self.suite.budgets) if label == "NSF default" else [])

    # -- whole plan ----------------------------------------------------------------------------------------
    def plan(self, until: str | None = None) -> list[tuple[dict, dict]]:
        """Runs that can be started now (their prerequisites are finished), with metadata, in priority order:
        the search, then task by task in the suite's order, tuning before seeds.  ``until="tuned"``: only the
        validation-side runs (search, LR tuning, references), i.e. the sweep stops once every choice is made."""
        if until not in (None, "tuned"):
            raise ValueError(f"until must be None or 'tuned', got {until!r}")
        out = []
        todo, opts = self.optimizers()
        evidence = self.suite.protocol in ("evidence", "evidence3")
        tag = (lambda c: {"label": spec_to_str(c["optimizer"]), "arm": "search"}) if evidence else (lambda c: {})
        out += [(c, {"stage": "search", **tag(c)}) for c in todo]
        if evidence and opts is not None:
            self._announce()
            for task in self.suite.tasks:
                out += self.protocol_task(task, self.arms(opts))[0]
        for task in self.suite.tasks if opts is not None and not evidence else []:
            for label, spec in opts:
                todo, d, _ = self.tune(task, spec)
                if d is None:
                    out += [(c, {"stage": "tune", "label": label}) for c in todo]
                    continue
                for b in self.budgets(label):
                    for seed in self.suite.seeds:
                        c = self.config(task, spec, d.lr, seed, b, "test")
                        if self.rec(c) is None:
                            out.append((c, {"stage": "seeds" if b == 1.0 else "budget", "label": label}))
        order = {t: i for i, t in enumerate(self.suite.search.tasks if self.suite.search else [])}
        order.update({t: len(order) + i for i, t in enumerate(self.suite.tasks)})
        out.sort(key=lambda cm: (cm[1]["stage"] != "search", order.get(cm[0]["task"], 99), cm[1]["stage"] != "tune"))
        return self._unique([cm for cm in out if until is None or cm[0]["split"] == "val"])

    # -- protocol "evidence" -------------------------------------------------------------------------------
    def arms(self, opts: list[tuple[str, dict]]) -> list[dict]:
        """Every arm: {"label", "kind", "spec"}; a tied arm also has "base" (the arm whose chosen LR it takes on
        the same task) and "decades" (the shift of that LR: +1 = 10x), a one-shot arm its fixed "lr"."""
        if self.suite.protocol == "evidence3":
            from .evidence3 import arms
            return arms(self, opts)
        w = dict(opts)["NSF default"]
        out = [{"label": label, "kind": "tuned", "spec": spec} for label, spec in opts]
        raw = {"name": "nsf", "p": {**w["p"], "low": 0.25, "high": 0.5}, "scale": "raw"}
        out += [{"label": label, "kind": "tied", "spec": self.parse(spec), "base": base, "decades": k}
                for label, spec, base, k in [("NSF-adam tied", {**w, "scale": "adam"}, "Adam", 0),
                                             ("NSF-sgd tied", {**w, "scale": "sgd"}, "SGD-M", 1),
                                             ("NSF-raw[1/4,1/2] tied", raw, "Adam", 0)]]
        out += [{"label": label, "kind": "one-shot", "spec": self.parse(spec), "lr": lr}
                for label, spec, lr in [("Adam 1e-3", "adam", 1e-3), ("NSF-adam 1e-3", {**w, "scale": "adam"}, 1e-3),
                                        ("SGD-M 0.1", "sgd", 0.1), ("NSF-sgd 1.0", {**w, "scale": "sgd"}, 1.0)]]
        return out

    def best_baseline(self, dec: dict) -> str | None:
        """The baseline with the lowest mean validation loss (error breaks ties) at its chosen LR; None until
        every baseline is tuned."""
        labels = [label for label, _ in self.suite.baselines]
        if not labels or any(label not in dec for label in labels):
            return None
        return min(labels, key=lambda label: (dec[label]["val"]["loss"], dec[label]["val"]["error"]))

    def protocol_task(self, task: str, arms: list[dict]) -> tuple[list, dict, str | None]:
        """:meth:`evidence_task`, or its evidence3 form (seed agreement, runner-up LRs, reference runs)."""
        if self.suite.protocol == "evidence3":
            from .evidence3 import plan_task
            return plan_task(self, task, arms)
        return self.evidence_task(task, arms)

    def tied_lr(self, lr: float, decades: float) -> float:
        """``lr`` shifted by ``decades`` on the grid's lattice (one exact float per LR)."""
        g = Grid.default()
        return g.at(g.fine(lr) + round(decades / (g.step / 2)))

    def evidence_task(self, task: str, arms: list[dict]) -> tuple[list, dict, str | None]:
        """(runs that can start now with meta, {label: decision}, best baseline or None) on one task.  A decision
        is {"kind", "lr", "flags", "tried"} (+ "val": the tuned LR's validation summary, "derived": how a tied
        arm's LR was found, "budgets": {str(budget): {"lr", "flags", "tried"}} for the re-tuned budgets)."""
        todo, dec, spec_of = [], {}, {}
        for a in arms:
            label, m = a["label"], {"label": a["label"], "arm": a["kind"]}
            spec_of[label] = (a["spec"], m)
            if a["kind"] == "tuned":
                t, d, recs = self.tune(task, a["spec"])
                todo += [(c, {"stage": "tune", **m}) for c in t]
                if d is not None:
                    dec[label] = {"kind": "tuned", "lr": d.lr, "flags": d.flags, "val": summary(recs[d.lr]),
                                  "tried": [[lr, summary(r)] for lr, r in sorted(recs.items())]}
            elif a["kind"] == "tied" and a["base"] in dec:
                lr = self.tied_lr(dec[a["base"]]["lr"], a["decades"])
                dec[label] = {"kind": "tied", "lr": lr, "flags": [], "tried": [],
                              "derived": f"{10 ** a['decades']:g} x {a['base']}'s chosen lr"}
                if "decay_per_run" in a:  # evidence3's control: a weight decay stated per run at this lr
                    from .evidence3 import decayed
                    spec_of[label] = (decayed(self, task, a["spec"], lr, a["decay_per_run"]), m)
                    dec[label]["spec"] = spec_of[label][0]
            elif a["kind"] == "one-shot":
                dec[label] = {"kind": "one-shot", "lr": a["lr"], "flags": [], "tried": []}
        best = self.best_baseline(dec)
        for label in ["NSF default"] + ([best] if best else []):
            if label not in dec:
                continue
            spec, m = spec_of[label]
            dec[label]["budgets"] = {}
            for b in self.suite.budgets:
                t, d, recs = self.tune(task, spec, b)
                todo += [(c, {"stage": "tune", "budget": b, **m}) for c in t]
                if d is not None:
                    dec[label]["budgets"][str(float(b))] = {
                        "lr": d.lr, "flags": d.flags, "tried": [[lr, summary(r)] for lr, r in sorted(recs.items())]}
        for label, d in dec.items():
            spec, m = spec_of[label]
            lrs = [(1.0, d["lr"])] + [(float(b), x["lr"]) for b, x in d.get("budgets", {}).items()]
            for b, lr in lrs:
                for seed in self.suite.seeds:
                    c = self.config(task, spec, lr, seed, b, "test")
                    if self.rec(c) is None:
                        todo.append((c, {"stage": "seeds" if b == 1.0 else "budget", **m}))
        return todo, dec, best

    def _flag_one_sample(self, task: str, d: dict) -> None:
        """Criterion "loss": flag "within-one-sample" when the runner-up LR (by validation loss) has a mean
        validation error within one validation sample of the chosen LR's (the error cannot tell them apart)."""
        tried = sorted(d["tried"], key=lambda t: (t[1]["loss"], t[1]["error"]))
        if len(tried) > 1 and abs(tried[1][1]["error"] - tried[0][1]["error"]) <= self.one_sample(task) + 1e-12:
            d["flags"] = d["flags"] + ["within-one-sample"]

    def _announce(self) -> None:
        if self.announce and not getattr(self, "_announced", False):
            self._announced = True
            n = dry_run(self.suite, self.store)
            print(f"{self.suite.name}: search decided; about {n['total']} runs in all ({n['done']} done; estimate: "
                  f"every remaining LR search ends at its first bracket)", file=sys.stderr)

    def _unique(self, items):
        seen, out = set(), []
        for c, m in items:
            rid = run_id(c)
            if rid not in seen and self._get(rid) is None:
                seen.add(rid)
                out.append((copy.deepcopy(c), {**m, "suite": self.suite.name}))
        return out

    # -- decisions -----------------------------------------------------------------------------------------
    def decisions(self) -> dict:
        """Everything the sweep decided, for ``decisions.json`` (complete once :meth:`plan` is empty)."""
        out = {"version": DECISIONS_VERSION, "suite": self.suite.name, "complete": not self.plan(),
               "search": None, "arms": None, "tuning": {}}
        if self.suite.search is not None:
            out["search"] = self.search()[1]
        _, opts = self.optimizers()
        if opts is None:
            return out
        if self.suite.protocol in ("evidence", "evidence3"):
            arms = self.arms(opts)
            out["arms"] = [[a["label"], a["spec"]] for a in arms]
            out["arm_kinds"] = {a["label"]: a["kind"] for a in arms}
            out["best_baseline"] = {}
            for task in self.suite.tasks:
                _, out["tuning"][task], out["best_baseline"][task] = self.protocol_task(task, arms)
                if self.criterion(task) == "loss":
                    for d in out["tuning"][task].values():
                        for x in [d, *d.get("budgets", {}).values()]:
                            self._flag_one_sample(task, x)
            return out
        out["arms"] = [[label, spec] for label, spec in opts]
        for task in self.suite.tasks:
            out["tuning"][task] = tt = {}
            for label, spec in opts:
                _, d, recs = self.tune(task, spec)
                if d is not None:
                    tt[label] = {"lr": d.lr, "flags": d.flags,
                                 "tried": [[lr, summary(r)] for lr, r in sorted(recs.items())]}
        return out


class Decided:
    """Read side of a sweep for the report: the recorded decisions plus the finished runs they point to."""

    def __init__(self, suite: Suite, store: RunStore, decisions: dict):
        self.suite, self.store, self.d = suite, store, decisions
        self._by_id = store.records()

    def optimizers(self) -> list[tuple[str, dict]]:
        return [(label, spec) for label, spec in self.d.get("arms") or []]

    def search(self) -> dict | None:
        return self.d.get("search")

    def tuning(self, task: str, label: str) -> dict | None:
        return self.d["tuning"].get(task, {}).get(label)

    def final_runs(self, task: str, label: str, spec, budget: float = 1.0, lr: float | None = None) -> list[dict]:
        """The finished, not failed, test runs of an arm at its chosen LR (or at ``lr``: evidence3's runner-up)."""
        t = self.tuning(task, label)
        if t is not None and budget != 1.0 and "budgets" in t:  # protocol "evidence": LR re-tuned per budget
            t = t["budgets"].get(str(float(budget)))
        if t is None:
            return []
        spec = t.get("spec", spec)  # an arm whose spec depends on the task (evidence3's control)
        lr = t["lr"] if lr is None else lr
        recs = [self._by_id.get(run_id(make_config(task, spec, lr, s, budget, "test"))) for s in self.suite.seeds]
        return [r for r in recs if r is not None and not failed(r)]


# ----------------------------------------------------------------------------------------------------------
# Dry runs: how many runs a suite plans

class MemoryStore:
    """A run store in memory (dry runs): ``records()`` and ``add()`` as :class:`RunStore`."""

    def __init__(self, records: dict | None = None):
        self._records = dict(records or {})

    def records(self) -> dict:
        return self._records

    def add(self, record: dict, curves: dict | None = None) -> None:
        self._records[record["run_id"]] = record


def synthetic_final(config: dict) -> dict:
    """A made-up result: a bowl in log-LR centred on the arm's reference LR (so a "full" LR search ends at its
    first bracket), offset per spec (so search candidates differ)."""
    spec = config["optimizer"]
    h = int(hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:6], 16) / 16 ** 6
    loss = 0.5 + 0.1 * math.log10(config["lr"] / ref_lr(spec)) ** 2 + 0.01 * h
    return {"loss": loss, "loss_ts": loss, "error": loss / 5, "diverged": False, "steps": 1}


def dry_run(suite: Suite | str, store: RunStore | None = None, final=synthetic_final) -> dict[str, int]:
    """Plan a whole suite as if every run not in ``store`` finished with ``final(config)``: the number of runs
    per stage, "done" (already in ``store``) and "total"."""
    mem = MemoryStore(store.records() if store is not None else None)
    counts = {"done": len(mem.records())}
    planner = Planner(suite, mem)
    while todo := planner.plan():
        for c, m in todo:
            mem.add({"run_id": run_id(c), "config": c, "final": final(c), **m})
            counts[m["stage"]] = counts.get(m["stage"], 0) + 1
    counts["total"] = len(mem.records())
    return counts

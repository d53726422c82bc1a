"""Planning: which runs a suite needs, given the runs already finished, and the decisions it took.

Every decision (chosen LR, search winner) is a pure function of ``runs.jsonl``: the driver calls
:meth:`Planner.plan` until it returns nothing, then writes :meth:`Planner.decisions` to ``decisions.json``,
which ``nsf report`` reads (:class:`Decided`) instead of planning again.
"""
from __future__ import annotations

import copy
import json

from nsf.experiment.tuner import INF, Grid, LRTuner, ref_lr, score
from nsf.registry import parse_spec

from nsf.experiment.store import RunStore, make_config, run_id
from .suites import Suite, get_suite
from nsf.experiment.tasks import get_task

DECISIONS_VERSION = 1


def spec_key(spec) -> str:
    return json.dumps(parse_spec(spec), sort_keys=True)


def is_text(task: str) -> bool:
    return get_task(task).dataset == "shakespeare"


def failed(rec: dict | None) -> bool:
    return rec is not None and bool(rec["final"].get("failed"))


def summary(recs: list[dict]) -> dict:
    """Mean validation error and loss over the tuning seeds' records (diverged or failed: error 1, loss inf)."""
    bad = [score(r)[0] != 0 for r in recs]
    err = [1.0 if b else r["final"]["error"] for r, b in zip(recs, bad)]
    loss = [INF if b else r["final"]["loss"] for r, b in zip(recs, bad)]
    return {"error": sum(err) / len(err), "loss": sum(loss) / len(loss), "diverged": any(bad)}


class Planner:
    def __init__(self, suite: Suite | str, store: RunStore, retry_failed: bool = False, data_root: str | None = None):
        """``retry_failed``: runs recorded as failed before now are planned again (once: a run that fails
        again in this session is final, so the sweep goes on).  ``data_root``: where user-supplied data live
        (rule "full" reads the validation set's size for its one-sample flag)."""
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
        return self._get(run_id(config))

    # -- LR tuning -----------------------------------------------------------------------------------------
    def criterion(self, task: str) -> str:
        c = self.suite.criterion
        return ("loss" if is_text(task) else "error") if c == "auto" else c

    def resolution(self, task: str) -> float | None:
        """One validation sample of the error (rule "full" with criterion error only; None otherwise)."""
        if self.suite.rule != "full" or self.criterion(task) != "error":
            return None
        if task not in self._resolution:
            from nsf.experiment.data import prepared
            t = get_task(task)
            val = prepared(t.dataset, "val", t.val_frac, "cpu", self.data_root, t.train_subset)
            self._resolution[task] = 1.0 / len(val.y_test)
        return self._resolution[task]

    def tuner(self, task: str, spec) -> LRTuner:
        s = self.suite
        return LRTuner(ref_lr(spec), Grid.default(), rule=s.rule, seeds=s.tune_seeds, max_points=s.max_points,
                       resolution=self.resolution(task))

    def tune(self, task: str, spec):
        """(configs still needed, Decision or None while unfinished, {lr: tuning records} of the decision)."""
        spec = parse_spec(spec)
        tuner, crit = self.tuner(task, spec), self.criterion(task)
        scores, recs = {}, {}
        while True:
            todo = []
            for lr in tuner.pending(scores):
                cfgs = [make_config(task, spec, lr, s, 1.0, "val") for s in tuner.seeds]
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
                per_task.append({"task": task, "lr": d.lr, **summary(recs[d.lr])})
            if complete:
                n = len(per_task)
                rows.append({"spec": spec, "error": sum(p["error"] for p in per_task) / n,
                             "loss": sum(p["loss"] for p in per_task) / n, "per_task": per_task})
        return todo, rows

    def search(self) -> tuple[list[dict], dict | None]:
        """(todo, details or None while unfinished): stage A and B rows, their winners."""
        s = self.suite.search
        best = lambda rows: min(rows, key=lambda r: (r["error"], r["loss"]))["spec"]
        todo, rows_a = self._search_rows(s.stage_a)
        if todo:
            return todo, None
        win_a = best(rows_a)
        todo, rows_b = self._search_rows(s.stage_b(copy.deepcopy(win_a)))
        if todo:
            return todo, None
        seen, rows = set(), []
        for r in rows_a + rows_b:
            if spec_key(r["spec"]) not in seen:
                seen.add(spec_key(r["spec"]))
                rows.append(r)
        return [], {"stage_a": rows_a, "stage_b": rows_b, "winner_a": win_a, "winner": best(rows)}

    # -- optimizer list ------------------------------------------------------------------------------------
    def optimizers(self) -> tuple[list[dict], list[tuple[str, dict]] | None]:
        """(todo, [(label, spec)]) -- the list is None until the default is known."""
        if self.suite.search is not None:
            todo, det = self.search()
            if det is None:
                return todo, None
            default = det["winner"]
        else:
            default = parse_spec(self.suite.default)
        opts = [(label, parse_spec(s)) for label, s in self.suite.baselines]
        opts.append(("NSF default", default))
        p = default.get("p")
        if self.suite.ablations and isinstance(p, dict) and p.get("type") == "cyclic":
            scale = default.get("scale", "raw")
            for v in sorted({p["low"], 0.5 * (p["low"] + p["high"]), p["high"]}):
                v = round(v, 6)
                opts.append((f"NSF fixed p={v:g} ({scale})", {**{k: x for k, x in default.items() if k != "p"},
                                                                 "p": v}))
            for sc in ("raw", "sgd", "adam"):
                opts.append((f"NSF cyclic {sc}", {**default, "scale": sc}))
        opts += [(label, parse_spec(s)) for label, s in self.suite.extra]
        return [], opts

    def budgets(self, label: str) -> list[float]:
        return [1.0] + (list(self.suite.budgets) if label == "NSF default" else [])

    # -- whole plan ----------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[dict, dict]]:
        """Runs that can be started now (their prerequisites are finished), with metadata, in priority order:
        the search, then task by task in the suite's order, tuning before seeds."""
        out = []
        todo, opts = self.optimizers()
        out += [(c, {"stage": "search"}) for c in todo]
        for task in self.suite.tasks if opts is not None else []:
            for label, spec in opts:
                todo, d, _ = self.tune(task, spec)
                if d is None:
                    out += [(c, {"stage": "tune", "label": label}) for c in todo]
                    continue
                for b in self.budgets(label):
                    for seed in self.suite.seeds:
                        c = make_config(task, spec, d.lr, seed, b, "test")
                        if self.rec(c) is None:
                            out.append((c, {"stage": "seeds" if b == 1.0 else "budget", "label": label}))
        order = {t: i for i, t in enumerate(self.suite.search.tasks if self.suite.search else [])}
        order.update({t: len(order) + i for i, t in enumerate(self.suite.tasks)})
        out.sort(key=lambda cm: (cm[1]["stage"] != "search", order.get(cm[0]["task"], 99), cm[1]["stage"] != "tune"))
        return self._unique(out)

    def _unique(self, items):
        seen, out = set(), []
        for c, m in items:
            rid = run_id(c)
            if rid not in seen and self._get(rid) is None:
                seen.add(rid)
                out.append((c, {**m, "suite": self.suite.name}))
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

    def final_runs(self, task: str, label: str, spec, budget: float = 1.0) -> list[dict]:
        """The finished, not failed, test runs of an arm at its chosen LR."""
        t = self.tuning(task, label)
        if t is None:
            return []
        recs = [self._by_id.get(run_id(make_config(task, spec, t["lr"], s, budget, "test"))) for s in self.suite.seeds]
        return [r for r in recs if r is not None and not failed(r)]

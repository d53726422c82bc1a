"""Planning and selection: which runs a suite needs, given the runs already finished.

All decisions (chosen LR, search winner) are pure functions of ``runs.jsonl``; the bench command calls
:meth:`Planner.plan` until it returns nothing, and the report uses the same object to label the runs.
"""
from __future__ import annotations

import copy
import json

from nsf.registry import parse_spec

from .runner import RunStore, make_config, run_id
from .suites import LR_GRID, Search, Suite, _snap, get_suite, ref_lr
from nsf.experiment.tasks import get_task

INF = float("inf")


def score(rec: dict | None, text: bool = False) -> tuple:
    """Lower is better: (diverged, error, loss) -- for text tasks (diverged, loss, error)."""
    if rec is None:
        return (2, INF, INF)
    f = rec["final"]
    if f.get("diverged") or f.get("loss") is None:
        return (1, INF, INF)
    err, loss = f["error"], f["loss"]
    return (0, loss, err) if text else (0, err, loss)


def spec_key(spec) -> str:
    return json.dumps(parse_spec(spec), sort_keys=True)


def suite_to_dict(s: Suite) -> dict:
    import dataclasses
    return dataclasses.asdict(s)


def suite_from_dict(d: dict) -> Suite:
    d = dict(d)
    if d.get("search"):
        d["search"] = Search(**d["search"])
    return Suite(**d)


class Planner:
    def __init__(self, suite: Suite | str, store: RunStore):
        self.suite = get_suite(suite) if isinstance(suite, str) else suite
        self.store = store
        self._by_id = store.records()

    # -- single lookups ------------------------------------------------------------------------------------
    def rec(self, config: dict) -> dict | None:
        return self._by_id.get(run_id(config))

    def _is_text(self, task: str) -> bool:
        return get_task(task).dataset == "shakespeare"

    # -- LR walk -------------------------------------------------------------------------------------------
    def walk(self, task: str, spec) -> tuple[list[dict], int | None, dict]:
        """(configs still needed, chosen grid index or None while unfinished, {lr: record})."""
        spec = parse_spec(spec)
        text = self._is_text(task)
        cfg = lambda i: make_config(task, spec, LR_GRID[i], self.suite.tune_seed, 1.0, "val")
        start = _snap(ref_lr(spec))
        first = [i for i in (start - 1, start, start + 1) if 0 <= i < len(LR_GRID)]
        done = {}
        todo = []
        for i in first:
            r = self.rec(cfg(i))
            if r is None:
                todo.append(cfg(i))
            else:
                done[i] = r
        if todo:
            return todo, None, {}
        while True:
            best = min(sorted(done), key=lambda i: score(done[i], text))
            nxt = None
            if best == min(done) and best - 1 >= 0:
                nxt = best - 1
            elif best == max(done) and best + 1 < len(LR_GRID):
                nxt = best + 1
            if nxt is None or len(done) >= self.suite.max_walk:
                return [], best, {LR_GRID[i]: done[i] for i in sorted(done)}
            r = self.rec(cfg(nxt))
            if r is None:
                return [cfg(nxt)], None, {}
            done[nxt] = r

    # -- default search ------------------------------------------------------------------------------------
    def _search_scores(self, specs) -> tuple[list[dict], list[tuple]]:
        todo, rows = [], []
        for spec in specs:
            per_task, complete = [], True
            for task in self.suite.search.tasks:
                t, best, tried = self.walk(task, spec)
                todo += t
                if best is None:
                    complete = False
                    continue
                per_task.append((task, LR_GRID[best], score(tried[LR_GRID[best]], self._is_text(task))))
            if complete:
                errs = [s[2][1] if s[2][0] == 0 else 1.0 for s in per_task]
                losses = [s[2][2] if s[2][0] == 0 else INF for s in per_task]
                rows.append((sum(errs) / len(errs), sum(losses) / len(losses), spec, per_task))
        return todo, rows

    def search(self) -> tuple[list[dict], dict | None, dict]:
        """(todo, winner spec or None, details for the report)."""
        s = self.suite.search
        todo, rows_a = self._search_scores(s.stage_a)
        if todo:
            return todo, None, {}
        win_a = min(rows_a, key=lambda r: (r[0], r[1]))[2]
        stage_b = s.stage_b(copy.deepcopy(win_a))
        todo, rows_b = self._search_scores(stage_b)
        if todo:
            return todo, None, {}
        seen, rows = set(), []
        for r in rows_a + rows_b:
            k = spec_key(r[2])
            if k not in seen:
                seen.add(k)
                rows.append(r)
        win = min(rows, key=lambda r: (r[0], r[1]))[2]
        return [], win, {"stage_a": rows_a, "stage_b": rows_b, "winner_a": win_a, "winner": win}

    # -- optimizer list ------------------------------------------------------------------------------------
    def default_spec(self) -> tuple[list[dict], dict | None]:
        if self.suite.search is not None:
            todo, win, _ = self.search()
            return todo, win
        return [], parse_spec(self.suite.default)

    def optimizers(self) -> tuple[list[dict], list[tuple[str, dict]] | None]:
        """(todo, [(label, spec)]) -- the list is None until the default is known."""
        todo, default = self.default_spec()
        if default is None:
            return todo, None
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

    # -- whole plan ----------------------------------------------------------------------------------------
    def chosen_lr(self, task: str, spec) -> float | None:
        _, best, _ = self.walk(task, spec)
        return None if best is None else LR_GRID[best]

    def plan(self) -> list[tuple[dict, dict]]:
        """Runs that can be started now (their prerequisites are finished), with metadata."""
        out = []
        todo, opts = self.optimizers()
        out += [(c, {"stage": "search"}) for c in todo]
        if opts is None:
            return self._unique(out)
        for task in self.suite.tasks:
            for label, spec in opts:
                todo, best, _ = self.walk(task, spec)
                if best is None:
                    out += [(c, {"stage": "tune", "label": label}) for c in todo]
                    continue
                lr = LR_GRID[best]
                budgets = [1.0] + (list(self.suite.budgets) if label == "NSF default" else [])
                for b in budgets:
                    for seed in self.suite.seeds:
                        c = make_config(task, spec, lr, seed, b, "test")
                        if self.rec(c) is None:
                            out.append((c, {"stage": "seeds" if b == 1.0 else "budget", "label": label}))
        return self._unique(out)

    def _unique(self, items):
        seen, out = set(), []
        for c, m in items:
            rid = run_id(c)
            if rid not in seen and rid not in self._by_id:
                seen.add(rid)
                out.append((c, {**m, "suite": self.suite.name}))
        return out

    def final_runs(self, task: str, spec, budget: float = 1.0) -> list[dict]:
        lr = self.chosen_lr(task, spec)
        if lr is None:
            return []
        recs = [self.rec(make_config(task, spec, lr, s, budget, "test")) for s in self.suite.seeds]
        return [r for r in recs if r is not None]

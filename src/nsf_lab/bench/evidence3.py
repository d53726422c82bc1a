"""Planning of protocol "evidence3" (docs/evidence_v3.md): the evidence protocol's arms and runs, plus

- the paper's own form as a tuned arm (the suite's search picks its p range, validation only) and tied at Adam's LR;
- a C4 negative control: AdamW at Adam's chosen LR with a weight decay stated per run (not trivially null);
- the tuning seeds' agreement for every choice, and, where they disagree (winner and runner-up within the noise),
  the final seeds also at the runner-up LR for the arms the primaries use;
- a reference run per task: the best baseline at ``reference_budget`` times the budget (validation split, the
  tuning seeds), the level the task's convergence is judged against.

Pure functions of the finished runs, like the rest of :mod:`nsf_lab.bench.protocol`.
"""
from __future__ import annotations

from nsf_lab.experiment.tasks import get_task, lr_lambda
from nsf_lab.experiment.tuner import score

CONTROL = "AdamW control"    # the C4 negative control (tied to Adam's chosen LR)
CONTROL_DECAY = 1.0          # its decoupled weight decay shrinks the weights by e^-1 over a run (absent gradients)
ALT_BASES = ("Adam", "SGD-M")  # tuned arms whose LR the tied primaries take


def arms(planner, opts: list[tuple[str, dict]]) -> list[dict]:
    """Tuned: every option (baselines, NSF default, the search's raw signed-p arm); tied: NSF default and the raw
    arm at Adam's chosen LR, NSF-sgd (NSF default's cycle, SGD-M's step length) at 10x SGD-M's, the control at
    Adam's; one-shot (on ``suite.one_shot_tasks``): Adam and NSF default at 1e-3, SGD-M at 0.1, NSF-sgd at 1.0."""
    o = dict(opts)
    default, raw = o["NSF default"], o[planner.suite.search.label]
    sgd = planner.parse({**default, "scale": "sgd"})
    out = [{"label": label, "kind": "tuned", "spec": spec} for label, spec in opts]
    out += [{"label": label, "kind": "tied", "spec": planner.parse(spec), "base": base, "decades": k}
            for label, spec, base, k in [("NSF default tied", default, "Adam", 0),
                                         (f"{planner.suite.search.label} tied", raw, "Adam", 0),
                                         ("NSF-sgd tied", sgd, "SGD-M", 1), (CONTROL, "adamw", "Adam", 0)]]
    out[-1]["decay_per_run"] = CONTROL_DECAY
    out += [{"label": label, "kind": "one-shot", "spec": planner.parse(spec), "lr": lr}
            for label, spec, lr in [("Adam 1e-3", "adam", 1e-3), ("NSF default 1e-3", default, 1e-3),
                                    ("SGD-M 0.1", "sgd", 0.1), ("NSF-sgd 1.0", sgd, 1.0)]]
    return out


def run_steps(planner, task: str, budget: float = 1.0) -> int:
    """Optimizer steps of a run of ``task`` (its training rows: the split's training part)."""
    from nsf_lab.experiment.data import prepared
    t = get_task(task)
    ds = prepared(t.dataset, "test", t.val_frac, "cpu", planner.data_root, t.train_subset)
    return t.total_steps(len(ds.x_train) if ds.kind == "text" else len(ds.y_train), budget)


def decayed(planner, task: str, spec: dict, lr: float, decay: float) -> dict:
    """``spec`` with the weight decay λ that torch's decoupled rule (θ ← θ(1 − lr_t λ)) sums to ``decay`` over a
    run at base LR ``lr``: λ = decay / Σ_t lr_t (3 significant digits)."""
    total = run_steps(planner, task)
    f = lr_lambda(total, get_task(task).warmup)
    wd = decay / (lr * sum(f(s) for s in range(total)))
    return planner.parse({**spec, "weight_decay": float(f"{wd:.3g}")})


def agreement(planner, task: str, spec, budget: float = 1.0) -> dict | None:
    """Does every tuning seed rank the chosen LR ahead of the runner-up (the next best by mean score)?
    {"runner_up", "agree", "per_seed": [runner-up − chosen score per seed]}; None while undecided."""
    _, d, recs = planner.tune(task, spec, budget)
    if d is None or len(d.scores) < 2:
        return None
    runner = min((lr for lr in d.scores if lr != d.lr), key=lambda lr: d.scores[lr])
    crit = planner.criterion(task)
    per_seed = [score(b, crit)[1] - score(a, crit)[1] for a, b in zip(recs[d.lr], recs[runner])]
    return {"runner_up": runner, "agree": all(x >= 0 for x in per_seed), "per_seed": per_seed}


def plan_task(planner, task: str, arm_list: list[dict]) -> tuple[list, dict, str | None]:
    """:meth:`~nsf_lab.bench.protocol.Planner.evidence_task` plus agreement, runner-up seeds and references."""
    suite = planner.suite
    todo, dec, best = planner.evidence_task(task, arm_list)
    spec_of = {a["label"]: a["spec"] for a in arm_list}
    if suite.one_shot_tasks is not None and task not in suite.one_shot_tasks:
        one_shot = {a["label"] for a in arm_list if a["kind"] == "one-shot"}
        todo = [(c, m) for c, m in todo if m["label"] not in one_shot]
        dec = {k: v for k, v in dec.items() if k not in one_shot}
    if suite.budget_tasks is not None and task not in suite.budget_tasks:
        todo = [(c, m) for c, m in todo if c["budget"] == 1.0]
        for d in dec.values():
            d.pop("budgets", None)
    for label, d in dec.items():
        if d["kind"] != "tuned":
            continue
        d["agreement"] = agreement(planner, task, spec_of[label])
        for b, x in d.get("budgets", {}).items():
            x["agreement"] = agreement(planner, task, spec_of[label], float(b))
    primary = {"NSF default", suite.search.label, best, *ALT_BASES}
    for label, d in dec.items():  # the primaries' tuned arms whose seeds disagree: also at the runner-up
        if d["kind"] == "tuned" and label in primary and d["agreement"] and not d["agreement"]["agree"]:
            d["alt_lr"] = d["agreement"]["runner_up"]
    for a in arm_list:  # and their tied arms (not the control) at the runner-up's derived LR
        if a["kind"] == "tied" and "decay_per_run" not in a and a["label"] in dec and "alt_lr" in dec[a["base"]]:
            dec[a["label"]]["alt_lr"] = planner.tied_lr(dec[a["base"]]["alt_lr"], a["decades"])
    for label, d in dec.items():
        if "alt_lr" in d:
            m = {"label": label, "arm": d["kind"], "lr_choice": "runner-up"}
            for seed in suite.seeds:
                c = planner.config(task, d.get("spec", spec_of[label]), d["alt_lr"], seed, 1.0, "test")
                if planner.rec(c) is None:
                    todo.append((c, {"stage": "seeds", **m}))
    if best is not None and suite.reference_budget and best in dec:
        for seed in suite.tune_seeds:
            c = planner.config(task, spec_of[best], dec[best]["lr"], seed, suite.reference_budget, "val")
            if planner.rec(c) is None:
                todo.append((c, {"stage": "reference", "label": best, "arm": "reference"}))
    return todo, dec, best

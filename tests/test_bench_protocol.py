"""Run identity, the append-only store, eval grid, LR walk and time-to-target (nsf_lab.bench)."""
import json
import math

import pytest

from nsf_lab.bench import report as R
from nsf_lab.bench.protocol import Planner
from nsf_lab.experiment.store import RunStore, make_config, run_id
from nsf_lab.bench.suites import Suite
from nsf_lab.experiment.tasks import TASKS, eval_steps, lr_lambda
from nsf_lab.experiment.train import run_config
from nsf_lab.experiment.tuner import LR_GRID, Grid


def test_run_id_is_stable_and_sensitive():
    a = make_config("digits-mlp-tiny", "adam", 1e-3, 0)
    assert run_id(a) == run_id(make_config("digits-mlp-tiny", {"name": "adam"}, 1e-3, 0))
    assert run_id(a) != run_id(make_config("digits-mlp-tiny", "adam", 1e-3, 1))
    assert run_id(a) != run_id(make_config("digits-mlp-tiny", "adam", 1e-3, 0, split="val"))
    assert run_id(a) != run_id(make_config("digits-mlp-tiny", "nsf-fixed:p=-0.25", 1e-3, 0))
    # the lr in a spec is not part of the identity: the tuned lr field is
    assert run_id(make_config("digits-mlp-tiny", "adam:lr=0.5", 1e-3, 0)) == run_id(a)


def test_store_ignores_torn_line_and_keeps_appending(tmp_path):
    s = RunStore(tmp_path)
    s.add({"run_id": "a", "config": {}, "final": {}}, {"step": [1]})
    with open(tmp_path / "runs.jsonl", "ab") as f:
        f.write(b'{"run_id": "b", "fin')  # kill -9 in the middle of a write
    s2 = RunStore(tmp_path)
    assert set(s2.records()) == {"a"}
    s2.add({"run_id": "c", "config": {}, "final": {}}, {"step": [2]})
    assert set(RunStore(tmp_path).records()) == {"a", "c"}
    assert json.loads((tmp_path / "curves" / "c.json").read_text()) == {"step": [2]}


def test_eval_grid_dense_early_and_ends_at_last_step():
    t = TASKS["mnist1d-mlp"]
    spe = 28
    total = t.total_steps(spe * t.batch_size)
    pts = eval_steps(t, spe, total)
    assert pts[-1] == total and pts == sorted(set(pts))
    first_epoch = [p for p in pts if p <= spe]
    later = [p for p in pts if 5 * spe < p <= 6 * spe]
    assert len(first_epoch) == t.early_evals_per_epoch and len(later) == t.evals_per_epoch
    # a compressed budget keeps the same grid in fractions of its run
    half = eval_steps(t, spe, total // 2, budget=0.5)
    assert half[-1] == total // 2 and len(half) == len(pts)


def test_lr_schedule_warmup_then_cosine_to_zero():
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    vals = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:])) and vals[-1] == pytest.approx(0.0, abs=1e-12)


def test_run_config_records_curves_and_detects_divergence():
    cfg = make_config("digits-mlp-tiny", "adam", 3e-3, 0, split="val")
    out = run_config(cfg)
    final, curves = out["final"], out["curves"]
    assert not final["diverged"] and 0.0 <= final["error"] <= 1.0
    assert curves["step"][-1] == final["steps"] and len(curves["acc"]) == len(curves["loss"])
    assert curves["acc"][-1] == pytest.approx(1 - final["error"])
    again = run_config(cfg)["final"]
    assert again["loss"] == pytest.approx(final["loss"], rel=1e-6)  # same seed, same result
    bad = run_config(make_config("digits-mlp-tiny", "sgd", 1e6, 0, split="val"))["final"]
    assert bad["diverged"] and math.isnan(bad["loss"])


def _fake(store, task, spec, lr, err, seed=100, split="val", diverged=False):
    cfg = make_config(task, spec, lr, seed, 1.0, split)
    store.add({"run_id": run_id(cfg), "config": cfg,
               "final": {"error": err, "loss": err, "diverged": diverged, "steps": 10}}, {"step": [10]})


def test_lr_walk_extends_toward_better_side_until_interior(tmp_path):
    store = RunStore(tmp_path)
    suite = Suite("t", ["digits-mlp-tiny"], [("Adam", "adam")], default=None, ablations=False, max_points=8)
    pl = Planner(suite, store)
    todo, best, _ = pl.tune("digits-mlp-tiny", "adam")
    start = LR_GRID.index(Grid().snap(1e-3))  # adam's registry lr is the reference point
    assert best is None and sorted(c["lr"] for c in todo) == [LR_GRID[start - 1], LR_GRID[start], LR_GRID[start + 1]]
    assert all(c["split"] == "val" for c in todo)
    # error decreases with lr: the walk must go up one grid point at a time
    err = lambda i: 0.5 - 0.05 * i if i <= start + 3 else 0.5
    for i in (start - 1, start, start + 1):
        _fake(store, "digits-mlp-tiny", "adam", LR_GRID[i], err(i))
    for k in range(2, 5):
        todo, best, _ = Planner(suite, store).tune("digits-mlp-tiny", "adam")
        assert best is None and [c["lr"] for c in todo] == [LR_GRID[start + k]]
        _fake(store, "digits-mlp-tiny", "adam", LR_GRID[start + k], err(start + k))
    todo, d, tried = Planner(suite, store).tune("digits-mlp-tiny", "adam")
    assert todo == [] and d.lr == LR_GRID[start + 3] and len(tried) == 6 and d.flags == []


def test_lr_walk_treats_divergence_as_worst(tmp_path):
    store = RunStore(tmp_path)
    suite = Suite("t", ["digits-mlp-tiny"], [("SGD-M", "sgd")], default=None, ablations=False)
    s = LR_GRID.index(Grid().snap(0.05))
    _fake(store, "digits-mlp-tiny", "sgd", LR_GRID[s - 1], 0.3)
    _fake(store, "digits-mlp-tiny", "sgd", LR_GRID[s], 0.2)
    _fake(store, "digits-mlp-tiny", "sgd", LR_GRID[s + 1], float("nan"), diverged=True)
    todo, d, tried = Planner(suite, store).tune("digits-mlp-tiny", "sgd")
    assert todo == [] and d.lr == LR_GRID[s] and len(tried) == 3  # diverged run kept in the tuning record


def test_time_to_target_on_synthetic_curves():
    steps = [10, 20, 30, 40, 50, 100]
    acc = [0.1, 0.5, 0.79, 0.81, 0.85, 0.9]
    assert R.time_to_target(steps, acc, 100, 0.8) == pytest.approx(0.4)
    assert R.time_to_target(steps, acc, 100, 0.9) == pytest.approx(1.0)
    assert R.time_to_target(steps, acc, 100, 0.95) is None
    assert R.time_to_target(steps, [float("nan")] + acc[1:], 100, 0.05) == pytest.approx(0.2)
    assert R.budget_to_target({0.25: 0.7, 0.5: 0.82, 1.0: 0.85}, 0.8) == 0.5
    assert R.budget_to_target({0.25: 0.7, 0.5: 0.72, 1.0: 0.75}, 0.8) is None


def test_full_rule_suite_tunes_every_seed_on_the_whole_grid_and_flags_one_sample_margins(tmp_path):
    store = RunStore(tmp_path)
    suite = Suite("t", ["digits-mlp-tiny"], [("Adam", "adam")], default="nsf", ablations=False, rule="full",
                  tune_seeds=[100, 101], max_points=None)
    todo, d, _ = Planner(suite, store).tune("digits-mlp-tiny", "adam")
    assert d is None and sorted({c["lr"] for c in todo}) == LR_GRID and {c["seed"] for c in todo} == {100, 101}
    for _ in range(5):
        for c in todo:  # a bowl around 1e-2, seed 101 slightly worse everywhere
            _fake(store, "digits-mlp-tiny", "adam", c["lr"], 0.1 + 0.01 * (math.log10(c["lr"]) + 2) ** 2
                  + 0.001 * (c["seed"] - 100), seed=c["seed"])
        pl = Planner(suite, store)
        todo, d, tried = pl.tune("digits-mlp-tiny", "adam")
        if d is not None:
            break
    assert d.lr == 1e-2 and len(tried) == len(LR_GRID) + 2 and all(len(r) == 2 for r in tried.values())
    # the quarter-decade neighbours are 0.000625 worse: less than one of the ~130 validation samples
    assert pl.resolution("digits-mlp-tiny") > 0.000625 and d.flags == ["within-one-sample"]
    assert pl.decisions()["tuning"]["digits-mlp-tiny"]["Adam"]["flags"] == ["within-one-sample"]


@pytest.mark.parametrize("spec", ["nsf", "nsf-cyclic-adam:lr=0.01", "fsgdm", "torch.optim:RAdam,betas=(0.8,0.9)"])
def test_arm_configs_are_make_config_at_each_lr_and_seed(spec):
    """The planner builds an arm's part of a config once: each config and run id as make_config's own."""
    from nsf_lab.bench.protocol import arm_configs
    for task, budget, split in [("digits-mlp-tiny", 1.0, "val"), ("mnist1d-mlp", 0.25, "test")]:
        config = arm_configs(task, spec, budget, split)
        for lr, seed in [(1e-3, 0), (10 ** -2.5, 7), (1, 3)]:
            want = make_config(task, spec, lr, seed, budget, split)
            assert config(lr, seed) == want and run_id(config(lr, seed)) == run_id(want)

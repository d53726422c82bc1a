"""The sweep object (suite.json merge, decisions) and the driver's handling of failed runs (nsf_lab.experiment.sweep)."""
import json

import pytest

from nsf_lab.experiment.store import RunStore, run_id
from nsf_lab.experiment import sweep as S


def test_options_given_on_resume_accumulate_and_nothing_disappears(tmp_path):
    base = {"name": "quick", "tasks": ["a"], "seeds": [0, 1], "extra": [["x", "x"]], "budgets": [0.5]}
    S.Sweep.create(tmp_path, base)
    sw, grown = S.Sweep.create(tmp_path, {**base, "extra": [["y", "y"]]}, accumulate=("extra",))
    assert sw.suite["extra"] == [["x", "x"], ["y", "y"]] and grown == ["extra: added y"]
    # a plain resume (no option given) keeps everything recorded, whatever the defaults say now
    sw, grown = S.Sweep.create(tmp_path, {**base, "extra": [], "tasks": ["b"], "budgets": [0.25]})
    assert sw.suite == {**base, "extra": [["x", "x"], ["y", "y"]]} and grown == []
    sw, _ = S.Sweep.create(tmp_path, {**base, "tasks": ["b"], "seeds": [0]}, accumulate=("tasks", "seeds"))
    assert sw.suite["tasks"] == ["a", "b"] and sw.suite["seeds"] == [0, 1]
    assert json.loads((tmp_path / "suite.json").read_text()) == sw.suite
    with pytest.raises(S.SweepError, match="holds suite 'quick'"):
        S.Sweep.create(tmp_path, {**base, "name": "standard"})


def test_open_refuses_a_directory_without_a_sweep_and_creates_nothing(tmp_path):
    with pytest.raises(S.SweepError, match="no sweep"):
        S.Sweep.open(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(S.SweepError, match="no sweep"):
        S.Sweep.open(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(S.SweepError, match="not a directory"):
        S.Sweep.open(tmp_path / "file")


def test_damaged_suite_and_decisions_files_are_user_errors(tmp_path):
    (tmp_path / "suite.json").write_text('{"name": "quick", "tasks": [')
    with pytest.raises(S.SweepError, match="suite.json"):
        S.Sweep.open(tmp_path)
    (tmp_path / "suite.json").write_text("[1, 2]")
    with pytest.raises(S.SweepError, match="not a JSON object"):
        S.Sweep.open(tmp_path)
    (tmp_path / "suite.json").write_text('{"name": "quick"}')
    sw = S.Sweep.open(tmp_path)
    assert sw.decisions() is None
    sw.write_decisions({"complete": True, "arms": [["Adam", {"name": "adam"}]]})
    assert S.Sweep.open(tmp_path).decisions()["arms"] == [["Adam", {"name": "adam"}]]


def fake_plan(store, configs):
    return lambda: [(c, {"stage": "t"}) for c in configs if run_id(c) not in store.records()]


def test_a_run_that_raises_is_recorded_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def train(config, device, data_root):
        if config["seed"] == 1:
            raise RuntimeError("boom in the run")
        return {"loss": 0.5, "error": 0.25, "diverged": False}, {"step": [1]}
    monkeypatch.setattr(S, "run_training", train)
    sw = S.Sweep(tmp_path, {"name": "t"})
    configs = [{"task": "t", "seed": s, "lr": 0.1} for s in range(3)]
    stats = S.drive(sw, fake_plan(sw.store, configs), S.InlineEngine())
    assert stats == {"done": 3, "failed": 1}
    recs = RunStore(tmp_path).records()
    bad = recs[run_id(configs[1])]
    assert bad["final"]["failed"] and "boom in the run" in bad["final"]["error_message"]
    assert "Traceback" in bad["final"]["error_message"]
    assert [recs[run_id(configs[i])]["final"]["error"] for i in (0, 2)] == [0.25, 0.25]


def test_a_failed_run_is_retried_once_on_resume_and_its_new_record_wins(tmp_path, monkeypatch):
    from nsf_lab.bench.protocol import Planner

    calls = []

    def train(config, device, data_root):
        calls.append(config["seed"])
        return {"loss": 0.5, "error": 0.25, "diverged": False}, {"step": [1]}
    monkeypatch.setattr(S, "run_training", train)
    store = RunStore(tmp_path)
    cfg = {"task": "t", "seed": 0, "lr": 0.1}
    rec, curves = S.failed_record(cfg, {}, "cpu", S.WORKER_DIED)
    store.add(rec, curves)
    store2 = RunStore(tmp_path)
    pl = Planner("smoke", store2, retry_failed=True)
    assert Planner("smoke", store2)._get(run_id(cfg)) is not None  # without retry a failed run is a result
    assert pl._get(run_id(cfg)) is None
    sw = S.Sweep(tmp_path, {"name": "t"})
    sw.store = store2
    plan = lambda: [(cfg, {})] if pl._get(run_id(cfg)) is None else []
    assert S.drive(sw, plan, S.InlineEngine()) == {"done": 1, "failed": 0} and calls == [0]
    assert not RunStore(tmp_path).records()[run_id(cfg)]["final"].get("failed")  # the later success wins

"""Protocol "evidence3" (docs/evidence_v3.md, issue 23): planner, verdict bookkeeping and the report's new tables,
on synthetic results (no training) except the one end-to-end run through the command."""
import math

import pytest

from nsf_lab.bench import verdicts as V
from nsf_lab.bench.evidence3 import decayed, run_steps
from nsf_lab.bench.protocol import MemoryStore, Planner, synthetic_final
from nsf_lab.bench.suites import RAW_RANGES, get_suite, library_default
from nsf_lab.experiment.store import run_id
from nsf_lab.experiment.tasks import get_task, lr_lambda
from nsf_lab.experiment.tuner import ref_lr, score
from nsf.registry import parse_spec

TASK = "digits-mlp-tiny"


def finish(suite, final=synthetic_final, until=None):
    store = MemoryStore()
    pl = Planner(suite, store)
    while todo := pl.plan(until=until):
        for c, m in todo:
            store.add({"run_id": run_id(c), "config": c, "final": final(c), **m})
    return pl, store


def adam_seeds_disagree(c):
    """Tuning seed 101 prefers Adam's LR a quarter decade lower than seed 100 does."""
    f = synthetic_final(c)
    if c["optimizer"]["name"] == "adam" and c["split"] == "val" and c["seed"] == 101:
        f["loss"] = f["loss_ts"] = 0.5 + 0.1 * (math.log10(c["lr"] / ref_lr(c["optimizer"])) + 0.25) ** 2
    return f


@pytest.fixture(scope="module")
def disagree():
    return finish(get_suite("evidence3-smoke"), adam_seeds_disagree)


def test_evidence3_declares_the_protocol():
    s = get_suite("evidence3")
    assert (s.rule, s.criterion, s.tune_seeds, s.seeds, s.grid_span) == ("full", "loss_ts", [100, 101, 102],
                                                                         list(range(10)), 1.0)
    assert parse_spec(s.default) == parse_spec(library_default())
    assert library_default()["p"]["cycles"] == 2 and library_default()["p"]["quantize"] == 0.125
    assert s.search.label == "NSF raw signed-p" and s.search.score == "relative"
    assert all(lo < 0 < hi for lo, hi in RAW_RANGES)  # every candidate crosses zero
    assert all(x["scale"] == "raw" and x["p"]["cycles"] == 2 for x in s.search.stage_a)
    assert s.one_shot_tasks == s.budget_tasks == s.search.tasks == ["mnist1d-mlp", "fashion-mlp-long"]
    assert s.reference_budget == 2.0


def test_loss_ts_criterion_scores_the_loss_at_the_fitted_temperature():
    rec = {"final": {"loss": 1.7, "loss_ts": 0.9, "error": 0.3}}
    assert score(rec, "loss_ts") == (0, 0.9, 0.3) and score(rec, "loss") == (0, 1.7, 0.3)
    assert score({"final": {"loss": 1.0, "error": 0.3}}, "loss_ts")[0] == 1  # not recorded: never chosen


def test_search_chooses_an_arm_of_its_own_and_the_default_stays_the_library_default(disagree):
    pl, _ = disagree
    d = pl.decisions()
    arms = dict(d["arms"])
    assert arms["NSF default"] == parse_spec(library_default())
    assert arms["NSF raw signed-p"] == d["search"]["winner"] and arms["NSF raw signed-p"]["scale"] == "raw"
    assert arms["NSF raw signed-p tied"] == arms["NSF raw signed-p"]
    t = d["tuning"][TASK]
    assert t["NSF raw signed-p"]["kind"] == "tuned"
    assert t["NSF default tied"]["lr"] == t["NSF raw signed-p tied"]["lr"] == t["AdamW control"]["lr"] == t["Adam"]["lr"]


def test_relative_search_score_is_scale_free(disagree):
    pl, _ = disagree
    rows = pl.decisions()["search"]["stage_a"]
    assert min(r["relative"] for r in rows) == 1.0
    for r in rows:
        assert r["relative"] == pytest.approx(sum(p["score"] / min(q["per_task"][0]["score"] for q in rows)
                                                  for p in r["per_task"]) / len(r["per_task"]))


def test_control_weight_decay_sums_to_one_over_the_run(disagree):
    pl, _ = disagree
    t = pl.decisions()["tuning"][TASK]["AdamW control"]
    total = run_steps(pl, TASK)
    f = lr_lambda(total, get_task(TASK).warmup)
    decay = sum(t["lr"] * f(s) * t["spec"]["weight_decay"] for s in range(total))
    assert t["spec"]["name"] == "adamw" and decay == pytest.approx(1.0, rel=5e-3)
    assert decayed(pl, TASK, {"name": "adamw"}, 2 * t["lr"], 1.0)["weight_decay"] == pytest.approx(
        t["spec"]["weight_decay"] / 2, rel=5e-3)


def test_disagreeing_seeds_add_final_seeds_at_the_runner_up_for_the_arm_and_its_tied_arms(disagree):
    pl, store = disagree
    t = pl.decisions()["tuning"][TASK]
    a = t["Adam"]["agreement"]
    assert not a["agree"] and a["runner_up"] == t["Adam"]["alt_lr"] < t["Adam"]["lr"]
    assert sum(x < 0 for x in a["per_seed"]) == 1
    for label in ("NSF default tied", "NSF raw signed-p tied"):
        assert t[label]["alt_lr"] == t["Adam"]["alt_lr"]
    assert "alt_lr" not in t["AdamW control"] and "alt_lr" not in t["SGD-M"]
    alt = [r for r in store.records().values() if r.get("lr_choice") == "runner-up"]
    assert {r["label"] for r in alt} == {"Adam", "NSF default tied", "NSF raw signed-p tied"}
    assert all(r["config"]["split"] == "test" and r["config"]["lr"] == t["Adam"]["alt_lr"] for r in alt)
    assert len(alt) == 3 * len(pl.suite.seeds)


def test_reference_runs_are_the_best_baseline_twice_as_long_on_validation(disagree):
    pl, store = disagree
    d = pl.decisions()
    best = d["best_baseline"][TASK]
    ref = [r for r in store.records().values() if r["stage"] == "reference"]
    assert sorted(r["config"]["seed"] for r in ref) == pl.suite.tune_seeds
    assert all(r["config"]["budget"] == 2.0 and r["config"]["split"] == "val" and r["label"] == best
               and r["config"]["lr"] == d["tuning"][TASK][best]["lr"] for r in ref)


def test_until_tuned_plans_validation_runs_only_and_the_rest_resumes():
    pl, store = finish(get_suite("evidence3-smoke"), until="tuned")
    recs = store.records().values()
    assert recs and all(r["config"]["split"] == "val" for r in recs)
    assert {r["stage"] for r in recs} == {"search", "tune", "reference"}
    d = pl.decisions()
    assert not d["complete"] and all("agreement" in d["tuning"][TASK][k] for k in ("Adam", "NSF default"))
    rest = pl.plan()
    assert rest and all(c["split"] == "test" for c, _ in rest)


def test_one_shot_arms_and_budget_runs_only_on_their_tasks():
    s = get_suite("evidence3-smoke")
    s.one_shot_tasks = s.budget_tasks = []
    pl, store = finish(s)
    t = pl.decisions()["tuning"][TASK]
    assert not any(v["kind"] == "one-shot" or "budgets" in v for v in t.values())
    assert not any(r["arm"] == "one-shot" or r["config"]["budget"] not in (1.0, 2.0) for r in store.records().values())


def _arm(label, runs):
    return V.Arm(label, runs={1.0: {s: {"run_id": f"{rid}-{s}", "config": {"seed": s}, "final": {"error": e, "loss": e}}
                                    for s, (rid, e) in enumerate(runs)}})


def test_a_primary_with_the_same_runs_as_an_earlier_one_is_counted_once():
    base = [("adam", 0.10 + 0.001 * i) for i in range(6)]
    nsf = [("nsf", 0.09 + 0.002 * i) for i in range(6)]
    arms = {"t": {"NSF default": _arm("NSF default", nsf), "Adam": _arm("Adam", base),
                  "NSF default tied": _arm("NSF default tied", nsf), "Adam 1e-3": _arm("Adam 1e-3", base),
                  "NSF default 1e-3": _arm("NSF default 1e-3", nsf)}}
    pairs = V.primary_pairs(arms, {"t": "Adam"}, V.V3)
    assert [(p[1], p[5]) for p in pairs] == [("P1", None), ("P3", "P1"), ("P6", "P1")]  # P2, P4, P5 not planned
    rows = V.claim_c1_c2(arms, {"t": "Adam"}, {"t": 10000}, V.V3)["C1"]["rows"]
    assert [r["id"] for r in rows] == ["P1", "P3", "P6"]
    assert rows[0]["holm"]["level"] == 0.95  # a family of one: the duplicates are not counted
    assert rows[1]["verdict"] == rows[2]["verdict"] == "= P1 (same runs)" and rows[1]["res"] == rows[0]["res"]
    assert V.primary_pairs(arms, {"t": "Adam"})[0][5] is None and len(V.primary_pairs(arms, {"t": "Adam"})) == 4


def test_power_at_holms_first_step_needs_more_seeds():
    arms = {"t": {"NSF default": _arm("n", [("n", 0.1 + 0.003 * (i % 3)) for i in range(10)]),
                  "Adam": _arm("a", [("a", 0.1) for _ in range(10)])}}
    p = V.power_table(arms, {"t": "Adam"}, {"t": 10000}, design=V.V3)[0]
    assert p["holm_m"] == 1 and p["resolvable_holm"] == pytest.approx(p["resolvable"])
    arms["t"]["NSF raw signed-p"] = arms["t"]["NSF default"]
    p = V.power_table(arms, {"t": "Adam"}, {"t": 10000}, design=V.V3)[0]
    assert p["holm_m"] == 1  # the raw arm's runs are the default's here: counted once
    arms["t"]["NSF raw signed-p"] = _arm("r", [("r", 0.1 + 0.001 * i) for i in range(10)])
    p = V.power_table(arms, {"t": "Adam"}, {"t": 10000}, design=V.V3)[0]
    assert p["holm_m"] == 2 and p["resolvable_holm"] > p["resolvable"] and p["need_holm"] >= p["need"]


def test_evidence3_smoke_end_to_end_through_the_command(tmp_path):
    """Real runs: --until tuned stops at the choices; the resumed sweep completes; the report has the v3 tables."""
    import json
    import subprocess
    import sys
    cmd = [sys.executable, "-c", "import sys; from nsf_lab.cli import main; sys.exit(main())", "bench",
           "--suite", "evidence3-smoke", "--out", str(tmp_path), "--threads", "1"]
    res = subprocess.run(cmd + ["--until", "tuned"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert recs and all(r["config"]["split"] == "val" and "loss_ts" in r["final"] for r in recs)
    assert not json.loads((tmp_path / "decisions.json").read_text())["complete"]
    res = subprocess.run(cmd + ["--report"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "decisions.json").read_text())["complete"]
    md = (tmp_path / "report.md").read_text()
    for title in ("## The paper's own form", "## Convergence of every task", "## Do the tuning seeds agree?",
                  "## How the C1 verdicts move", "At Holm's first step", "AdamW control − Adam"):
        assert title in md


@pytest.mark.parametrize("text", [False, True])
def test_convergence_names_every_part_a_task_fails(text):
    from nsf_lab.bench.evidence3_md import failed_parts
    if text:
        good = {"worst_tuned_error": 58.0, "val_loss": 1.8, "val_error": 54.0}
        bad = {"worst_tuned_error": 72.0, "val_loss": 2.1, "val_error": 54.0}
        assert failed_parts(good, True) == []
        assert failed_parts(bad, True) == ["every tuned arm off the plateau", "best baseline < 2 nats"]
    else:
        good = {"gain": 0.3, "drop": 0.04, "val_error": 9.3, "longer_error": 8.9}
        assert failed_parts(good, False) == []
        assert failed_parts({**good, "gain": 1.52}, False) == ["(a)"]
        assert failed_parts({**good, "drop": 0.2, "longer_error": 8.0}, False) == ["(b)", "(c)"]
        assert failed_parts({**good, "longer_error": None}, False) is None


def test_c3_says_when_a_task_has_no_budget_runs_by_declaration():
    from nsf_lab.bench.evidence_md import _c3_absent
    an = {"budget_tasks": ["mnist1d-mlp", "fashion-mlp-long"]}
    assert _c3_absent(an, "fashion-resnet-20k") == "not run: declared for mnist1d-mlp, fashion-mlp-long only"
    assert _c3_absent(an, "mnist1d-mlp") == "no data"  # declared, but its runs are missing
    assert _c3_absent({"budget_tasks": None}, "fashion-resnet-20k", "budget runs missing") == "budget runs missing"

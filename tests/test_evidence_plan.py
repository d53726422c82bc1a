"""The planner of the evidence protocol (docs/evidence.md, issue #9), on synthetic results: no training."""
import math

import pytest

from nsf_lab.bench.protocol import Decided, MemoryStore, Planner, dry_run, synthetic_final
from nsf_lab.bench.suites import SEARCH, Search, get_suite, suite_from_dict, suite_to_dict
from nsf_lab.experiment.store import make_config, run_id
from nsf_lab.experiment.tuner import ref_lr
from nsf.registry import parse_spec

BASELINES = ["SGD-M", "Adam", "AdamW", "Padam", "FSGDM"]


def finish(suite, final=synthetic_final):
    """Run the planner to the end, every run finishing with ``final(config)``; (planner, store, plans)."""
    store = MemoryStore()
    pl = Planner(suite, store)
    plans = []
    while todo := pl.plan():
        plans.append(todo)
        for c, m in todo:
            store.add({"run_id": run_id(c), "config": c, "final": final(c), **m})
    return pl, store, plans


@pytest.fixture(scope="module")
def evidence():
    return finish(get_suite("evidence"))


def test_evidence_suite_declares_the_protocol():
    s = get_suite("evidence")
    assert (s.rule, s.criterion, s.tune_seeds, s.seeds) == ("full", "loss", [100, 101], list(range(10)))
    assert s.tasks == s.search.tasks == ["mnist1d-mlp", "fashion-mlp"] and s.budgets == [0.25, 0.5]
    assert [label for label, _ in s.baselines] == BASELINES
    a = s.search.stage_a
    assert all(parse_spec(x) == x for x in a)  # canonical: the same run ids however the spec is written
    assert {(x["p"]["low"], x["p"]["high"], x["scale"]) for x in a} == {
        (lo, hi, sc) for lo, hi in [(-0.25, 0.25), (0.0, 0.5)] for sc in ("adam", "sgd", "raw")}
    assert all(x["p"]["cycles"] == 2 and x["p"]["shape"] == "cosine" for x in a)
    b = s.search.stage_b(a[0])
    assert [x["p"]["cycles"] for x in b] == [1, 2, 4, 8] and b[1] == a[0]
    assert b[0] == parse_spec("nsf:p=cyclic(-0.25,0.25,cycles=1,shape=cosine),scale=adam")


def test_per_arm_grid_spans_two_decades_each_side_of_the_snapped_reference():
    pl = Planner("evidence", MemoryStore())
    for spec, ref in [("sgd", 10 ** -1.5), ("adam", 1e-3), ("fsgdm", 10 ** -1.5)]:
        g = pl.tuner("mnist1d-mlp", spec).grid
        pts = g.points()
        assert len(pts) == 9 and pts[0] == pytest.approx(ref / 100) and pts[-1] == pytest.approx(ref * 100)
        assert pts[4] == pytest.approx(ref)


def test_search_runs_come_first_and_alone(evidence):
    _, _, plans = evidence
    assert plans[0] and all(m["stage"] == "search" and m["arm"] == "search" for _, m in plans[0])
    first_non_search = next(i for i, p in enumerate(plans) if any(m["stage"] != "search" for _, m in p))
    assert all(m["stage"] == "search" for p in plans[:first_non_search] for _, m in p)
    assert all(m["stage"] != "search" for p in plans[first_non_search:] for _, m in p)


def test_every_record_has_label_and_arm(evidence):
    _, store, _ = evidence
    assert all(r["label"] and r["arm"] in ("search", "tuned", "tied", "one-shot") for r in store.records().values())


def test_planned_run_counts(evidence):
    _, store, _ = evidence
    counts = dry_run("evidence")
    assert counts["total"] == len(store.records())
    # search: 6 candidates x 2 tasks x (9 grid + 2 refinement points) x 2 seeds; stage B adds 3 new candidates
    assert counts["search"] == (6 + 3) * 2 * 11 * 2
    # every test run: 10 seeds per arm and task; no run is planned twice
    test = [r for r in store.records().values() if r["config"]["split"] == "test"]
    assert len(test) % 10 == 0 and len({r["run_id"] for r in test}) == len(test)


def test_decisions_list_every_arm_with_kind_lr_and_best_baseline(evidence):
    pl, store, _ = evidence
    d = pl.decisions()
    assert d["complete"]
    kinds = d["arm_kinds"]
    assert [k for k, v in kinds.items() if v == "tied"] == ["NSF-adam tied", "NSF-sgd tied", "NSF-raw[1/4,1/2] tied"]
    assert [k for k, v in kinds.items() if v == "one-shot"] == ["Adam 1e-3", "NSF-adam 1e-3", "SGD-M 0.1",
                                                                "NSF-sgd 1.0"]
    w = d["search"]["winner"]
    fixed = [k for k in kinds if k.startswith("NSF fixed")]
    assert fixed == [f"NSF fixed p={v} ({w['scale']})" for v in ("-0.25", "0", "0.25")]  # declared, whatever the cycle
    assert [dict(d["arms"])[k]["p"] for k in fixed] == [-0.25, 0.0, 0.25]
    assert sorted(k for k in kinds if k.startswith("NSF cyclic")) == sorted(
        f"NSF cyclic {sc}" for sc in ("raw", "sgd", "adam") if sc != w["scale"])
    arms = dict(d["arms"])
    assert w["p"]["low"] == 0.0  # the synthetic winner's cycle is (0, 1/2): the fixed p values are not its own
    assert arms["NSF default"] == w and arms["NSF-sgd tied"] == {**w, "scale": "sgd"}
    assert arms["NSF-raw[1/4,1/2] tied"]["p"] == {**w["p"], "low": 0.25, "high": 0.5}
    dec = Decided(pl.suite, store, d)
    for task in pl.suite.tasks:
        t = d["tuning"][task]
        assert t["NSF-adam tied"]["lr"] == t["Adam"]["lr"] == t["NSF-raw[1/4,1/2] tied"]["lr"]
        assert t["NSF-sgd tied"]["lr"] == pytest.approx(10 * t["SGD-M"]["lr"], rel=1e-11)
        one_shot = ("Adam 1e-3", "NSF-adam 1e-3", "SGD-M 0.1", "NSF-sgd 1.0")
        assert [t[k]["lr"] for k in one_shot] == [1e-3, 1e-3, 0.1, 1.0]
        assert all(t[k]["kind"] == kinds[k] for k in kinds)
        best = d["best_baseline"][task]
        assert best == min(BASELINES, key=lambda b: t[b]["val"]["loss"])
        for label, spec in d["arms"]:  # every arm has its 10 seeds at its LR, found by the report's reader
            assert len(dec.final_runs(task, label, spec)) == 10
        for label in ("NSF default", best):
            for b in (0.25, 0.5):
                assert len(dec.final_runs(task, label, arms[label], b)) == 10


def _bowl(config, centre: float) -> float:
    return 0.5 + 0.1 * math.log10(config["lr"] / centre) ** 2


def test_best_baseline_is_chosen_on_validation_loss_not_test():
    def final(c):
        f = synthetic_final(c)
        name = c["optimizer"]["name"]
        if name in ("sgd", "adam"):  # on validation sgd wins, on test adam does
            good = "sgd" if c["split"] == "val" else "adam"
            f["loss"] = f["error"] = _bowl(c, ref_lr(c["optimizer"])) - (0.3 if name == good else 0.2)
        return f
    pl, _, _ = finish(get_suite("evidence-smoke"), final)
    assert pl.decisions()["best_baseline"]["digits-mlp-tiny"] == "SGD-M"


def test_budget_runs_retune_their_lr_and_tied_arms_reuse_existing_runs():
    def final(c):  # the best LR is 10**0.5 higher at half budget
        f = synthetic_final(c)
        f["loss"] = _bowl(c, ref_lr(c["optimizer"]) * (10 ** 0.5 if c["budget"] == 0.5 else 1.0))
        return f
    pl, store, plans = finish(get_suite("evidence-smoke"), final)
    d = pl.decisions()
    t = d["tuning"]["digits-mlp-tiny"]
    best = d["best_baseline"]["digits-mlp-tiny"]
    for label in ("NSF default", best):
        assert t[label]["budgets"]["0.5"]["lr"] == pytest.approx(t[label]["lr"] * 10 ** 0.5)
        tuning = [r for r in store.records().values() if r["config"]["budget"] == 0.5 and r["config"]["split"] == "val"
                  and r["label"] == label]
        assert tuning and all(r["stage"] == "tune" for r in tuning)
    assert all("budgets" not in t[k] for k in t if k not in ("NSF default", best))
    # Adam's chosen LR is 1e-3 here, so "Adam 1e-3" is the same runs as Adam's seeds: planned once, shared
    assert t["Adam"]["lr"] == 1e-3
    dec = Decided(pl.suite, store, d)
    ids = lambda label: [r["run_id"] for r in dec.final_runs("digits-mlp-tiny", label, dict(d["arms"])[label])]
    assert ids("Adam") == ids("Adam 1e-3") and len(ids("Adam")) == 2
    planned = [run_id(c) for p in plans for c, _ in p]
    assert len(planned) == len(set(planned)) == len(store.records())


def test_search_is_scored_on_validation_loss():
    lossy = get_suite("evidence-smoke").search.stage_a[1]  # worse error, better loss: must win on loss

    def final(c):
        f = synthetic_final(c)
        if c["optimizer"]["name"] == "nsf" and c["optimizer"]["scale"] == lossy["scale"]:
            f["loss"], f["error"] = f["loss"] - 0.2, f["error"] + 0.2
        return f
    pl, _, _ = finish(get_suite("evidence-smoke"), final)
    assert pl.decisions()["search"]["winner_a"] == lossy


def test_plan_is_a_pure_function_of_the_records(evidence):
    _, store, _ = evidence
    part = MemoryStore({k: v for i, (k, v) in enumerate(store.records().items()) if i % 3})
    a, b = Planner("evidence", part).plan(), Planner("evidence", MemoryStore(dict(part.records()))).plan()
    assert a and [run_id(c) for c, _ in a] == [run_id(c) for c, _ in b]


def test_old_search_form_still_loads_and_plans_the_same_stage_b():
    old = {k: v for k, v in suite_to_dict(get_suite("standard")).items() if k not in ("grid_span", "protocol")}
    old["search"] = {k: v for k, v in old["search"].items() if k not in ("variants", "score")}
    s = suite_from_dict(old)
    assert s.search == SEARCH and s.protocol == "standard" and s.grid_span is None
    b = Search(**old["search"]).stage_b(SEARCH.stage_a[0])
    assert len(b) == 9 and {(x["p"]["period"], x["p"]["shape"]) for x in b} == {
        (per, sh) for per in (100, 250, 1000) for sh in ("cosine", "triangle", "square")}
    assert Planner(s, MemoryStore()).tuner("digits-mlp", "adam").grid.points()[0] == 1e-5  # the shared grid


def test_evidence_smoke_end_to_end_through_the_command(tmp_path):
    """Real runs: the evidence-smoke sweep finishes, prints its planned total, records arm and label in every
    run, writes complete decisions and a report."""
    import json
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", "import sys; from nsf_lab.cli import main; sys.exit(main())", "bench",
                          "--suite", "evidence-smoke", "--out", str(tmp_path), "--threads", "1", "--report"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "search decided; about" in res.stderr
    recs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert recs and all(r["label"] and r["arm"] in ("search", "tuned", "tied", "one-shot") for r in recs)
    d = json.loads((tmp_path / "decisions.json").read_text())
    assert d["complete"] and d["best_baseline"]["digits-mlp-tiny"] in ("SGD-M", "Adam", "FSGDM")
    assert (tmp_path / "report.md").is_file()


@pytest.mark.parametrize("error_per_loss, flagged", [(0.2, True), (10.0, False)])
def test_loss_criterion_flags_choices_the_validation_error_cannot_resolve(error_per_loss, flagged):
    def final(c):  # the runner-up LR (a quarter decade off) is 0.00625 worse in loss
        f = synthetic_final(c)
        f["loss"] = _bowl(c, ref_lr(c["optimizer"]))
        f["error"] = error_per_loss * f["loss"]
        return f
    pl, _, _ = finish(get_suite("evidence-smoke"), final)
    t = pl.decisions()["tuning"]["digits-mlp-tiny"]
    assert pl.one_sample("digits-mlp-tiny") > 0.2 * 0.00625 and pl.one_sample("digits-mlp-tiny") < 10 * 0.00625
    tuned = [k for k, v in t.items() if v["kind"] == "tuned"]
    assert all(("within-one-sample" in t[k]["flags"]) == flagged for k in tuned)
    assert all("within-one-sample" not in v["flags"] for v in t.values() if v["kind"] != "tuned")


def test_one_validation_sample_of_a_text_task_is_one_character():
    """The "decided within one validation sample" flag needs the validation size; a text split holds no
    examples but windows × seq_len characters (this crashed the first stage-2 sweep's final decisions)."""
    from nsf_lab.experiment.tasks import get_task
    pl = Planner("evidence", MemoryStore())
    t = get_task("shakespeare-charlm-short")
    assert pl.one_sample(t.name) == pytest.approx(1.0 / (t.eval_windows * t.seq_len))
    assert pl.one_sample("digits-mlp-tiny") == pytest.approx(1.0 / 130)  # 10 % of the 1297 training digits

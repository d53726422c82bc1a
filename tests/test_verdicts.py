"""The evidence-protocol analysis (nsf_lab.bench.verdicts) and its report, on synthetic run directories whose true
effects are known."""
import json
import math

import numpy as np
import pytest

from nsf_lab.bench import verdicts as V
from nsf_lab.experiment import stats as S
from nsf_lab.experiment.store import make_config, run_id

TASK = "digits-mlp-tiny"
# label -> (kind, lr, test error shift in points vs Adam, per-seed noise sd in points)
ARMS = {"SGD-M": ("tuned", 0.1, 1.0, 0.2), "Adam": ("tuned", 1e-3, 0.0, 0.2), "AdamW": ("tuned", 1e-3, 0.0, 0.2),
        "Padam": ("tuned", 0.1, 3.0, 0.2), "FSGDM": ("tuned", 0.1, 1.5, 0.2),
        "NSF default": ("tuned", 0.01, -2.0, 0.2), "NSF-adam tied": ("tied", 1e-3, 2.0, 0.2),
        "NSF-sgd tied": ("tied", 1.0, 1.0, 0.05), "NSF-raw[1/4,1/2] tied": ("tied", 1e-3, 0.5, 0.2),
        "Adam 1e-3": ("one-shot", 1e-3, 0.0, 0.2), "NSF-adam 1e-3": ("one-shot", 1e-3, 0.0, 3.0),
        "SGD-M 0.1": ("one-shot", 0.1, 1.0, 0.2), "NSF-sgd 1.0": ("one-shot", 1.0, 1.0, 0.2)}
SEEDS = range(6)


def _curves(acc_final, steps=40, faster=1.0, scaled=False):
    """Eval curves whose accuracy is a fixed function of the training loss unless ``faster`` != 1 (then the same
    loss comes with ``faster`` x the accuracy gain: a better-aligned optimizer)."""
    s = np.arange(1, steps + 1)
    train = 2.3 * np.exp(-4 * s / steps)
    acc = 0.1 + (acc_final - 0.1) * np.clip(faster * (1 - train / 2.3) / (1 - math.exp(-4)), 0, 1)
    return {"step": s.tolist(), "epoch": (s / 10).tolist(), "frac": (s / steps).tolist(), "train_loss": train.tolist(),
            "loss": (train * 1.1).tolist(), "acc": acc.tolist(), "lr": [0.1] * steps, "p": [None] * steps,
            "wall": [0.0] * steps, **({"loss_ts": (train * 0.55).tolist()} if scaled else {})}


def _spec(label):
    return {"name": "adam", "eps": 1e-8 * (1 + list(ARMS).index(label))}  # one distinct spec per arm


def write_rundir(root, labels=tuple(ARMS), complete=True, rng_seed=0, scaled=False):
    """A fake evidence sweep: suite.json, runs.jsonl (+ curves), decisions.json."""
    from nsf_lab.bench.suites import Suite, suite_to_dict
    rng = np.random.default_rng(rng_seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "curves").mkdir(exist_ok=True)
    suite = Suite("evidence-fake", [TASK], [("Adam", "adam")], seeds=list(SEEDS))
    (root / "suite.json").write_text(json.dumps(suite_to_dict(suite)))
    lines = []

    def add(label, lr, seed, budget, split, err, faster=1.0):
        cfg = make_config(TASK, _spec(label), lr, seed, budget, split)
        rid = run_id(cfg)
        loss = 0.1 + err
        rec = {"run_id": rid, "config": cfg, "label": label, "arm": ARMS[label][0], "stage": "seeds",
               "final": {"error": err, "acc": 1 - err, "loss": loss, "diverged": False, "steps": 40},
               "wall_s": 1.0, "versions": {"nsf": "test"}}
        lines.append(json.dumps(rec))
        (root / "curves" / f"{rid}.json").write_text(json.dumps(_curves(1 - err, faster=faster, scaled=scaled)))

    budget_lr = {0.25: 3.0, 0.5: 2.0, 1.0: 1.0}  # the LR is re-tuned per budget
    for label in labels:
        kind, lr, shift, sd = ARMS[label]
        budgets = (0.25, 0.5, 1.0) if label in ("NSF default", "Adam") else (1.0,)
        for b in budgets:
            # NSF default reaches Adam's full accuracy at 1/2 budget; Adam loses 4 points per halving
            drop = {"NSF default": {0.25: 4.0, 0.5: 2.0, 1.0: 0.0}, "Adam": {0.25: 8.0, 0.5: 4.0, 1.0: 0.0}}
            extra = drop.get(label, {1.0: 0.0})[b]
            for s in SEEDS:
                err = 0.10 + (shift + extra + sd * rng.standard_normal()) / 100
                add(label, lr * budget_lr[b], s, b, "test", err, faster=1.3 if label == "NSF default" else 1.0)
    (root / "runs.jsonl").write_text("\n".join(lines) + "\n")
    tuning = {label: {"kind": ARMS[label][0], "lr": ARMS[label][1], "flags": ["edge"] if label == "Padam" else [],
                      "tried": []} for label in labels}
    for label in ("NSF default", "Adam"):
        if label in tuning:
            tuning[label]["budgets"] = {str(b): {"lr": ARMS[label][1] * budget_lr[b], "flags": ["cap"] * (b == 0.5),
                                                 "tried": []} for b in (0.25, 0.5)}
    dec = {"version": 2, "suite": "evidence-fake", "complete": complete, "search": None,
           "arms": [[label, _spec(label)] for label in labels], "arm_kinds": {k: ARMS[k][0] for k in labels},
           "best_baseline": {TASK: "Adam" if complete else None}, "tuning": {TASK: tuning}}
    (root / "decisions.json").write_text(json.dumps(dec))
    return root


# ----------------------------------------------------------------------------------------------------------
# stats

def test_holm_adjusts_step_down_and_levels_match_each_step():
    h = S.holm([0.01, 0.04, 0.03])
    assert [x["p_adj"] for x in h] == pytest.approx([0.03, 0.06, 0.06])
    assert [x["reject"] for x in h] == [True, False, False]
    assert [x["level"] for x in h] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2])
    assert S.holm([0.001, None])[1]["p_adj"] == 1.0 and S.holm([0.02, None])[0]["p_adj"] == pytest.approx(0.04)
    # the CI at a step's level excludes 0 exactly when p < alpha / (m - rank + 1)
    a, b = [1.0, 2.0, 3.1, 4.0], [0.2, 1.1, 2.0, 3.5]
    r = S.paired(a, b)
    for level in (1 - r["p"] * 0.99, 1 - r["p"] * 1.01):
        ci = S.paired(a, b, level=level)
        assert (ci["lo"] > 0) == (r["p"] < 1 - level)


def test_seeds_for_paired_difference_reach_80_percent_power():
    st = pytest.importorskip("scipy.stats")
    assert S.seeds_for_paired(1.0, 1.0) == 10  # G*Power, paired t, dz = 1, alpha .05, power .8
    for sd, delta in ((0.5, 0.3), (1.2, 0.3), (0.2, 0.3)):
        n = S.seeds_for_paired(sd, delta)

        def power(k):
            tc = st.t.ppf(0.975, k - 1)
            nc = delta / sd * math.sqrt(k)
            return st.nct.sf(tc, k - 1, nc) + st.nct.cdf(-tc, k - 1, nc)
        assert power(n) >= 0.79 and (n == 2 or power(n - 1) < 0.81)
        assert S.resolvable_effect(sd, n) <= delta < S.resolvable_effect(sd, n - 1) if n > 2 else True
    assert S.seeds_for_paired(0.0, 0.3) == 2 and S.seeds_for_paired(100.0, 0.01, n_max=50) is None


def test_bootstrap_paired_keeps_pairs_and_infinities():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 5, 10)
    a, b = base + 1.0 + rng.normal(0, 0.1, 10), base
    est, lo, hi, dropped = S.bootstrap_paired(lambda x, y: float(np.mean(x - y)), a, b)
    assert lo < est < hi and hi - lo < 0.3 and dropped == 0  # unpaired resampling would give a width ~ 5
    assert (est, lo, hi) == S.bootstrap_paired(lambda x, y: float(np.mean(x - y)), a, b)[:3]
    _, lo, hi, _ = S.bootstrap_paired(lambda x: math.inf if x.mean() > 0.5 else 1.0, [0.0, 1.0])
    assert lo == 1.0 and hi == math.inf


# ----------------------------------------------------------------------------------------------------------
# the pieces

def test_first_budget_interpolates_the_mean_curve():
    B = (0.25, 0.5, 1.0)
    assert V.first_budget([0.8, 0.9, 1.0], 0.95, B) == pytest.approx(0.75)
    assert V.first_budget([0.96, 0.97, 0.98], 0.95, B) == 0.25  # censored: "at most a quarter"
    assert V.first_budget([0.8, 0.85, 0.9], 0.95, B) == math.inf


def test_acc_at_matched_loss_interpolates_the_first_crossing():
    xs, acc = [2.0, 1.0, 0.5, 0.8], [0.1, 0.5, 0.7, 0.6]
    assert V.acc_at(xs, acc, 1.5) == pytest.approx(0.3)
    assert V.acc_at(xs, acc, 0.75) == pytest.approx(0.6)
    assert V.acc_at(xs, acc, 0.1) is None and V.acc_at(xs, acc, 3.0) is None
    lv = V.matched_levels([{"l": [2.0, 0.5]}, {"l": [3.0, 1.0]}], "l")
    assert len(lv) == 3 and all(1.0 < v < 2.0 for v in lv) and lv == sorted(lv, reverse=True)


@pytest.mark.parametrize("lo,hi,reject,margin,small,want", [
    (-2.0, -0.5, True, 0.3, False, "held"),
    (-2.0, -0.5, False, 0.3, False, "inconclusive"),        # Holm's step-down did not reach it
    (-0.9, -0.1, True, 1.0, True, "inconclusive (< 1 point on a small test set)"),
    (0.1, 0.9, False, 0.3, False, "not held"),
    (-0.2, 0.25, False, 0.3, False, "not held"),            # inside the equivalence margin
    (-0.2, 0.25, False, None, False, "inconclusive"),       # C2: no margin
    (-0.5, 0.5, False, 0.3, False, "inconclusive")])
def test_verdict_paired_follows_the_declared_rule(lo, hi, reject, margin, small, want):
    res = {"diff": (lo + hi) / 2, "lo": lo, "hi": hi}
    assert V.verdict_paired(res, {"reject": reject}, margin, small) == want


def test_verdict_c4_needs_a_silent_negative_control():
    pos, zero = {"diff": 1, "lo": 0.5, "hi": 1.5}, {"diff": 0, "lo": -0.5, "hi": 0.5}
    res = {"train": {"res": pos}, "test": {"res": pos}}
    holm = {"train": {"reject": True}, "test": {"reject": True}}
    assert V.verdict_c4(res, {"train": {"res": zero}, "test": {"res": zero}}, holm) == "held"
    assert V.verdict_c4(res, {"train": {"res": pos}, "test": {"res": zero}}, holm).startswith("inconclusive")
    neg = {"diff": -1, "lo": -1.5, "hi": -0.5}
    assert V.verdict_c4({"train": {"res": neg}, "test": {"res": pos}}, None, holm) == "not held"
    assert V.verdict_c4(None, None, holm) == "no data"


def test_time_to_target_and_reverse_view_on_known_curves(tmp_path):
    from nsf_lab.bench.report import load
    arms = V.arms_of(load(write_rundir(tmp_path / "r")))[TASK]
    t = V.time_to_target(arms["NSF default"], arms["Adam"], n_boot=400)
    # NSF default: +2 points at full budget, Adam's full accuracy reached near half the budget
    assert t["ratio"][0] == pytest.approx(0.5, abs=0.08) and t["ratio"][1] <= t["ratio"][0] <= t["ratio"][2]
    assert t["reverse"][0] == math.inf  # Adam never reaches NSF default's final accuracy
    assert t["verdict"] == "inconclusive"  # 0.5 is between the held (<= .25) and not-held (> .5) bounds
    assert V.time_to_target(arms["NSF default"], arms["SGD-M"]) is None  # SGD-M has no budget runs


# ----------------------------------------------------------------------------------------------------------
# the whole analysis and report

def test_claims_on_synthetic_sweep_give_the_built_in_verdicts(tmp_path):
    from nsf_lab.bench import evidence_md as E
    from nsf_lab.bench.report import load
    an = E.analyse(load(write_rundir(tmp_path / "r")))
    assert an["best"][TASK] == "Adam" and an["n_test"][TASK] == 500
    c1 = {r["id"]: r for r in an["C1"]["rows"]}
    assert c1["P1"]["verdict"] == "held" and c1["P1"]["res"]["diff"] == pytest.approx(-2.0, abs=0.4)
    assert c1["P2"]["verdict"] == "not held"
    assert c1["P1"]["margin"] == 1.0  # digits: 500 test examples < 3000
    assert c1["P4"]["verdict"] == "inconclusive"
    assert sorted(r["holm"]["rank"] for r in an["C1"]["rows"]) == [1, 2, 3, 4]
    assert any(r["base"] == "FSGDM" for r in an["C1"]["secondary"])
    c4 = {r["id"]: r for r in an["C4"]["rows"]}
    assert c4["P1"]["res"]["train"]["res"]["lo"] > 0 and c4["P1"]["verdict"] == "held"
    ctrl = an["C4"]["control"][TASK]["train"]["res"]
    assert ctrl["lo"] <= 0 <= ctrl["hi"]
    assert an["power"][0]["need"] >= 2 and an["power"][0]["task"] == TASK


def test_report_of_an_evidence_sweep_lists_verdicts_fsgdm_and_flags(tmp_path):
    from nsf_lab.bench.report import write_report
    d = write_rundir(tmp_path / "r")
    (d / "starts.log").write_text("2026-12-02T01:19:50Z start 72e9041 --until tuned\n")
    md = write_report(d).read_text()
    assert "PARTIAL" not in md and "Verdicts per claim × arm kind" in md
    assert "ran that commit (`starts.log`" in md and "`2026-12-02T01:19:50Z start 72e9041 --until tuned`" in md
    for text in ("FSGDM", "Padam: edge", "Adam: cap @0.5", "C3 time to target", "P1 **held**", "AdamW − Adam",
                 "match the unscaled test loss"):
        assert text in md, text
    assert "*T* |" not in md  # these curves hold no temperature-scaled loss
    summary = md.split("## Verdicts per claim × arm kind")[1].split("\n## ")[0]
    for claim in ("C1 error", "C2 loss", "C4 acc"):  # FSGDM in the summary table too (secondary, 95 % CI)
        row = next(line for line in summary.splitlines() if line.startswith(f"| {TASK} | {claim}"))
        assert row.split("|")[-2].strip().startswith("NSF default ") and "[" in row.split("|")[-2], row
    assert all((d / "plots" / f"{TASK}_evidence_{k}.png").exists() for k in ("budget", "early"))
    assert json.loads((d / "summary.json").read_text())["C1"][0]["verdict"] == "held"


def test_alignment_matches_the_temperature_scaled_test_loss_where_curves_record_it(tmp_path):
    """Amendment 13: C4's test-loss measure uses ``loss_ts`` when every curve of the pair has it (its levels
    are then those of loss_ts, half the unscaled ones here), and the unscaled loss otherwise."""
    from nsf_lab.bench import evidence_md as E
    from nsf_lab.bench.report import load, write_report
    plain = E.analyse(load(write_rundir(tmp_path / "plain")))["C4"]["rows"][0]["res"]
    scaled = E.analyse(load(write_rundir(tmp_path / "scaled", scaled=True)))["C4"]["rows"][0]["res"]
    assert plain["test_key"] == "loss" and scaled["test_key"] == "loss_ts"
    np.testing.assert_allclose(scaled["test"]["levels"], 0.5 * np.array(plain["test"]["levels"]), rtol=1e-9)
    assert "*T* |" in write_report(tmp_path / "scaled").read_text()


def test_report_of_a_partial_sweep_says_so(tmp_path):
    from nsf_lab.bench.report import write_report
    d = write_rundir(tmp_path / "r", labels=("Adam", "NSF default", "NSF-adam tied"), complete=False)
    md = write_report(d).read_text()
    n = sum(1 for _ in open(d / "runs.jsonl"))
    assert f"PARTIAL: {n} of about " in md.splitlines()[2]
    assert "no data" in md


# ----------------------------------------------------------------------------------------------------------
# a real sweep: the evidence-smoke suite end to end

@pytest.fixture(scope="module")
def evidence_smoke(tmp_path_factory):
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("esmoke")
    res = subprocess.run([sys.executable, "-c", "import sys; from nsf_lab.cli import main; sys.exit(main())",
                          "bench", "--suite", "evidence-smoke", "--out", str(out), "--threads", "1", "--report"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_evidence_smoke_report_has_every_primary_comparison(evidence_smoke):
    from nsf_lab.bench import evidence_md as E
    from nsf_lab.bench.report import load
    md = (evidence_smoke / "report.md").read_text()
    assert "Complete: all" in md and "PARTIAL" not in md
    an = E.analyse(load(evidence_smoke))
    arms = an["arms"][TASK]
    assert {r["id"] for r in an["C1"]["rows"] if r["res"] and r["res"]["n"] == 2} == {"P1", "P2", "P3", "P4"}
    assert arms["NSF-adam tied"].lr[1.0] == arms["Adam"].lr[1.0]
    assert arms["NSF-sgd tied"].lr[1.0] == pytest.approx(10 * arms["SGD-M"].lr[1.0], rel=1e-6)
    assert an["C3"][TASK] is not None and an["C3"][TASK]["budgets"] == (0.5, 1.0)
    assert {a.kind for a in arms.values()} == {"tuned", "tied", "one-shot"} and "FSGDM" in arms
    for r in an["C1"]["rows"]:  # the CI printed is the paired t interval of the per-seed differences
        n, b = arms[r["nsf"]].finals("error"), arms[r["base"]].finals("error")
        d = [100 * (n[s] - b[s]) for s in sorted(n)]
        assert r["res"]["diff"] == pytest.approx(np.mean(d))


def test_evidence_smoke_partial_sweep_is_never_shown_as_finished(evidence_smoke, tmp_path):
    import shutil
    from nsf_lab.bench.report import write_report
    d = tmp_path / "partial"
    shutil.copytree(evidence_smoke, d)
    lines = (d / "runs.jsonl").read_text().splitlines()
    (d / "runs.jsonl").write_text("\n".join(lines[: len(lines) - 10]) + "\n")
    (d / "decisions.json").unlink()
    md = write_report(d).read_text()
    assert f"PARTIAL: {len(lines) - 10} of about {len(lines)} planned runs finished" in md


def test_a_diverged_seed_counts_at_its_error_and_leaves_loss_comparisons():
    def arm(errs, div=()):
        return V.Arm("x", runs={1.0: {s: {"final": {"error": e, "loss": math.nan if s in div else e,
                                                    "diverged": s in div}} for s, e in enumerate(errs)}})
    nsf, base = arm([0.1, 0.12, 0.9, 0.11], div=(2,)), arm([0.2, 0.21, 0.22, 0.2])
    err = V.compare(nsf, base, "error", 100.0)
    assert err["n"] == 4 and err["diff"] == pytest.approx(100 * np.mean([-0.1, -0.09, 0.68, -0.09]))
    loss = V.compare(nsf, base, "loss")
    assert loss["n"] == 3 and loss["left_out"] == [2]


def test_time_to_target_is_censored_when_both_arms_reach_it_at_the_smallest_budget():
    # accuracy falls with budget (overfitting): both arms beat the full-budget target already at budget 1/4, so
    # the ratio "at most 1/4 over at most 1/4" is 1 by construction and decides nothing
    def arm(accs):
        runs = {b: {s: {"final": {"error": 1 - a + 0.001 * s}} for s in range(4)} for b, a in zip((0.25, 0.5, 1.0), accs)}
        return V.Arm("x", runs=runs)
    nsf, base = arm((0.65, 0.64, 0.62)), arm((0.62, 0.59, 0.60))
    t = V.time_to_target(nsf, base, n_boot=200)
    assert t["ratio"][0] == pytest.approx(1.0)
    assert t["verdict"].startswith("inconclusive (both reach the target at the smallest budget")

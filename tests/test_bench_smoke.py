"""The smoke suite end to end through the `nsf` command (CI budget: well under 2 minutes), its report, and
resume after kill -9 (a sweep killed with SIGKILL resumes on the same DIR without losing or repeating runs)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nsf_lab.bench.protocol import Planner
from nsf_lab.bench.report import load
from nsf_lab.experiment.store import RunStore
from nsf_lab.bench.suites import suite_from_dict

REQUIRED = {"run_id", "config", "seed", "versions", "wall_s", "final", "curve_file", "finished_at"}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", "import sys; from nsf_lab.cli import main; sys.exit(main())",
                          "bench", "--suite", "smoke", "--out", str(out), "--threads", "1", "--report"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.time() - t0 < 120
    return out


def test_smoke_runs_are_complete_records(smoke_dir):
    recs = [json.loads(l) for l in (smoke_dir / "runs.jsonl").read_text().splitlines()]
    assert recs and all(REQUIRED <= set(r) for r in recs)
    assert len({r["run_id"] for r in recs}) == len(recs)
    assert all((smoke_dir / r["curve_file"]).exists() for r in recs)
    assert all(r["versions"]["torch"] and r["config"]["optimizer"]["name"] for r in recs)
    stages = {r["stage"] for r in recs}
    assert {"tune", "seeds", "budget"} <= stages
    # tuning only ever looked at the validation split, final runs only at the test split
    assert all(r["config"]["split"] == "val" for r in recs if r["stage"] == "tune")
    assert all(r["config"]["split"] == "test" for r in recs if r["stage"] in ("seeds", "budget"))
    assert all(r["config"]["budget"] < 1 for r in recs if r["stage"] == "budget")


def test_smoke_plan_is_finished_and_seeds_use_chosen_lr(smoke_dir):
    suite = suite_from_dict(json.loads((smoke_dir / "suite.json").read_text()))
    pl = Planner(suite, RunStore(smoke_dir))
    assert pl.plan() == []
    dec = load(smoke_dir)
    assert dec.decisions == json.loads(json.dumps(pl.decisions()))  # decisions.json holds what the planner decided
    _, opts = pl.optimizers()
    assert dec.optimizers() == opts
    for label, spec in opts:
        _, d, tried = pl.tune(suite.tasks[0], spec)
        runs = dec.final_runs(suite.tasks[0], label, spec)
        assert len(runs) == len(suite.seeds) and all(r["config"]["lr"] == d.lr for r in runs)
        errs = {k: v[0]["final"]["error"] if not v[0]["final"]["diverged"] else 2.0 for k, v in tried.items()}
        assert errs[d.lr] == min(errs.values())


def test_report_tables_match_runs_and_plots_are_pngs(smoke_dir):
    md = (smoke_dir / "report.md").read_text()
    suite = suite_from_dict(json.loads((smoke_dir / "suite.json").read_text()))
    dec = load(smoke_dir)
    task = suite.tasks[0]
    for label, spec in dec.optimizers():
        errs = [r["final"]["error"] for r in dec.final_runs(task, label, spec)]
        row = next(l for l in md.splitlines() if l.startswith(f"| {label}"))
        m = re.search(r"\| (\d+\.\d+) ± (\d+\.\d+) \|", row)
        assert m, row
        assert float(m.group(1)) == pytest.approx(100 * np.mean(errs), abs=0.006)
        assert float(m.group(2)) == pytest.approx(100 * np.std(errs, ddof=1), abs=0.006)
    assert "time to target" in md.lower() and "Overall" in md
    pngs = sorted((smoke_dir / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"{task}_curves.png", f"{task}_budget.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"plots/{p.name}" in md
    summ = json.loads((smoke_dir / "summary.json").read_text())
    ttt = summ[task]["ttt_curve"]
    assert ttt is None or 0 < ttt <= 1


def test_report_writes_results_md_with_relative_images(smoke_dir, tmp_path):
    from nsf_lab.bench.report import write_report
    target = tmp_path / "docs" / "RESULTS.md"
    target.parent.mkdir()
    write_report(smoke_dir, results_md=target)
    text = target.read_text()
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (target.parent / img).exists(), img


CMD = [sys.executable, "-m", "nsf_lab.bench", "bench", "--suite", "smoke", "--threads", "1", "--device", "cpu"]


def _lines(path):
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            pass
    return out


def test_kill9_then_resume(smoke_dir, tmp_path):
    """``smoke_dir`` (an uninterrupted smoke sweep) is the reference."""
    ref, cut = smoke_dir, tmp_path / "cut"
    ref_runs = {r["run_id"]: r for r in _lines(ref / "runs.jsonl")}
    assert len(ref_runs) >= 10

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(CMD + ["--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 90
    while time.time() < deadline and len(_lines(cut / "runs.jsonl")) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["run_id"]: r for r in _lines(cut / "runs.jsonl")}
    assert 1 <= len(before) < len(ref_runs), "kill should land mid-sweep"
    with open(cut / "runs.jsonl", "ab") as f:  # and simulate a torn final write on top
        f.write(b'{"run_id": "torn", "conf')

    res = subprocess.run(CMD + ["--out", str(cut)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    after = _lines(cut / "runs.jsonl")
    ids = [r["run_id"] for r in after]
    assert len(ids) == len(set(ids)), "a finished run was repeated"
    assert set(ids) == set(ref_runs), "resumed sweep differs from an uninterrupted one"
    for rid, rec in before.items():  # finished runs kept as they were, not redone
        assert next(r for r in after if r["run_id"] == rid)["finished_at"] == rec["finished_at"]
    for r in after:  # same results as the uninterrupted sweep
        assert r["final"]["error"] == ref_runs[r["run_id"]]["final"]["error"]
        assert (cut / r["curve_file"]).exists()
    assert len((cut / "starts.log").read_text().splitlines()) == 2  # the start and the resume, each logged
    # a third call has nothing left to do
    res = subprocess.run(CMD + ["--out", str(cut)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and len(_lines(cut / "runs.jsonl")) == len(ids)


def test_report_reads_decisions_json_unless_it_is_older_than_the_runs(smoke_dir, tmp_path):
    import shutil

    from nsf_lab.bench.report import write_report
    d = tmp_path / "copy"
    shutil.copytree(smoke_dir, d)
    dec = json.loads((d / "decisions.json").read_text())
    dec["arms"] = [a for a in dec["arms"] if a[0] != "SGD-M"]  # a decision the planner would not take
    (d / "decisions.json").write_text(json.dumps(dec))
    md = write_report(d).read_text()
    assert "| SGD-M" not in md and "| Adam" in md  # read, not re-planned
    os.utime(d / "decisions.json", ns=(0, 0))  # older than runs.jsonl: a driver killed after its last decision
    assert "| SGD-M" in write_report(d).read_text()


def test_bench_logs_each_start_with_its_code_and_arguments(smoke_dir):
    from nsf_lab.experiment.store import code_revision
    lines = (smoke_dir / "starts.log").read_text().splitlines()
    assert len(lines) == 1
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ start ", lines[0])
    assert f" start {code_revision()} bench --suite smoke --out {smoke_dir} " in lines[0]


def test_code_revision_is_the_checkouts_commit_and_says_dirty(tmp_path):
    from nsf_lab.experiment.store import code_revision
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "src"], ["commit", "-q", "-m", "c"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_revision(tmp_path / "src") == head
    (tmp_path / "src" / "new.py").write_text("")  # untracked: still the commit's code
    assert code_revision(tmp_path / "src") == head
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert code_revision(tmp_path / "src") == head + "+dirty"
    assert "not a git checkout" in code_revision(tmp_path / "elsewhere" / "src")

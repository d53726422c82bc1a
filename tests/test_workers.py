"""Parallel sweeps (issue #12): a process pool (--workers) and Ray give the records of one process; a worker
that dies fails only its run; kill -9 of the driver with workers, then resume: nothing doubled, nothing lost."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nsf_lab.experiment.store import RunStore, run_id
from nsf_lab.experiment import sweep as S

CMD = [sys.executable, "-m", "nsf_lab.bench", "bench", "--suite", "smoke", "--threads", "1", "--device", "cpu"]


def die_on_seed_1(config, meta, device, data_root, threads):
    """A worker's job that ends its process (as an out-of-memory kill would) for seed 1."""
    if config["seed"] == 1:
        os._exit(3)
    return {"run_id": run_id(config), "config": config, "final": {"error": 0.1, "loss": 0.2}, **meta}, {"step": [1]}


def test_a_worker_that_dies_fails_only_its_run_and_is_replaced(tmp_path):
    sw = S.Sweep(tmp_path, {"name": "t"})
    configs = [{"task": "t", "seed": s} for s in (0, 1, 2, 3, 4, 5)]
    plan = lambda: [(c, {"stage": "t"}) for c in configs if run_id(c) not in sw.store.records()]
    stats = S.drive(sw, plan, S.PoolEngine(2, work=die_on_seed_1))
    assert stats == {"done": 6, "failed": 1}
    recs = RunStore(tmp_path).records()
    assert set(recs) == {run_id(c) for c in configs}
    dead = recs[run_id(configs[1])]
    assert dead["final"]["failed"] and dead["final"]["error_message"] == S.WORKER_DIED
    assert all(recs[run_id(c)]["final"]["error"] == 0.1 for c in configs if c["seed"] != 1)


def records(d):
    out = {}
    for raw in (d / "runs.jsonl").read_bytes().splitlines():
        try:
            r = json.loads(raw)
        except ValueError:
            continue
        assert r["run_id"] not in out, "a run recorded twice"
        out[r["run_id"]] = r
    return out


def same_results(a: dict, b: dict):
    assert set(a) == set(b)
    for rid in a:
        fa = {k: v for k, v in a[rid]["final"].items() if k != "wall_s"}
        fb = {k: v for k, v in b[rid]["final"].items() if k != "wall_s"}
        assert fa == fb, rid
        assert a[rid]["config"] == b[rid]["config"] and a[rid]["stage"] == b[rid]["stage"]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    out = tmp_path_factory.mktemp("w1")
    res = subprocess.run(CMD + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return records(out)


def test_two_workers_give_the_records_of_one(one_worker, tmp_path):
    res = subprocess.run(CMD + ["--out", str(tmp_path), "--workers", "2"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    same_results(one_worker, records(tmp_path))
    dec = json.loads((tmp_path / "decisions.json").read_text())
    assert dec["complete"] and dec["tuning"]["digits-mlp-tiny"]["Adam"]["lr"] > 0


def test_kill9_of_the_driver_with_workers_then_resume(one_worker, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(CMD + ["--out", str(tmp_path), "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    path = tmp_path / "runs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < 3) \
            and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records(tmp_path)
    assert 1 <= len(before) < len(one_worker), "the kill should land mid-sweep"
    res = subprocess.run(CMD + ["--out", str(tmp_path), "--workers", "2"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    after = records(tmp_path)  # asserts that no run is recorded twice
    same_results(one_worker, after)
    assert all(after[rid]["finished_at"] == r["finished_at"] for rid, r in before.items())  # kept, not redone


def test_ray_local_gives_the_records_of_the_pool(one_worker, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install nsf[ray])")
    res = subprocess.run(CMD + ["--out", str(tmp_path), "--ray"], capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    same_results(one_worker, records(tmp_path))

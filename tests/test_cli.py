"""The CLI's error boundary (issue #11): a user error is one line on stderr and exit code 2, and a refused command
writes nothing; an internal failure keeps its traceback and exit code 1."""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from nsf_lab import cli


def run_cli(argv, capsys):
    """Exit code and stderr of ``nsf argv`` in this process (argparse errors exit through SystemExit)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_user_error(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# Every subcommand over bad inputs: {out} is a fresh path, {file} an existing regular file, {sweep} a directory
# holding a sweep, {missing} a path that does not exist.
BAD_INPUTS = [
    # bench
    (["bench", "--out", "{out}", "--seeds", "-1"], ["--seeds", "at least 1"]),
    (["bench", "--out", "{out}", "--seeds", "two"], ["--seeds", "not an integer"]),
    (["bench", "--out", "{out}", "--threads", "0"], ["--threads"]),
    (["bench", "--out", "{out}", "--workers", "0"], ["--workers"]),
    (["bench", "--out", "{out}", "--tasks", "nosuch"], ["--tasks", "nosuch", "valid tasks"]),
    (["bench", "--out", "{out}", "--tasks", "digits-mlp,"], ["--tasks"]),
    (["bench", "--out", "{out}", "--opt", "nsf:p=banana"], ["--opt", "banana"]),
    (["bench", "--out", "{out}", "--opt", "nosuchopt"], ["--opt", "nosuchopt"]),
    (["bench", "--out", "{out}", "--opt", "nsf:p=cyclic(0,0.5,cycles=0)"], ["--opt", "cycles"]),
    (["bench", "--out", "{out}", "--suite", "nosuch"], ["--suite"]),
    (["bench", "--out", "{out}", "--device", "gpu"], ["--device"]),
    (["bench", "--out", "{out}", "--ray", "--workers", "2"], ["--ray", "--workers"]),
    (["bench", "--out", "{out}", "--data-root", "{missing}"], ["--data-root", "no such directory"]),
    (["bench", "--out", "{file}"], ["--out", "not a directory"]),
    (["bench", "--out", "{file}/run"], ["--out", "not a directory"]),
    (["bench", "--out", "/proc/nsf-cannot-write"], ["--out", "cannot write"]),
    (["bench"], ["--out", "required"]),
    # report
    (["report", "{missing}"], ["no sweep"]),
    (["report", "{file}"], ["not a directory"]),
    (["report", "{sweep}", "--notes", "{missing}"], ["--notes", "no such file"]),
    (["report", "{sweep}", "--results-md", "{file}/RESULTS.md"], ["--results-md", "not a directory"]),
    (["report", "{sweep}", "--results-md", "{sweep}"], ["--results-md", "is a directory"]),
    (["report", "{sweep}", "--plots-dir", "{file}"], ["--plots-dir", "not a directory"]),
    (["report", "{sweep}", "--plot-prefix", "a/b_"], ["--plot-prefix"]),
    # demo
    (["demo", "--optimizers", "adamm"], ["--optimizers", "adamm"]),
    (["demo", "--optimizers", "adam", "nsf:p=cyclic(0,0.5,cycles=100000)"], ["--optimizers", "cycles"]),
    (["demo", "--threads", "0"], ["--threads", "at least 1"]),
    (["demo", "--epochs", "-3"], ["--epochs", "at least 1"]),
    (["demo", "--epochs", "0"], ["--epochs"]),
    (["demo", "--seed", "-1"], ["--seed", "at least 0"]),
    (["demo", "--seed", "x"], ["--seed", "not an integer"]),
    # spectrum
    (["spectrum", "fprinciple", "--out", "{out}", "--optimizers", "bogus"], ["--optimizers", "bogus"]),
    (["spectrum", "alignment", "--out", "{out}", "--optimizers", "adam:lr=-1"], ["--optimizers"]),
    (["spectrum", "filtering", "--out", "{out}", "--datasets", "cifar"], ["--datasets", "cifar"]),
    (["spectrum", "response", "--out", "{out}", "--noise", "-1"], ["--noise", ">= 0"]),
    (["spectrum", "response", "--out", "{out}", "--noise", "nan"], ["--noise"]),
    (["spectrum", "fprinciple", "--out", "{out}", "--steps", "0"], ["--steps", "at least 1"]),
    (["spectrum", "filtering", "--out", "{out}", "--seeds", "-1"], ["--seeds", "at least 1"]),
    (["spectrum", "filtering", "--out", "{out}", "--seeds", "0-4"], ["--seeds", "not an integer"]),
    (["spectrum", "alignment", "--out", "{out}", "--seeds", "1,-2"], ["--seeds", "non-negative"]),
    (["spectrum", "alignment", "--out", "{out}", "--workers", "0"], ["--workers"]),
    (["spectrum", "response", "--out", "{out}", "--threads", "0"], ["--threads"]),
    (["spectrum", "fprinciple", "--out", "{out}", "--lr-grid", "1,0.1,0.5"], ["--lr-grid"]),
    (["spectrum", "fprinciple", "--out", "{out}", "--lr-grid", "1e-3,inf,0.5"], ["--lr-grid"]),
    (["spectrum", "response", "--quick", "--out", "{file}"], ["--out", "not a directory"]),
    (["spectrum", "response", "--quick", "--out", "/proc/nsf-cannot-write"], ["--out", "cannot write"]),
    (["spectrum", "response", "--replot", "--out", "{missing}"], ["--replot", "response.json"]),
    (["spectrum", "nonsense", "--out", "{out}"], ["invalid choice"]),
    (["spectrum", "response"], ["--out", "required"]),
    # the command itself
    ([], ["required"]),
    (["frobnicate"], ["invalid choice"]),
]


@pytest.fixture
def no_work(monkeypatch):
    """Every subcommand's work replaced by a failure (an internal error: traceback, exit code 1), so that a bad
    input passes only if it is refused before any work starts."""
    import nsf_lab.bench.report
    import nsf_lab.demo
    import nsf_lab.experiment.sweep

    def work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(nsf_lab.experiment.sweep.Sweep, "create", work)
    monkeypatch.setattr(nsf_lab.experiment.sweep, "drive", work)
    monkeypatch.setattr(nsf_lab.bench.report, "write_report", work)
    monkeypatch.setattr(nsf_lab.demo, "train_digits", work)
    for name in ("response", "fprinciple", "filtering", "alignment"):
        module = importlib.import_module(f"nsf_lab.spectral.{name}")
        monkeypatch.setattr(module, "run", work)
        monkeypatch.setattr(module, "plot", work)


def snapshot(root) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(pathlib.Path(root).rglob("*"))}


@pytest.mark.parametrize("argv, words", BAD_INPUTS, ids=[" ".join(a) or "(none)" for a, _ in BAD_INPUTS])
def test_a_bad_input_is_one_line_exit_2_and_nothing_done(argv, words, tmp_path, capsys, no_work):
    if any(a.startswith("/proc/") for a in argv) and not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "suite.json").write_text(json.dumps({"name": "smoke", "tasks": [], "baselines": []}))
    paths = {"out": tmp_path / "out", "file": tmp_path / "file", "sweep": tmp_path / "sweep",
             "missing": tmp_path / "missing"}
    before = snapshot(tmp_path)
    try:
        code = cli.main([a.format(**paths) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    assert_user_error(code, err, *words)
    assert out == ""
    assert snapshot(tmp_path) == before  # nothing written, not even an empty output folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(out), "--device", "cuda"], capsys)
    assert_user_error(code, err, "CUDA")
    assert not out.exists()


def test_corrupt_suite_json_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "suite.json").write_text('{"name": "smoke", "tasks": [')
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(tmp_path)], capsys)
    assert_user_error(code, err, "suite.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]
    (tmp_path / "suite.json").write_text('{"name": "smoke", "tasks": [], "baselines": [], "rule": "zigzag"}')
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(tmp_path)], capsys)
    assert_user_error(code, err, "suite.json", "zigzag")
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert_user_error(code, err, "suite.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json"]


def test_other_suite_in_the_directory(tmp_path, capsys):
    from nsf_lab.bench.suites import get_suite, suite_to_dict
    (tmp_path / "suite.json").write_text(json.dumps(suite_to_dict(get_suite("quick"))))
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(tmp_path)], capsys)
    assert_user_error(code, err, "quick")


def test_ray_missing_is_a_one_line_install_hint(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent)] + sys.path))
    res = subprocess.run([sys.executable, "-m", "nsf_lab.bench", "bench", "--suite", "smoke", "--ray",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "pip install nsf[ray]" in res.stderr and not (tmp_path / "run").exists()


def test_internal_error_keeps_its_traceback_and_exit_code_1(tmp_path):
    code = ("import sys; import nsf_lab.bench.cli as c; from nsf_lab.cli import main\n"
            "def boom(args): raise RuntimeError('internal bug')\n"
            "c._report = boom\n"
            f"sys.exit(main(['report', {str(tmp_path)!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" in res.stderr and "RuntimeError: internal bug" in res.stderr


def test_damaged_runs_line_is_skipped_with_its_line_number(tmp_path, capsys):
    from nsf_lab.experiment.store import RunStore, make_config, run_id

    (tmp_path / "suite.json").write_text(json.dumps({"name": "smoke", "tasks": ["digits-mlp-tiny"],
                                                     "baselines": [["Adam", "adam"]], "ablations": False}))
    store = RunStore(tmp_path)
    cfg = make_config("digits-mlp-tiny", "adam", 1e-3, 100, 1.0, "val")
    store.add({"run_id": run_id(cfg), "config": cfg, "final": {"error": 0.5, "loss": 1.0, "diverged": False,
                                                              "steps": 10}}, {"step": [10]})
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write(json.dumps({"run_id": "x", "config": cfg}) + "\n")  # a line without its "final" metrics
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 0, err
    assert "line 2 is damaged" in err and (tmp_path / "report.md").exists()


def test_python_dash_m_nsf_is_the_command_with_its_exit_code(tmp_path):
    """scripts/reproduce.sh runs ``$PYTHON -m nsf``: a user error there is one line on stderr and exit code 2."""
    r = subprocess.run([sys.executable, "-m", "nsf_lab", "report", str(tmp_path / "nosuch")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nsf report: error:" in r.stderr


def test_version(capsys):
    import nsf

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"nsf {nsf.__version__}\n"


# ----------------------------------------------------------------------------------------------------------
# A p cycle stated per run is resolved by each run's own length, wherever the command knows it

PER_RUN = "nsf:p=cyclic(0,0.5,cycles=2)"


def test_bench_runs_a_cycle_stated_per_run_over_each_runs_length(tmp_path, capsys):
    from nsf.schedules import Cyclic
    from nsf_lab.experiment.store import RunStore

    out = tmp_path / "run"
    assert cli.main(["bench", "--suite", "smoke", "--out", str(out), "--seeds", "1", "--opt", PER_RUN]) == 0
    store = RunStore(out)
    mine = [r for r in store.records().values() if isinstance(r["config"]["optimizer"].get("p"), dict)
            and r["config"]["optimizer"]["p"].get("cycles") == 2.0]
    assert mine and not any(r["final"].get("failed") for r in mine)
    for r in mine:  # p after each evaluated step: two whole cycles over this run's steps
        cycle = Cyclic(0.0, 0.5, cycles=2, total_steps=r["final"]["steps"])
        c = store.curves(r["run_id"])
        assert c["p"] == pytest.approx([cycle(s - 1) for s in c["step"]])


def test_spectrum_runs_a_cycle_stated_per_run(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["spectrum", "response", "--quick", "--no-progress", "--out", str(out),
                     "--optimizers", PER_RUN]) == 0
    r = json.loads((out / "response.json").read_text())["results"][PER_RUN]["noise=0"]
    assert (r["p_min"], r["p_max"]) == pytest.approx((0.0, 0.5))  # the whole cycle, inside the measured window


def test_demo_runs_a_cycle_stated_per_run_and_shows_progress_within_a_row(capsys):
    assert cli.main(["demo", "--epochs", "4", "--threads", "1", "--optimizers", PER_RUN]) == 0
    out, err = capsys.readouterr()
    steps = int(out.split(" steps)")[0].rsplit("(", 1)[1])
    row = out.strip().splitlines()[-1]
    assert row.startswith("nsf:p=cyclic(0,0.5,cycles=2") and "0.00..0.50" in row  # two whole cycles in the run
    assert f"/{steps} [" in err and "step" in err  # a progress bar over the row's steps

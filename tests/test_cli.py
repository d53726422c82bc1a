"""The CLI's error boundary (issue #11): a user error is one line on stderr and exit code 2, and a refused command
writes nothing; an internal failure keeps its traceback and exit code 1."""
import json
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


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "-1"], ["--seeds", "at least 1"]),
    (["--seeds", "two"], ["--seeds", "not an integer"]),
    (["--threads", "0"], ["--threads"]),
    (["--workers", "0"], ["--workers"]),
    (["--tasks", "nosuch"], ["--tasks", "nosuch", "valid tasks"]),
    (["--opt", "nsf:p=banana"], ["--opt", "banana"]),
    (["--opt", "nosuchopt"], ["--opt", "nosuchopt"]),
    (["--suite", "nosuch"], ["--suite"]),
    (["--ray", "--workers", "2"], ["--ray", "--workers"]),
])
def test_bad_bench_options_are_one_line_and_write_nothing(argv, words, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(out)] + argv, capsys)
    assert_user_error(code, err, *words)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(out), "--device", "cuda"], capsys)
    assert_user_error(code, err, "CUDA")
    assert not out.exists()


def test_out_is_an_existing_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    code, err = run_cli(["bench", "--suite", "smoke", "--out", str(f)], capsys)
    assert_user_error(code, err, "not a directory")
    assert f.read_text() == "keep me"


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


def test_report_on_a_directory_without_a_sweep(tmp_path, capsys):
    code, err = run_cli(["report", str(tmp_path / "typo")], capsys)
    assert_user_error(code, err, "no sweep")
    assert not (tmp_path / "typo").exists()
    code, err = run_cli(["report", str(tmp_path)], capsys)
    assert_user_error(code, err, "no sweep")
    assert list(tmp_path.iterdir()) == []


def test_ray_missing_is_a_one_line_install_hint(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    import os
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


@pytest.mark.parametrize("argv, words", [
    (["filtering", "--seeds", "-1"], ["--seeds", "at least 1"]),
    (["filtering", "--seeds", "0-4"], ["--seeds", "not an integer"]),
    (["alignment", "--seeds", "1,-2"], ["--seeds", "non-negative"]),
    (["response", "--threads", "0"], ["--threads"]),
])
def test_bad_spectrum_options(argv, words, tmp_path, capsys):
    code, err = run_cli(["spectrum"] + argv + ["--out", str(tmp_path / "o")], capsys)
    assert_user_error(code, err, *words)
    assert not (tmp_path / "o").exists()


def test_spectrum_out_is_a_file_and_replot_without_data(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    code, err = run_cli(["spectrum", "response", "--quick", "--out", str(f)], capsys)
    assert_user_error(code, err, "not a directory")
    code, err = run_cli(["spectrum", "response", "--replot", "--out", str(tmp_path)], capsys)
    assert_user_error(code, err, "--replot", "response.json")


def test_python_dash_m_nsf_is_the_command_with_its_exit_code(tmp_path):
    """scripts/reproduce.sh runs ``$PYTHON -m nsf``: a user error there is one line on stderr and exit code 2."""
    r = subprocess.run([sys.executable, "-m", "nsf_lab", "report", str(tmp_path / "nosuch")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nsf report: error:" in r.stderr

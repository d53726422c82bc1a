"""Benchmark tasks and one benchmark run: per-run p cycles, the paper-regime tasks, stable run ids."""
import math

import pytest
import torch

from nsf_lab.experiment.store import make_config, run_id
from nsf_lab.experiment import data as D
from nsf_lab.experiment import train as T
from nsf_lab.experiment.tasks import TASKS, Task


def _dense_digits_task(steps_per_epoch: int = 20, epochs: int = 2) -> Task:
    """40 steps on digits, evaluated (and p logged) after every step."""
    return Task("cycle-probe", "digits", "mlp", epochs=epochs, batch_size=64, model_kw={"hidden": [16]},
                steps_per_epoch=steps_per_epoch, early_evals_per_epoch=steps_per_epoch, early_epochs=epochs)


@pytest.mark.parametrize("budget, k", [(1.0, 4), (0.5, 2)])
def test_a_per_run_cycle_completes_exactly_k_cycles_in_a_run(budget, k):
    """The run's length reaches the optimizer: p (logged per step: the value each step used) runs k whole cosine
    cycles over the run, also when a budget run compresses it (the p schedule shrinks with the LR schedule)."""
    pytest.importorskip("sklearn")
    cfg = make_config(_dense_digits_task(), f"nsf:p=cyclic(-0.25,0.25,cycles={k},shape=cosine)", 1e-3, 0,
                      budget=budget, split="val")
    out = T.run_config(cfg)
    total = out["final"]["steps"]
    assert total == round(40 * budget) and out["curves"]["step"] == list(range(1, total + 1))
    p = out["curves"]["p"]
    period = total // k
    assert p[0] == pytest.approx(-0.25)  # every cycle starts at low ...
    assert all(p[i] == pytest.approx(p[i + period], abs=1e-12) for i in range(total - period))  # ... k times
    peaks = [i for i in range(total) if p[i] == pytest.approx(0.25)]
    assert len(peaks) == k and peaks == [period // 2 + j * period for j in range(k)]  # and reaches high k times


def test_fsgdm_runs_in_a_benchmark_run():
    """FSGDM's momentum schedule is stated over the run: it needs the run's total steps."""
    pytest.importorskip("sklearn")
    out = T.run_config(make_config(_dense_digits_task(10, 1), "fsgdm", 0.05, 0, split="val"))
    assert not out["final"]["diverged"] and math.isfinite(out["final"]["loss"])


def test_existing_tasks_keep_their_definition_and_run_id():
    """Run ids hash the task definition: new optional fields must not appear in older tasks' dicts."""
    old_keys = {"name", "dataset", "model", "epochs", "batch_size", "model_kw", "warmup", "val_frac",
                "early_evals_per_epoch", "early_epochs", "evals_per_epoch", "steps_per_epoch", "seq_len",
                "eval_windows"}
    for name in ("digits-mlp", "mnist1d-mlp", "fashion-cnn", "shakespeare-gru"):
        assert set(TASKS[name].to_dict()) == old_keys
    assert run_id(make_config("digits-mlp", "adam", 1e-3, 0)) == "5ad403c22da32280"  # as before the new fields
    for name in ("fashion-resnet", "shakespeare-charlm"):
        assert Task(**TASKS[name].to_dict()) == TASKS[name]


def _ids_dataset(n=200, n_test=50) -> D.Dataset:
    """Rows whose label is their index, so splits can be traced through standardisation."""
    x = torch.randn(n + n_test, 1, 2, 2)
    return D.Dataset("ids", x[:n], torch.arange(n), x[n:], torch.arange(n, n + n_test), n + n_test)


def test_train_subset_is_fixed_and_drawn_after_the_validation_carve():
    ds = _ids_dataset()
    full_val = D.prepare(ds, "val", 0.1)
    sub_val, sub_val2 = D.prepare(ds, "val", 0.1, train_subset=64), D.prepare(ds, "val", 0.1, train_subset=64)
    sub_test = D.prepare(ds, "test", 0.1, train_subset=64)
    val_ids = set(full_val.y_test.tolist())
    assert torch.equal(sub_val.y_test, full_val.y_test)  # the validation rows do not depend on the subset
    assert torch.equal(sub_test.y_test, ds.y_test)  # the test set is whole
    sub = set(sub_val.y_train.tolist())
    assert len(sub) == 64 and sub <= set(full_val.y_train.tolist()) and not sub & val_ids
    assert torch.equal(sub_val.y_train, sub_val2.y_train) and torch.equal(sub_val.y_train, sub_test.y_train)
    x = sub_val.x_train  # standardised with the subset's own statistics
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    with pytest.raises(ValueError, match="train_subset"):
        D.prepare(ds, "val", 0.1, train_subset=181)


def _first_batches(monkeypatch, spec, seed, task="fashion-resnet-short", n=3):
    """The first ``n`` training batches a benchmark run of ``spec`` would see (training, evaluation skipped)."""
    seen = []

    def fake_fit(model, opt, batches, steps, **kw):
        seen.extend(batches() for _ in range(n))
        return {"diverged_at": None, "steps_done": steps}
    monkeypatch.setattr(T, "fit", fake_fit)
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: dict.fromkeys(("loss", "acc", "ece", "mean_conf"), 0.0))
    T.run_config(make_config(task, spec, 1e-3, seed, split="val"))
    return seen


def test_augmented_batches_depend_on_the_seed_only(monkeypatch):
    """Every optimizer of one seed sees the same augmented batches; augmentation shifts the training images."""
    try:
        D.load("fashion-mnist")
    except D.DatasetMissing:
        pytest.skip("Fashion-MNIST not installed")
    adam, sgd = _first_batches(monkeypatch, "adam", 0), _first_batches(monkeypatch, "sgd", 0)
    other_seed = _first_batches(monkeypatch, "adam", 1)
    for (xa, ya), (xs, ys) in zip(adam, sgd):
        assert torch.equal(xa, xs) and torch.equal(ya, ys)
    assert not torch.equal(adam[0][0], other_seed[0][0])
    ds = D.prepared("fashion-mnist", "val", 0.1, train_subset=TASKS["fashion-resnet-short"].train_subset)
    plain = T.shuffled_batches(ds.x_train, ds.y_train, 32, torch.Generator().manual_seed(0 + 7919))()
    assert torch.equal(adam[0][1], plain[1]) and not torch.equal(adam[0][0], plain[0])  # same rows, shifted
    assert len(ds.y_train) == 256 and len(ds.y_test) == 6000  # subset for training, full validation split


def test_text_tasks_evaluate_their_split_s_number_of_windows(monkeypatch):
    seen = []
    real = T.evaluate
    monkeypatch.setattr(T, "evaluate", lambda model, ds, task, **kw: seen.append(task.eval_windows)
                        or real(model, ds, task, **kw))
    for split in ("val", "test"):
        T.run_config(make_config("shakespeare-charlm-short", "adam", 1e-3, 0, split=split))
    task = TASKS["shakespeare-charlm-short"]
    assert set(seen) == {task.eval_windows, task.test_windows} and task.eval_windows != task.test_windows
    assert seen[0] == task.eval_windows and seen[-1] == task.test_windows


@pytest.mark.parametrize("name", ["fashion-resnet-short", "shakespeare-charlm-short"])
def test_paper_regime_short_tasks_train(name):
    try:
        out = T.run_config(make_config(name, "adam", 3e-3, 0, split="val"))
    except D.DatasetMissing as e:
        pytest.skip(str(e))
    final, curves = out["final"], out["curves"]
    assert not final["diverged"] and math.isfinite(final["loss"])
    assert final["steps"] == curves["step"][-1] > 0
    assert curves["train_loss"][-1] < curves["train_loss"][0]  # a handful of steps already learn something

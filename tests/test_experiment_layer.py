"""The shared experiment layer: one split order, one ECE, one loop, statistics, atomic JSON."""
import json
import math
import os

import pytest
import torch

from nsf_lab.experiment import data as D
from nsf_lab.experiment import stats as S
from nsf_lab.experiment.metrics import classification_metrics, ece, temperature_scaled_loss
from nsf_lab.experiment.train import evaluate, fit, shuffled_batches
from nsf_lab.experiment.util import jsonable, write_json_atomic


def test_spectral_classification_data_uses_training_row_statistics_only():
    """The validation and test rows must not enter the standardisation (the old spectral order leaked them)."""
    pytest.importorskip("sklearn")
    from nsf_lab.spectral._train import load_classification

    d = load_classification("digits")
    x = d["x_tr"]
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std()) - 1.0) < 1e-5  # one channel: all pixels
    prep = D.prepare(D.load("digits"), "val")
    assert torch.equal(d["x_val"], prep.x_test.reshape(len(prep.x_test), -1))
    assert len(d["y_tr"]) + len(d["y_val"]) == len(D.load("digits").y_train)


def test_demo_default_nsf_completes_its_p_cycles():
    """The demo's "nsf" runs the library default's cycle within the run (two cosine cycles between 0 and ½),
    not the first few percent of the fixed 1000-step period."""
    from nsf_lab import demo
    r = demo.train_digits("nsf", epochs=1)
    assert r["p_range"] == (0.0, 0.5)
    assert r["spec"] == "nsf (2 cycles)"


def test_demo_uses_the_benchmark_digits_split():
    pytest.importorskip("sklearn")
    from nsf_lab import demo

    r = demo.train_digits("adam", epochs=1)
    assert 0.5 < r["test_acc"] <= 1.0
    test = D.prepared("digits", "test").x_test
    assert len(test) == 500  # the benchmark's fixed test set (the demo had its own 400-row split)


def test_one_ece_known_answer_and_bin_edges():
    conf = torch.tensor([0.95, 0.85, 0.65, 0.25, 1.0])
    correct = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    # bins of width 0.1; conf = 1 goes to the last bin together with 0.95
    expected = (2 / 5) * abs(1.0 - (0.95 + 1.0) / 2) + (1 / 5) * 0.15 + (1 / 5) * 0.65 + (1 / 5) * 0.75
    assert ece(conf, correct, n_bins=10) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_temperature_scaled_loss_is_the_minimum_over_temperatures(scale):
    """Newton on 1/T lands on the brute-force minimum of CE(logits / T) for under- and over-confident logits,
    and never above the unscaled loss."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 7, (500,), generator=g)
    z = torch.randn(500, 7, generator=g, dtype=torch.float64) + 2.0 * torch.nn.functional.one_hot(y, 7)
    z = scale * z
    loss, temp = temperature_scaled_loss(z.float(), y)
    temps = torch.logspace(-3, 3, 20001, dtype=torch.float64)
    brute = torch.stack([torch.nn.functional.cross_entropy(z / t, y) for t in temps[::20]])
    i = int(brute.argmin())
    fine = temps[max(0, 20 * i - 20): 20 * i + 21]
    best = min(torch.nn.functional.cross_entropy(z / t, y).item() for t in fine)
    assert loss == pytest.approx(best, abs=1e-6)
    assert loss <= torch.nn.functional.cross_entropy(z, y).item() + 1e-9
    assert torch.nn.functional.cross_entropy(z.float().double() / temp, y).item() == pytest.approx(loss, abs=1e-9)
    assert math.isnan(temperature_scaled_loss(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))[0])


def test_bench_evaluation_and_alignment_metrics_report_the_same_ece():
    torch.manual_seed(0)
    x, y = torch.randn(300, 4), torch.randint(0, 3, (300,))
    model = torch.nn.Linear(4, 3)
    ds = D.Dataset("toy", x, y, x, y, 3)
    from nsf_lab.experiment.tasks import Task

    bench = evaluate(model, ds, Task("toy", "toy", "mlp", 1, 10), full=True)
    with torch.no_grad():
        spectral = classification_metrics(model(x), y)
    assert bench["ece"] == pytest.approx(spectral["ece"], abs=1e-6)
    assert bench["acc"] == pytest.approx(spectral["acc"]) and bench["loss"] == pytest.approx(spectral["loss"], rel=1e-5)


def test_fit_calls_callbacks_from_step_zero_and_stops_on_divergence_or_request():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    seen = []

    def run(stop_at=None, **kw):
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        cb = lambda s, m, loss: seen.append((s, loss)) or s == stop_at  # noqa: E731
        return fit(model, opt, shuffled_batches(x, y, 16, torch.Generator().manual_seed(0)), 10, callbacks=[cb], **kw)

    assert run() == {"diverged_at": None, "steps_done": 10}
    assert seen[0] == (0, None) and [s for s, _ in seen] == list(range(11))
    assert run(stop_at=4)["diverged_at"] == 4
    seen.clear()
    assert run(diverged=lambda loss: True) == {"diverged_at": 1, "steps_done": 1}
    assert [s for s, _ in seen] == [0]  # a diverged step reaches no callback


def test_shuffled_batches_cover_every_row_once_per_pass():
    x = torch.arange(10).float()
    nb = shuffled_batches(x, x, 3, torch.Generator().manual_seed(1))
    first = torch.cat([nb()[0] for _ in range(3)])  # 9 of 10 rows, the 10th dropped
    assert len(set(first.tolist())) == 9
    assert len(set(torch.cat([nb()[0] for _ in range(3)]).tolist())) == 9  # a new permutation


def test_write_json_atomic_leaves_no_partial_file_and_maps_non_finite_to_null(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json_atomic(p, {"x": float("nan"), "t": torch.tensor([1.5, float("inf")]), 3: (1, 2)})
    assert json.loads(p.read_text()) == {"x": None, "t": [1.5, None], "3": [1, 2]}
    assert os.listdir(p.parent) == ["a.json"]
    assert jsonable([float("-inf")]) == [None]


def test_stats_match_scipy():
    st = pytest.importorskip("scipy.stats")
    a, b = [1.0, 2.0, 3.5, 4.0, 2.2], [2.0, 3.0, 3.9, 5.1, 4.0, 6.0]
    w, ref = S.welch(a, b), st.ttest_ind(a, b, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (w["lo"], w["hi"]) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
    p, ref = S.paired(a, b[:5]), st.ttest_rel(a, b[:5])
    assert p["p"] == pytest.approx(ref.pvalue, rel=1e-9) and p["n"] == 5
    for df in (1, 2, 4, 9, 30, 200):
        assert S.t_quantile(0.975, df) == pytest.approx(st.t.ppf(0.975, df), rel=1e-10)
    c = S.mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    assert c["n"] == 3 and c["n_missing"] == 2 and c["ci95"] == pytest.approx(st.t.ppf(0.975, 2) / math.sqrt(3))


def test_stats_skip_missing_values_and_handle_degenerate_samples():
    assert S.mean([1.0, None, float("inf"), 3.0]) == 2.0 and math.isnan(S.mean([]))
    assert S.mean_sd([2.0]) == (2.0, 0.0, 1)
    assert S.welch([1.0], [2.0, 3.0]) is None and S.paired([1.0], [2.0]) is None
    assert S.welch([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    lo, hi = S.bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
    assert 1.0 <= lo < 2.5 < hi <= 4.0 and (lo, hi) == S.bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)

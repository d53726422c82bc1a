"""The one LR tuner (nsf_lab.experiment.tuner) on synthetic score functions: each rule property has a test."""
import math

import pytest

from nsf_lab.experiment.tuner import INF, LR_GRID, Grid, LRTuner, mean_score, score, tune


def bowl(opt, noise=None):
    """A score with its minimum at ``opt``; ``noise(seed)`` shifts the minimum per seed."""
    def run(lr, seed):
        c = math.log10(opt) + (noise(seed) if noise else 0.0)
        return (0, (math.log10(lr) - c) ** 2, 0.0)
    return run


def counting(run):
    calls = []

    def f(lr, seed):
        calls.append((lr, seed))
        return run(lr, seed)
    return f, calls


def bracketed(d, lr):
    below = [x for x in d.scores if x < lr and Grid().on_lattice(x) and Grid().fine(x) % 2 == 0]
    above = [x for x in d.scores if x > lr and Grid().on_lattice(x) and Grid().fine(x) % 2 == 0]
    return len(below) >= 2 and len(above) >= 2


def test_grid_points_and_snap():
    g = Grid.default()
    assert LR_GRID == [round(10 ** (k / 2), 12) for k in range(-10, 3)]  # the archive's run ids depend on it
    assert g.points() == LR_GRID and g.snap(2.5e-3) == LR_GRID[g.range[1] - g.range[0] - 7] == 0.00316227766
    assert g.snap(1e4) == 10.0 and g.snap(1e-9) == 1e-5  # clamped to the declared grid
    assert g.on_lattice(g.at(-7)) and not g.on_lattice(2e-3)  # -7 = a quarter-decade point
    with pytest.raises(ValueError):
        Grid(1.0, 0.1)


def test_score_orders_divergence_last_and_criteria():
    ok = {"final": {"error": 0.2, "loss": 0.7, "diverged": False}}
    assert score(ok) == (0, 0.2, 0.7) and score(ok, "loss") == (0, 0.7, 0.2)
    assert score(ok["final"]) == (0, 0.2, 0.7)  # a metrics dict works too
    assert score({"final": {"error": 0.9, "loss": None, "diverged": True}}) == (1, INF, INF)
    assert score(None) == (2, INF, INF) and score(None) > score({"error": 1, "loss": 1e9}) > score(ok)
    with pytest.raises(ValueError):
        score(ok, "accuracy")


def test_full_rule_evaluates_the_whole_declared_grid_first():
    t = LRTuner(1e-3, rule="full", seeds=(100, 101))
    assert t.pending({}) == LR_GRID
    half = {lr: [(0, 1.0, 0.0)] for lr in LR_GRID}  # one seed of two: nothing is complete
    assert t.pending(half) == LR_GRID
    with pytest.raises(ValueError, match="pending"):
        t.decide(half)


def test_full_rule_extends_past_the_edge_until_two_worse_points_each_side():
    run, calls = counting(bowl(10 ** -6.5))  # optimum 1.5 decades below the declared grid
    d = tune(run, LRTuner(rule="full", max_points=20))
    assert d.lr == pytest.approx(10 ** -6.5) and d.flags == []
    assert bracketed(d, d.lr)
    assert min(lr for lr, _ in calls) == pytest.approx(10 ** -7.5)  # exactly two worse points below, no more
    assert len(calls) == len(set(calls))  # nothing evaluated twice
    run, _ = counting(bowl(100.0))  # and above
    d = tune(run, LRTuner(rule="full", max_points=20))
    assert d.lr == 100.0 and bracketed(d, d.lr) and max(d.scores) == pytest.approx(10 ** 3)


def test_full_rule_refines_a_quarter_decade_around_the_best():
    run, calls = counting(bowl(10 ** -2.25))
    d = tune(run, LRTuner(rule="full"))
    assert d.lr == round(10 ** -2.25, 12)
    coarse = set(LR_GRID)
    extra = sorted({lr for lr, _ in calls} - coarse)
    # exactly two refinement points, a quarter decade either side of the coarse best (1e-2.5 or 1e-2: a tie)
    assert len(extra) == 2 and math.log10(extra[1]) - math.log10(extra[0]) == pytest.approx(0.5)
    assert d.lr in extra


def test_full_rule_decides_on_the_mean_over_tuning_seeds():
    # seed 100 alone would pick 1e-3, seed 101 alone 1e-1; their mean is lowest at 1e-2
    noise = {100: -1.0, 101: 1.0}.get
    single = tune(bowl(1e-2, noise), LRTuner(rule="full", seeds=(100,)))
    both = tune(bowl(1e-2, noise), LRTuner(rule="full", seeds=(100, 101)))
    assert single.lr == pytest.approx(1e-3) and both.lr == pytest.approx(1e-2)
    per = [(0, 0.1, 1.0), (0, 0.3, 3.0)]
    assert mean_score(per) == pytest.approx((0, 0.2, 2.0))
    assert mean_score([(0, 0.1, 1.0), (1, INF, INF)]) > (0, 0.9, 9.0)  # a diverged seed loses the lr


def test_divergence_counts_as_worst():
    def run(lr, seed):
        return (1, INF, INF) if lr > 1e-3 else (0, -math.log10(lr), 0.0)  # better up to where it diverges
    d = tune(run, LRTuner(rule="full"))
    assert d.lr == pytest.approx(1e-3) and d.flags == []


def test_flags_cap_edge_and_within_one_sample():
    d = tune(bowl(1e-9), LRTuner(rule="full", max_points=15))
    assert "cap" in d.flags and "edge" in d.flags and d.lr == round(10 ** -6.25, 12)  # refined past the last point
    # two lrs whose errors differ by less than one validation sample (1/130)
    def run(lr, seed):
        return (0, {1e-3: 0.10, 0.00316227766: 0.105}.get(lr, 0.5), 0.0)
    assert "within-one-sample" in tune(run, LRTuner(rule="full", resolution=1 / 130)).flags
    assert "within-one-sample" not in tune(run, LRTuner(rule="full", resolution=1 / 1000)).flags
    assert tune(run, LRTuner(rule="full")).flags == []


def test_walk_rule_starts_at_the_reference_and_extends_toward_the_better_side():
    g = Grid.default()
    run, calls = counting(bowl(1e-1))
    t = LRTuner(1e-3, rule="walk", max_points=8)
    assert t.pending({}) == [g.at(-7 * 2), 1e-3, g.at(-5 * 2)]  # the reference and its neighbours
    d = tune(run, t)
    assert d.lr == pytest.approx(1e-1) and d.flags == []
    assert [lr for lr, _ in calls] == [g.at(-14), 1e-3, g.at(-10), 1e-2, g.at(-6), 1e-1, g.at(-2)]
    capped = tune(bowl(1e-1), LRTuner(1e-3, rule="walk", max_points=4))
    assert capped.lr == pytest.approx(1e-2) and capped.flags == ["cap"] and len(capped.scores) == 4
    edge = tune(bowl(1e3), LRTuner(3.0, rule="walk"))
    assert edge.lr == 10.0 and edge.flags == ["edge"]


def test_walk_ignores_scores_off_its_path():
    t = LRTuner(1e-3, rule="walk")
    scores = {lr: [bowl(1e-3)(lr, 100)] for lr in LR_GRID}
    scores[1e-5] = [(0, -5.0, 0.0)]  # best of all, but the walk never goes there
    d = t.decide(scores)
    assert d.lr == 1e-3 and 1e-5 not in d.scores and len(d.scores) == 3


def test_rule_and_seed_validation():
    with pytest.raises(ValueError, match="rule"):
        LRTuner(1e-3, rule="grid")
    with pytest.raises(ValueError, match="seed"):
        LRTuner(1e-3, seeds=())
    with pytest.raises(ValueError, match="start_lr"):
        LRTuner(rule="walk")


def test_bare_number_scores_work_and_nan_counts_as_diverged():
    run = lambda lr, seed: float("nan") if lr > 0.1 else (math.log10(lr) + 2) ** 2
    d = tune(run, LRTuner(rule="full", resolution=1e-9))
    assert d.lr == pytest.approx(1e-2) and d.scores[10.0] == (1, INF)

"""Schedules: closed form in the step count, serialisable, validated."""

from __future__ import annotations

import io
import math

import pytest
import torch

from nsf import schedules as S
from helpers import cyclic_value


def test_cyclic_triangle_matches_independent_formula_and_starts_low():
    sched = S.Cyclic(-0.25, 0.5, period=10)
    assert [sched(s) for s in range(25)] == pytest.approx([cyclic_value(s, -0.25, 0.5, 10) for s in range(25)])
    assert sched(0) == -0.25 and sched(5) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", S.Cyclic.SHAPES)
def test_cyclic_shapes_periodic_and_bounded(shape):
    sched = S.Cyclic(-0.3, 0.7, period=12, shape=shape)
    values = [sched(s) for s in range(48)]
    assert all(-0.3 - 1e-12 <= v <= 0.7 + 1e-12 for v in values)
    assert values[:12] == pytest.approx(values[12:24])
    assert values[:12] == pytest.approx(values[36:48])
    assert max(values) == pytest.approx(0.7) and min(values) == pytest.approx(-0.3)


def test_cyclic_shape_specifics():
    assert S.Cyclic(0, 1, 8, "square")(3) == 0 and S.Cyclic(0, 1, 8, "square")(4) == 1
    assert S.Cyclic(0, 1, 8, "sine")(0) == pytest.approx(0.5) and S.Cyclic(0, 1, 8, "sine")(2) == pytest.approx(1)
    assert S.Cyclic(0, 1, 8, "cosine")(4) == pytest.approx(1) and S.Cyclic(0, 1, 8, "cosine")(2) == pytest.approx(0.5)


def test_phase_shifts_by_a_fraction_of_the_period():
    base, shifted = S.Cyclic(0, 1, 20, "cosine"), S.Cyclic(0, 1, 20, "cosine", phase=0.25)
    assert [shifted(s) for s in range(40)] == pytest.approx([base(s + 5) for s in range(40)])


@pytest.mark.parametrize("shape", S.Anneal.SHAPES)
def test_anneal_is_monotone_and_holds_its_end(shape):
    sched = S.Anneal(0.5, 0.0, steps=100, shape=shape)
    values = [sched(s) for s in range(150)]
    assert values[0] == 0.5 and values[100] == 0.0 and values[149] == 0.0
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_sequence_joins_segments_with_local_step_counts():
    seq = S.Sequence([(10, S.Constant(0.5)), (20, S.Anneal(0.5, 0.0, 20)), (1, S.Cyclic(-0.1, 0.1, 4))])
    assert seq(9) == 0.5 and seq(10) == 0.5 and seq(20) == pytest.approx(0.25) and seq(29) == pytest.approx(0.025)
    assert [seq(30 + s) for s in range(8)] == pytest.approx([cyclic_value(s, -0.1, 0.1, 4) for s in range(8)])


SCHEDULES = [
    S.Constant(0.3),
    S.Cyclic(-0.25, 0.25, 100, "sine", 0.1),
    S.Anneal(0.5, 0.0, 1000, "cosine"),
    S.Sequence([(50, S.Constant(0.5)), (10, S.Cyclic(0, 0.5, 7, "square"))]),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_round_trip_through_weights_only_load(sched):
    buffer = io.BytesIO()
    torch.save({"schedule": sched.to_dict()}, buffer)
    buffer.seek(0)
    restored = S.from_dict(torch.load(buffer, weights_only=True)["schedule"])
    assert restored == sched
    assert [restored(s) for s in range(0, 500, 7)] == [sched(s) for s in range(0, 500, 7)]


def test_callable_schedule_works_but_has_no_description():
    sched = S.as_schedule(lambda step: 0.1 * (step % 3))
    assert sched(4) == pytest.approx(0.1) and sched.to_dict() is None
    assert S.Sequence([(5, sched), (5, S.Constant(0))]).to_dict() is None
    with pytest.raises(ValueError, match="finite"):
        S.as_schedule(lambda step: math.nan)(0)


def test_epochs_helper():
    assert S.epochs(2, steps_per_epoch=391) == 782 and S.epochs(0.5, 10) == 5
    with pytest.raises(ValueError, match="steps_per_epoch"):
        S.epochs(1, 0)
    with pytest.raises(ValueError, match="less than one step"):
        S.epochs(0.01, 10)


@pytest.mark.parametrize("make, name", [
    (lambda: S.Cyclic(0, 1, 0), "period"),
    (lambda: S.Cyclic(0, 1, 2.5), "period"),
    (lambda: S.Cyclic(1, 0, 10), "high"),
    (lambda: S.Cyclic(0, 1, 10, "zigzag"), "shape"),
    (lambda: S.Cyclic(0, math.inf, 10), "high"),
    (lambda: S.Cyclic(0, 1, 10, phase=math.nan), "phase"),
    (lambda: S.Anneal(0, 1, -1), "steps"),
    (lambda: S.Anneal(0, 1, 10, "step"), "shape"),
    (lambda: S.Constant(math.nan), "value"),
    (lambda: S.Sequence([]), "segments"),
    (lambda: S.Sequence([(0, 0.5)]), "steps"),
    (lambda: S.from_dict({"type": "zigzag"}), "zigzag"),
    (lambda: S.as_schedule("0.5"), "schedule"),
])
def test_bad_parameters_raise_naming_them(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("cycles, total", [(4, 1000), (3, 1000), (1, 7), (2.5, 100)])
def test_cycles_per_run_complete_exactly_in_the_run(cycles, total):
    sched = S.Cyclic(-0.25, 0.25, cycles=cycles, total_steps=total, shape="cosine")
    length = total / cycles
    values = [sched(s) for s in range(total + 1)]
    assert values[0] == -0.25 and values[total] == pytest.approx(-0.25 if cycles == int(cycles) else 0.25)
    # k whole cycles: the value at step s equals the closed form with the (unrounded) period T/k
    assert values == pytest.approx([-0.25 + 0.5 * 0.5 * (1 - math.cos(2 * math.pi * s / length))
                                    for s in range(total + 1)], abs=1e-12)


def test_cycles_per_run_equal_the_period_form_when_it_divides():
    a = S.Cyclic(-0.25, 0.25, cycles=4, total_steps=1000, shape="cosine")
    b = S.Cyclic(-0.25, 0.25, period=250, shape="cosine")
    assert [a(s) for s in range(1200)] == [b(s) for s in range(1200)]  # bit for bit
    assert a.to_dict() == {"type": "cyclic", "low": -0.25, "high": 0.25, "cycles": 4.0, "total_steps": 1000,
                           "shape": "cosine", "phase": 0.0}
    assert a != b  # different descriptions: one follows the run's length, one does not


def test_cycles_per_run_saved_with_weights_only_and_resolved_by_per_run():
    sched = S.Cyclic(0.0, 1.0, cycles=2, total_steps=30, shape="triangle", phase=0.25)
    buffer = io.BytesIO()
    torch.save({"schedule": sched.to_dict()}, buffer)
    buffer.seek(0)
    assert S.from_dict(torch.load(buffer, weights_only=True)["schedule"]) == sched
    unresolved = {"type": "cyclic", "low": 0.0, "high": 1.0, "cycles": 2, "shape": "triangle", "phase": 0.25}
    assert S.from_dict(S.per_run(unresolved, 30)) == sched
    assert S.per_run(S.from_dict(unresolved), 30) == sched  # a Schedule object too
    assert S.per_run({"type": "constant", "value": 1.0}, None) == {"type": "constant", "value": 1.0}
    with pytest.raises(ValueError, match="stated per run.*total_steps=T"):
        S.per_run(unresolved, None)


def test_a_cycle_stated_per_run_is_a_description_until_the_run_gives_its_length():
    per_run = S.Cyclic(0.0, 0.5, cycles=2, shape="cosine")
    assert per_run.to_dict() == {"type": "cyclic", "low": 0.0, "high": 0.5, "cycles": 2.0, "shape": "cosine",
                                 "phase": 0.0}
    assert S.from_dict(per_run.to_dict()) == per_run
    with pytest.raises(ValueError, match=r"stated per run \(cycles=2\).*total_steps=T"):
        per_run(0)  # no period yet: it cannot be evaluated
    with pytest.raises(ValueError, match="stated per run"):
        per_run.for_run(None)
    resolved = per_run.for_run(40)
    want = S.Cyclic(0.0, 0.5, period=20, shape="cosine")  # 2 cycles in 40 steps
    assert [resolved(s) for s in range(80)] == [want(s) for s in range(80)]
    assert resolved == S.Cyclic(0.0, 0.5, cycles=2, total_steps=40, shape="cosine")
    # an explicit period, or a cycle that already has its run's length, ignores T
    fixed, own = S.Cyclic(0.0, 0.5, period=7), S.Cyclic(0.0, 0.5, cycles=2, total_steps=10)
    assert fixed.for_run(40) is fixed and own.for_run(40) is own and S.Constant(0.1).for_run(None) == S.Constant(0.1)
    with pytest.raises(ValueError, match="exceed"):
        S.Cyclic(0.0, 0.5, cycles=3).for_run(2)


def test_a_cycle_per_run_inside_a_sequence_takes_the_runs_length():
    seq = S.Sequence([(10, S.Constant(0.5)), (1, S.Cyclic(0.0, 0.5, cycles=2))])
    with pytest.raises(ValueError, match="stated per run"):
        seq.for_run(None)
    resolved = seq.for_run(100)
    assert resolved.segments[1][1] == S.Cyclic(0.0, 0.5, cycles=2, total_steps=100)
    assert [resolved(s) for s in range(10, 60)] == [S.Cyclic(0.0, 0.5, period=50)(s) for s in range(50)]
    assert S.from_dict(S.per_run(seq.to_dict(), 100)) == resolved  # the description form agrees
    fixed = S.Sequence([(10, S.Constant(0.5)), (1, S.Cyclic(0.0, 0.5, period=4))])
    assert fixed.for_run(100) is fixed


@pytest.mark.parametrize("make, name", [
    (lambda: S.Cyclic(0, 1), "period"),
    (lambda: S.Cyclic(0, 1, 10, cycles=2, total_steps=20), "either"),
    (lambda: S.Cyclic(0, 1, 10, total_steps=20), "total_steps goes with cycles"),
    (lambda: S.Cyclic(0, 1, cycles=0, total_steps=20), "cycles"),
    (lambda: S.Cyclic(0, 1, cycles=30, total_steps=20), "exceed"),
    (lambda: S.Cyclic(0, 1, cycles=2, total_steps=2.5), "total_steps"),
    (lambda: S.Cyclic(0, 1, cycles=2).for_run(0), "total_steps"),
    (lambda: S.from_dict({"type": "sequence"}), "sequence is described"),
    (lambda: S.from_dict({"type": "sequence", "segments": [5]}), r"segments\[0\]"),
    (lambda: S.from_dict({"type": "cyclic", "low": 0, "high": 1, "perod": 3}), "no parameter perod"),
    (lambda: S.from_dict({"type": "anneal", "start": 0}), "anneal schedule.*end"),
])
def test_malformed_cycles_and_descriptions_raise_value_errors(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def _adam_like(lr=0.1):
    return torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=lr)


@pytest.mark.parametrize("key, schedule, where", [
    ("beta2", S.Anneal(0.9, 1.0, 100), "beta2 must be in \\[0, 1\\)"),
    ("beta1", S.Cyclic(0.5, 0.99, 10, quantize=0.25), "beta1 must be in \\[0, 1\\).*reaches 1.0"),
    ("lr", -0.1, "lr must be >= 0"),
    ("lr", S.Sequence([(5, S.Constant(0.1)), (5, S.Anneal(0.1, -0.1, 5))]), "lr must be >= 0"),
    ("weight_decay", -1e-4, "weight_decay must be >= 0"),
])
def test_scheduler_refuses_values_out_of_range_up_front(key, schedule, where):
    opt = _adam_like()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=where):
        S.HyperparamScheduler(opt, key, schedule)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before]  # nothing written


def test_scheduler_checks_callable_values_as_it_runs_and_writes_nothing_bad():
    opt = _adam_like()
    sched = S.HyperparamScheduler(opt, "beta2", lambda step: 0.9 if step < 2 else 1.0)
    sched.step()
    assert opt.param_groups[0]["betas"][1] == 0.9
    with pytest.raises(ValueError, match="beta2 must be in .*gives 1.0 at step 2"):
        sched.step()
    assert opt.param_groups[0]["betas"][1] == 0.9 and sched.last_step == 1


def test_scheduler_load_state_dict_checks_the_loaded_schedules():
    opt = _adam_like()
    sched = S.HyperparamScheduler(opt, "beta2", S.Constant(0.99))
    sd = sched.state_dict()
    sd["schedules"] = [S.Anneal(0.99, 1.0, 10).to_dict()]
    with pytest.raises(ValueError, match="beta2 must be in"):
        sched.load_state_dict(sd)
    assert sched.schedules == [S.Constant(0.99)] and opt.param_groups[0]["betas"][1] == 0.99


def test_scheduler_gives_cycles_stated_per_run_the_runs_length_and_saves_it():
    opt = _adam_like()
    with pytest.raises(ValueError, match="stated per run.*total_steps=T"):
        S.HyperparamScheduler(opt, "lr", S.Cyclic(0.01, 0.1, cycles=2))
    sched = S.HyperparamScheduler(opt, "lr", S.Cyclic(0.01, 0.1, cycles=2), total_steps=40)
    want = S.Cyclic(0.01, 0.1, period=20)
    values = []
    for _ in range(40):
        values.append(opt.param_groups[0]["lr"])
        sched.step()
    assert values == [want(s) for s in range(40)]
    sd = sched.state_dict()
    assert sd["total_steps"] == 40
    again = S.HyperparamScheduler(_adam_like(), "lr", S.Cyclic(0.01, 0.1, cycles=2), total_steps=10)
    again.load_state_dict(sd)
    assert again.total_steps == 40 and again.schedules == sched.schedules
    del sd["total_steps"]  # an older state dict: its schedules were saved resolved
    again.load_state_dict(sd)
    assert again.schedules == sched.schedules

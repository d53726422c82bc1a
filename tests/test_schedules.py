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

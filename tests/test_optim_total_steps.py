"""nsf.NSF(params, total_steps=T): the default that knows its run (issue #20). T is the length of every p cycle
stated per run (the default's two and the user's), an explicit period ignores it, it is saved in the state dict,
and create_optimizer, NSF and HyperparamScheduler agree on it."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import nsf
from nsf import NSF, create_optimizer, default_cycle
from nsf.optim.defaults import DEFAULT_CYCLES, DEFAULT_P
from nsf.schedules import Constant, Cyclic, Sequence, from_dict

torch.set_num_threads(1)


def _param():
    return nn.Parameter(torch.ones(3))


def _p_trace(opt, steps):
    """p used by each of ``steps`` steps (the optimizer writes it to group["p"] before the update)."""
    values = []
    for _ in range(steps):
        for group in opt.param_groups:
            for q in group["params"]:
                q.grad = torch.ones_like(q)
        opt.step()
        values.append(float(opt.param_groups[0]["p"]))
    return values


def _weights_only_copy(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("total", [1, 7, 50, 360])
def test_the_default_with_total_steps_is_the_searched_form_two_whole_cycles_in_the_run(total):
    got = _p_trace(NSF([_param()], total_steps=total), total)
    want = default_cycle(total_steps=total)
    assert got == [want(s) for s in range(total)]
    if total >= 8 * DEFAULT_CYCLES:  # both cycles complete: p reaches Adam's ½ twice and is back at 0 at the end
        assert got.count(0.5) >= 2 and got[0] == 0.0 and got[-1] == 0.0
        peaks = [s for s in range(1, total - 1) if got[s] == 0.5 and got[s - 1] < 0.5]
        assert len(peaks) == DEFAULT_CYCLES


def test_without_total_steps_the_default_period_stays_1000_steps():
    """The documented fallback: a 50-step run never leaves p = 0 (the reason to give T)."""
    opt = NSF([_param()])
    assert from_dict(opt.param_groups[0]["p_schedule"]) == DEFAULT_P and opt.param_groups[0]["total_steps"] is None
    assert set(_p_trace(opt, 50)) == {0.0}
    assert max(_p_trace(NSF([_param()], total_steps=50), 50)) == 0.5


def test_a_users_cycle_stated_per_run_takes_t_and_an_explicit_period_ignores_it():
    per_run = _p_trace(NSF([_param()], p=Cyclic(-0.25, 0.25, cycles=4), total_steps=40), 40)
    assert per_run == [Cyclic(-0.25, 0.25, period=10)(s) for s in range(40)]
    fixed = NSF([_param()], p=Cyclic(-0.25, 0.25, period=7), total_steps=40)
    assert from_dict(fixed.param_groups[0]["p_schedule"]) == Cyclic(-0.25, 0.25, period=7)
    own = Cyclic(-0.25, 0.25, cycles=1, total_steps=12)  # its own run length is explicit too
    assert from_dict(NSF([_param()], p=own, total_steps=40).param_groups[0]["p_schedule"]) == own
    assert NSF([_param()], p=0.25, total_steps=40).param_groups[0]["p_schedule"] is None
    seq = NSF([_param()], p=Sequence([(5, Constant(0.5)), (1, Cyclic(0.0, 0.5, cycles=2))]), total_steps=20)
    assert from_dict(seq.param_groups[0]["p_schedule"]).segments[1][1] == Cyclic(0.0, 0.5, cycles=2, total_steps=20)


def test_a_cycle_stated_per_run_without_t_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"^Invalid p: the cycle .* is stated per run \(cycles=2\).*total_steps=T"):
        NSF([_param()], p=Cyclic(0.0, 0.5, cycles=2))
    with pytest.raises(ValueError, match="stated per run"):
        NSF([_param()], p={"type": "cyclic", "low": 0.0, "high": 0.5, "cycles": 2})
    with pytest.raises(ValueError, match="stated per run"):
        NSF([_param()], p=default_cycle(cycles=3))


def test_param_groups_take_their_own_or_the_optimizers_t():
    a, b, c = _param(), _param(), _param()
    opt = NSF([{"params": [a]}, {"params": [b], "total_steps": 10}], total_steps=100)
    opt.add_param_group({"params": [c], "p": Cyclic(0.0, 0.5, cycles=1)})
    groups = opt.param_groups
    assert [g["total_steps"] for g in groups] == [100, 10, 100]
    assert from_dict(groups[0]["p_schedule"]) == default_cycle(total_steps=100)
    assert from_dict(groups[1]["p_schedule"]) == default_cycle(total_steps=10)
    assert from_dict(groups[2]["p_schedule"]) == Cyclic(0.0, 0.5, cycles=1, total_steps=100)


def test_total_steps_is_saved_and_a_resumed_run_follows_the_saved_cycle():
    params = [_param()]
    opt = NSF(params, total_steps=40)
    first = _p_trace(opt, 15)
    sd = _weights_only_copy(opt.state_dict())
    assert sd["param_groups"][0]["total_steps"] == 40
    resumed = NSF([nn.Parameter(params[0].detach().clone())])  # built without T: the checkpoint's T wins
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["total_steps"] == 40
    assert first + _p_trace(resumed, 25) == [default_cycle(total_steps=40)(s) for s in range(40)]


def test_an_old_checkpoint_without_total_steps_keeps_its_1000_step_default():
    params = [_param()]
    old = NSF(params)
    _p_trace(old, 3)
    sd = _weights_only_copy(old.state_dict())
    for group in sd["param_groups"]:
        del group["total_steps"]  # as checkpoints from before total_steps were written
    fresh = NSF([nn.Parameter(params[0].detach().clone())], total_steps=50)
    fresh.load_state_dict(sd)
    group = fresh.param_groups[0]
    assert group["total_steps"] is None and from_dict(group["p_schedule"]) == DEFAULT_P and group["step"] == 3


def test_create_optimizer_and_nsf_agree_on_t():
    for spec, kw in [("nsf", {}), ("nsf:p=cyclic(0,0.5,cycles=2)", dict(p=Cyclic(0.0, 0.5, cycles=2))),
                     ("nsf:p=cyclic(0,0.5,25)", dict(p=Cyclic(0.0, 0.5, period=25)))]:
        built = create_optimizer(spec, [_param()], total_steps=60).param_groups[0]
        direct = NSF([_param()], total_steps=60, **kw).param_groups[0]
        assert built["p_schedule"] == direct["p_schedule"] and built["total_steps"] == direct["total_steps"] == 60
    assert create_optimizer("nsf", [_param()]).param_groups[0]["p_schedule"] == DEFAULT_P.to_dict()
    assert create_optimizer("nsf", [_param()]).param_groups[0]["total_steps"] is None
    with pytest.raises(ValueError, match="stated per run"):
        create_optimizer("nsf:p=cyclic(0,0.5,cycles=2)", [_param()])


def test_default_cycle_forms():
    assert default_cycle() == DEFAULT_P and default_cycle(250) == Cyclic(0.0, 0.5, 250, "cosine", quantize=0.125)
    assert default_cycle(total_steps=1) == Cyclic(0.0, 0.5, shape="cosine", quantize=0.125, cycles=1, total_steps=1)
    per_run = default_cycle(cycles=3)
    assert per_run.total_steps is None and per_run.for_run(30) == default_cycle(cycles=3, total_steps=30)
    assert nsf.default_cycle is default_cycle


def test_nsf_optax_schedule_takes_t_for_a_cycle_stated_per_run():
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from nsf.optax import schedule
    with pytest.raises(ValueError, match="stated per run"):  # here, not inside a jitted callback
        schedule(Cyclic(0.0, 0.5, cycles=2))
    fn = schedule(Cyclic(0.0, 0.5, cycles=2), total_steps=8)
    assert [float(fn(jnp.asarray(s))) for s in range(8)] == [Cyclic(0.0, 0.5, period=4)(s) for s in range(8)]


def test_hyperparam_scheduler_takes_t_from_the_nsf_groups_unless_given():
    opt = NSF([{"params": [_param()]}, {"params": [_param()], "total_steps": 10}], total_steps=40)
    sched = nsf.HyperparamScheduler(opt, "lr", Cyclic(0.001, 0.01, cycles=2))
    assert sched.schedules == [Cyclic(0.001, 0.01, cycles=2, total_steps=40),
                               Cyclic(0.001, 0.01, cycles=2, total_steps=10)]
    given = nsf.HyperparamScheduler(opt, "lr", Cyclic(0.001, 0.01, cycles=2), total_steps=8)
    assert given.schedules == [Cyclic(0.001, 0.01, cycles=2, total_steps=8)] * 2
    with pytest.raises(ValueError, match="stated per run"):
        nsf.HyperparamScheduler(NSF([_param()]), "lr", Cyclic(0.001, 0.01, cycles=2))

"""nsf.NSF on odd but legal input and on bad input (issues #11, #14): the defaults go downhill, tensor and numpy
hyperparameters, type-checked flags, foreign and old checkpoints, capturable steps, mixed dtypes, complex
parameters under the grafted scales. Updates Δθ are compared, in float64 where exactness is claimed."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import nsf
from nsf import NSF
from nsf.schedules import Cyclic, from_dict

torch.set_num_threads(1)
F64 = torch.float64
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


pytestmark = pytest.mark.usefixtures("uncompiled_fused_kernels")  # no compile in this file


def _grads(shapes, steps, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(steps)]


def _run(params, opt, grads):
    """Feed fixed gradients; returns every update Δθ (per step, per parameter)."""
    updates = []
    for step_grads in grads:
        before = [q.detach().clone() for q in params]
        for q, g in zip(params, step_grads):
            q.grad = g.clone()
        opt.step()
        updates.append([q.detach() - b for q, b in zip(params, before)])
    return updates


def _params(shapes, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _assert_updates_close(a, b, rtol=1e-12):
    for step_a, step_b in zip(a, b):
        for x, y in zip(step_a, step_b):
            torch.testing.assert_close(x, y, rtol=rtol, atol=1e-300)


# ----------------------------------------------------------------------------------------------------------
# the defaults go downhill (#14.4): torch's "goes right direction" checks, and a small linear regression


def _toy_quadratic():
    """torch's generic optimizer check: (W·x + b)² summed, W ~ N(0,1) of shape 2×3."""
    torch.manual_seed(0)
    weight, bias = nn.Parameter(torch.randn(2, 3)), nn.Parameter(torch.randn(2))
    x = torch.randn(3)
    return [weight, bias], lambda: (weight.mv(x) + bias).pow(2).sum()


def _linear_regression():
    torch.manual_seed(1)
    model = nn.Linear(5, 1)
    x = torch.randn(64, 5)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0], [0.0]]) + 0.1 * torch.randn(64, 1)
    return list(model.parameters()), lambda: nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("problem", [_toy_quadratic, _linear_regression], ids=["quadratic", "linreg"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("scheduler", [False, True])
@pytest.mark.parametrize("path", ["single", "foreach"])
def test_default_configuration_reduces_the_loss_within_a_few_steps(problem, weight_decay, scheduler, path):
    """With the old defaults (lr 1, sgd graft) the quadratic went 59 -> 437,520 in its first steps."""
    params, loss_fn = problem()
    opt = NSF([{"params": params, "weight_decay": weight_decay}], **PATHS[path])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    losses = [loss_fn().item()]
    for _ in range(5):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss_fn().item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # downhill at every step
    assert losses[-1] < 0.999 * losses[0]


def test_default_is_an_adam_length_step_at_adams_lr():
    """Swapping torch.optim.Adam(params) for nsf.NSF(params) keeps the step length (#14.4, drop-in rule)."""
    a, b = _params([(7, 3)], dtype=torch.float32), _params([(7, 3)], dtype=torch.float32)
    grads = _grads([(7, 3)], 6, dtype=torch.float32)
    ua = _run(a, torch.optim.Adam(a), grads)
    ub = _run(b, NSF(b), grads)
    for sa, sb in zip(ua, ub):
        torch.testing.assert_close(sb[0].norm(), sa[0].norm(), rtol=1e-3, atol=0)
    assert NSF(b).param_groups[0]["lr"] == 1e-3 and NSF(b).param_groups[0]["scale"] == "adam"


# ----------------------------------------------------------------------------------------------------------
# numbers as torch takes them; flags type-checked (#11)


def test_numpy_and_tensor_scalars_are_taken_as_numbers():
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 4)
    a, b = _params(shapes), _params(shapes)
    kw = dict(p=Cyclic(-0.25, 0.25, 3), scale="adam")
    ref = _run(a, NSF(a, lr=0.01, eps=1e-6, weight_decay=0.1, betas=(0.8, 0.99), **kw), grads)
    opt = NSF(b, lr=np.float64(0.01), eps=np.float64(1e-6), weight_decay=torch.tensor(0.1, dtype=F64),
              betas=(np.float64(0.8), 0.99), **kw)
    group = opt.param_groups[0]
    assert type(group["eps"]) is float and type(group["weight_decay"]) is float
    assert type(group["betas"][0]) is float
    _assert_updates_close(ref, _run(b, opt, grads), rtol=0)  # bit for bit
    opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "lr": np.float32(0.5)})
    assert type(opt.param_groups[1]["lr"]) is float


BAD = [
    (dict(amsgrad="yes"), "amsgrad"),
    (dict(maximize="false"), "maximize"),
    (dict(foreach="maybe"), "foreach"),
    (dict(fused=1), "fused"),
    (dict(capturable=None), "capturable"),
    (dict(decoupled_weight_decay="no"), "decoupled_weight_decay"),
    (dict(scale=3), "scale"),
    (dict(lr="0.1"), "Invalid learning rate: '0.1'; it must be a real number"),
    (dict(lr=True), "Invalid learning rate: True"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    (dict(lr=torch.tensor(-0.1)), "Invalid learning rate: -0.1"),
    (dict(lr=torch.tensor(0.1j)), "Invalid learning rate: .*must be a real one-element tensor"),
    (dict(eps=torch.tensor([1e-8, 1e-8])), "Invalid epsilon value: .*one-element"),
    (dict(betas=(torch.tensor(0.9), 0.999)), r"betas\[0\]: tensor betas are not supported"),
    (dict(betas=0.9), "betas"),
    (dict(weight_decay=np.float64(-1.0)), "weight_decay"),
    (dict(p={"type": "sequence"}), "p.*sequence"),
]


@pytest.mark.parametrize("options, name", BAD, ids=[f"{n.split(':')[0]}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_inputs_raise_a_value_error_naming_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        NSF([nn.Parameter(torch.ones(2))], **options)
    opt = NSF([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], **options})
    assert len(opt.param_groups) == 1


def test_a_hand_set_unknown_scale_is_refused_at_the_step():
    w, v = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = NSF([{"params": [w]}, {"params": [v]}])
    opt.param_groups[1]["scale"] = "adma"
    w.grad, v.grad = torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match="scale.*adma"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and torch.equal(v.detach(), torch.ones(3))  # nothing moved
    assert not opt.state and opt.param_groups[0]["step"] == 0


# ----------------------------------------------------------------------------------------------------------
# tensor lr of any one-element shape (#14.1)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("scale", ["raw", "sgd", "adam"])
@pytest.mark.parametrize("path", list(PATHS))
def test_one_element_tensor_lr_steps_like_the_float(shape, scale, path):
    shapes = [(5, 4), (4,)]  # a 1-D parameter: a (1, 1) lr must not broadcast it to 2-D
    grads = _grads(shapes, 5)
    a, b = _params(shapes), _params(shapes)
    kw = dict(p=Cyclic(-0.25, 0.5, 4), scale=scale, weight_decay=0.01, **PATHS[path])
    ref = _run(a, NSF(a, lr=0.05, **kw), grads)
    lr = torch.full(shape, 0.05, dtype=F64)
    opt = NSF(b, lr=lr, **kw)
    got = _run(b, opt, grads)
    assert [q.shape for q in b] == [torch.Size(s) for s in shapes]
    _assert_updates_close(ref, got)
    assert opt.param_groups[0]["lr"] is lr  # kept: it can be driven in place
    lr.fill_(0.0)  # driven in place, the next step uses it
    assert all(torch.equal(d, torch.zeros_like(d)) for d in _run(b, opt, grads[:1])[0])


# ----------------------------------------------------------------------------------------------------------
# checkpoints: other optimizers', old ones with plain-number steps, callable p (#11, #14.2)


def _trained(opt_cls, **kw):
    params = _params([(3, 2)])
    opt = opt_cls(params, **kw)
    _run(params, opt, _grads([(3, 2)], 2))
    return opt.state_dict()


@pytest.mark.parametrize("make", [lambda: _trained(torch.optim.SGD, lr=0.1, momentum=0.9),
                                  lambda: _trained(torch.optim.Adagrad, lr=0.1),
                                  lambda: _trained(torch.optim.RMSprop, lr=0.1)], ids=["sgd", "adagrad", "rmsprop"])
def test_another_optimizers_state_dict_is_refused_at_load(make):
    params = _params([(3, 2)])
    opt = NSF(params)
    before = copy_of(opt.state_dict())
    with pytest.raises(ValueError, match="NSF.load_state_dict.*another optimizer|not written by NSF"):
        opt.load_state_dict(make())
    assert opt.state_dict()["param_groups"] == before["param_groups"] and not opt.state


def copy_of(sd):
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("path, capturable", [("single", False), ("foreach", False), ("fused", False),
                                             ("single", True), ("foreach", True)])  # fused is never capturable
def test_plain_number_step_counts_load_as_tensors_and_continue_bit_exactly(path, capturable):
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 8)
    kw = dict(lr=0.01, p=Cyclic(-0.25, 0.5, 3), scale="adam", capturable=capturable, **PATHS[path])
    params = _params(shapes)
    opt = NSF(params, **kw)
    _run(params, opt, grads[:4])
    saved = copy_of(opt.state_dict())
    old = copy_of(saved)
    for entry in old["state"].values():  # as older torch optimizers wrote it
        entry["step"] = float(entry["step"])

    results = []
    for sd in (saved, old):
        ps = [nn.Parameter(q.detach().clone()) for q in params]
        o = NSF(ps, **kw)
        o.load_state_dict(sd)
        assert all(isinstance(o.state[q]["step"], torch.Tensor) and o.state[q]["step"].dtype == torch.float32
                   for q in ps)
        results.append(_run(ps, o, grads[4:]))
        assert all(float(o.state[q]["step"]) == 8 for q in ps)  # the counts advanced
    _assert_updates_close(results[0], results[1], rtol=0)


def _p_fn(step):
    return 0.1 * (step % 3) - 0.1


def test_callable_p_checkpoint_into_an_optimizer_without_it_is_refused():
    params = _params([(3,)])
    opt = NSF(params, p=_p_fn)
    _run(params, opt, _grads([(3,)], 2))
    with pytest.warns(UserWarning, match="plain callable"):
        sd = opt.state_dict()
    fresh = NSF(_params([(3,)]))
    with pytest.raises(ValueError, match="plain callable.*p=callable"):
        fresh.load_state_dict(sd)
    again = NSF(_params([(3,)]), p=_p_fn)  # given the callable again, it loads and p moves on
    again.load_state_dict(sd)
    assert again.param_groups[0]["step"] == 2


# ----------------------------------------------------------------------------------------------------------
# capturable steps, mixed-dtype parameter lists (#11)


@pytest.mark.parametrize("scale", ["raw", "sgd", "adam"])
@pytest.mark.parametrize("path", ["single", "foreach"])
def test_capturable_steps_run_and_match(scale, path):
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 6)
    a, b = _params(shapes), _params(shapes)
    kw = dict(lr=0.01, p=Cyclic(-0.25, 0.5, 4), scale=scale, amsgrad=True, **PATHS[path])
    ref = _run(a, NSF(a, **kw), grads)
    opt = NSF(b, capturable=True, **kw)
    got = _run(b, opt, grads)
    # capturable bias corrections are float32 tensors (as in torch's Adam): 1 − β2 in float32 is off by ~1e-5
    _assert_updates_close(ref, got, rtol=1e-4)
    assert all(opt.state[q]["step"].device == q.device for q in b)


@pytest.mark.parametrize("scale", ["raw", "adam"])
@pytest.mark.parametrize("path", list(PATHS))
def test_mixed_dtype_parameter_list_equals_one_optimizer_per_dtype(scale, path):
    kw = dict(lr=0.01, p=Cyclic(-0.25, 0.5, 4), scale=scale, **PATHS[path])
    p64, p32 = _params([(4, 3)], dtype=F64), _params([(5,)], seed=2, dtype=torch.float32)
    g64, g32 = _grads([(4, 3)], 4, dtype=F64), _grads([(5,)], 4, seed=3, dtype=torch.float32)
    mixed = [nn.Parameter(p64[0].detach().clone()), nn.Parameter(p32[0].detach().clone())]
    got = _run(mixed, NSF(mixed, **kw), [a + b for a, b in zip(g64, g32)])
    ref64 = _run(p64, NSF(p64, **kw), g64)
    ref32 = _run(p32, NSF(p32, **kw), g32)
    assert mixed[0].dtype == F64 and mixed[1].dtype == torch.float32
    _assert_updates_close([[s[0]] for s in got], ref64, rtol=0)
    _assert_updates_close([[s[1]] for s in got], ref32, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# complex parameters under the grafted scales: one tensor, per-tensor norm (#14.5)


@pytest.mark.parametrize("scale", ["raw", "sgd", "adam"])
@pytest.mark.parametrize("path", ["single", "foreach"])
def test_complex_tensor_is_one_tensor_for_the_graft(scale, path):
    """The documented semantics: a complex tensor is grafted as its real view, one tensor (real and imaginary
    parts share one norm). Given as two real tensors, the parts are grafted apart, which differs unless raw."""
    torch.manual_seed(3)
    z0 = torch.randn(5, 4, dtype=torch.complex128)
    z = nn.Parameter(z0.clone())
    re, im = nn.Parameter(z0.real.clone()), nn.Parameter(z0.imag.clone())
    g = [torch.randn(5, 4, dtype=torch.complex128) * torch.tensor([1.0, 10.0, 0.1, 1.0]) for _ in range(4)]
    kw = dict(lr=0.01, p=-0.25, scale=scale, **PATHS[path])
    uz = _run([z], NSF([z], **kw), [[x] for x in g])
    split = _run([re, im], NSF([re, im], **kw), [[x.real, x.imag] for x in g])
    as_one = [[torch.complex(s[0], s[1])] for s in split]
    if scale == "raw":
        _assert_updates_close(uz, as_one)
    else:
        assert max(float((a[0] - b[0]).abs().max()) for a, b in zip(uz, as_one)) > 1e-4
        zr = nn.Parameter(torch.view_as_real(z0).clone())
        ur = _run([zr], NSF([zr], **kw), [[torch.view_as_real(x)] for x in g])
        _assert_updates_close([[torch.view_as_real(s[0])] for s in uz], ur)


# ----------------------------------------------------------------------------------------------------------
# HyperparamScheduler and NSF's hook (#8.6)


def test_scheduler_hands_p_over_through_the_optimizers_hook():
    w = nn.Parameter(torch.ones(3))
    opt = NSF([w], p=Cyclic(-0.25, 0.25, 4))
    calls = []
    hook = opt.hyperparam_scheduled
    opt.hyperparam_scheduled = lambda key: (calls.append(key), hook(key))
    nsf.HyperparamScheduler(opt, "lr", [0.01])
    assert opt.param_groups[0]["p_schedule"] is not None  # driving lr leaves p's schedule alone
    nsf.HyperparamScheduler(opt, "p", 0.3)
    assert calls == ["lr", "p"] and opt.param_groups[0]["p_schedule"] is None
    w.grad = torch.ones(3)
    opt.step()
    assert float(opt.param_groups[0]["p"]) == 0.3


def _adam_after(shapes, grads, **kw):
    params = _params(shapes)
    adam = torch.optim.Adam(params, lr=0.01, foreach=False, **kw)
    _run(params, adam, grads)
    return params, adam


def test_an_adam_state_dict_continues_as_this_nsf_from_adams_moments_and_warns_once():
    """No silent Adam (#20): the moments, step counts and lr load; p, scale and total_steps stay NSF's. The
    reference is this NSF configuration holding Adam's moments, its p clock at 0."""
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 6)
    a, adam = _adam_after(shapes, grads[:3])
    kw = dict(p=Cyclic(-0.25, 0.25, cycles=2), scale="adam", total_steps=6, foreach=False)
    b, c = ([nn.Parameter(q.detach().clone()) for q in a] for _ in range(2))
    opt = NSF(b, lr=0.5, **kw)
    with pytest.warns(UserWarning) as record:
        opt.load_state_dict(copy_of(adam.state_dict()))
    assert len(record) == 1
    message = str(record[0].message)
    assert "no p" in message and "continues as NSF" in message and "scale='adam'" in message
    assert "NSF(params, p=0.5, scale='raw')" in message  # how to continue as Adam instead
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["scale"] == "adam" and group["total_steps"] == 6 and group["step"] == 0
    assert from_dict(group["p_schedule"]) == Cyclic(-0.25, 0.25, cycles=2, total_steps=6)

    ref = NSF(c, lr=0.01, **kw)
    for q, q_adam in zip(c, a):
        ref.state[q] = {key: value.clone() for key, value in adam.state[q_adam].items()}
    got, want = _run(b, opt, grads[3:]), _run(c, ref, grads[3:])
    _assert_updates_close(got, want, rtol=0)
    adams = _run(a, adam, grads[3:])
    assert not torch.allclose(got[1][0], adams[1][0])  # not Adam's step: p has moved off ½


def test_an_adam_state_dict_into_nsf_at_half_raw_continues_as_adam():
    """The way the warning names to continue as Adam: NSF at p = ½, raw is Adam (to float64 rounding)."""
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 6)
    a, adam = _adam_after(shapes, grads[:3], weight_decay=0.1)
    b = [nn.Parameter(q.detach().clone()) for q in a]
    opt = NSF(b, p=0.5, scale="raw")
    with pytest.warns(UserWarning, match=r"p = 0.5"):
        opt.load_state_dict(copy_of(adam.state_dict()))
    assert opt.param_groups[0]["weight_decay"] == 0.1
    _assert_updates_close(_run(a, adam, grads[3:]), _run(b, opt, grads[3:]), rtol=1e-9)


def test_an_nsf_state_dict_loads_without_a_warning():
    params = _params([(3, 2)])
    opt = NSF(params, total_steps=10)
    _run(params, opt, _grads([(3, 2)], 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NSF(_params([(3, 2)])).load_state_dict(copy_of(opt.state_dict()))


@pytest.mark.parametrize("first, second", [("fused", "fused"), ("fused", "foreach"), ("foreach", "fused")])
def test_resuming_a_fused_optimizer_continues_the_run(first, second):
    """Save after 4 steps on one path, load into a fresh optimizer on another, take 4 more: the updates equal
    an uninterrupted run's (bit for bit on the same path; to float64 rounding across paths)."""
    shapes = [(6, 5), (5,)]
    grads = _grads(shapes, 8)
    kw = dict(lr=0.01, p=Cyclic(-0.25, 0.5, 3), scale="adam", weight_decay=0.01)
    ref_params = _params(shapes)
    ref = _run(ref_params, NSF(ref_params, **kw, **PATHS[second]), grads)
    params = _params(shapes)
    opt = NSF(params, **kw, **PATHS[first])
    _run(params, opt, grads[:4])
    sd = copy_of(opt.state_dict())
    resumed = [nn.Parameter(q.detach().clone()) for q in params]
    opt2 = NSF(resumed, lr=0.5, p=0.0, scale="raw", **PATHS[second])  # everything must come from the checkpoint
    opt2.load_state_dict(sd)
    for group in opt2.param_groups:  # the path is this optimizer's choice, not the checkpoint's
        group.update(foreach=None, fused=None)
        group.update(PATHS[second])
    got = _run(resumed, opt2, grads[4:])
    assert all(float(opt2.state[q]["step"]) == 8 for q in resumed)
    _assert_updates_close(ref[4:], got, rtol=0 if first == second else 1e-10)


def test_cycles_per_run_are_saved_in_the_state_dict_and_resume():
    schedule = Cyclic(-0.25, 0.25, cycles=3, total_steps=12, shape="cosine")
    shapes = [(4,)]
    grads = _grads(shapes, 12)
    ref_params = _params(shapes)
    ref_opt = NSF(ref_params, p=schedule)
    ref = _run(ref_params, ref_opt, grads)
    params = _params(shapes)
    opt = NSF(params, p=schedule)
    _run(params, opt, grads[:5])
    sd = copy_of(opt.state_dict())  # weights_only=True
    assert sd["param_groups"][0]["p_schedule"] == schedule.to_dict()
    assert {"cycles", "total_steps"} <= set(sd["param_groups"][0]["p_schedule"])
    fresh = NSF(params)
    fresh.load_state_dict(sd)
    _assert_updates_close(ref[5:], _run(params, fresh, grads[5:]), rtol=0)
    assert float(fresh.param_groups[0]["p"]) == schedule(11) == float(ref_opt.param_groups[0]["p"])

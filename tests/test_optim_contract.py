"""nsf.NSF against the torch.optim contract (issue #2): state dicts and resume, deepcopy, old checkpoints,
plain-callable schedules, closures, per-group options, hooks, argument checks, complex parameters,
torch.compile, differentiable steps, HyperparamScheduler and groups without gradients.

The numerical equivalences (vs Adam/AdamW/SGD/Padam, closed forms, foreach == single, p < 0) live elsewhere.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from nsf import NSF, HyperparamScheduler
from nsf.schedules import Anneal, Constant, Cyclic, Sequence

torch.set_num_threads(1)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------
# small deterministic problem


def _model(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh(), nn.Linear(3, 1)).to(dtype)


def _batch(k: int, dtype=torch.float32):
    """A different mini-batch at every step k, so a resume that replays the wrong step is visible."""
    g = torch.Generator().manual_seed(1000 + k)
    x = torch.randn(16, 4, generator=g, dtype=dtype)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    return x, y


def _loss(model, k):
    x, y = _batch(k, next(model.parameters()).dtype)
    return nn.functional.mse_loss(model(x), y)


def _train_step(model, opt, k):
    opt.zero_grad()
    loss = _loss(model, k)
    loss.backward()
    opt.step()
    return loss


def _state_tensors(opt):
    """Every state tensor, in parameter order, keyed by (param index, state key)."""
    out = {}
    for i, q in enumerate(q for g in opt.param_groups for q in g["params"]):
        for key, value in opt.state.get(q, {}).items():
            out[(i, key)] = value
    return out


def _assert_same_optimizer(m1, o1, m2, o2):
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n
    s1, s2 = _state_tensors(o1), _state_tensors(o2)
    assert s1.keys() == s2.keys()
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key
    for g1, g2 in zip(o1.param_groups, o2.param_groups):
        assert torch.equal(g1["p"], g2["p"])
        assert g1["step"] == g2["step"]


# ----------------------------------------------------------------------------------------------------------
# 1. state_dict resume, bit for bit, with the schedule restored from the state dict

RESUME_CASES = [
    pytest.param(dict(foreach=False), id="single"),
    pytest.param(dict(foreach=True), id="foreach"),
    pytest.param(dict(foreach=False, amsgrad=True), id="single-amsgrad"),
    pytest.param(dict(foreach=True, amsgrad=True), id="foreach-amsgrad"),
    pytest.param(dict(foreach=False, scale="adam"), id="single-adam"),
    pytest.param(dict(foreach=True, scale="adam", weight_decay=0.01, decoupled_weight_decay=True),
                 id="foreach-adam-adamw"),
    pytest.param(dict(foreach=True, scale="sgd", weight_decay=0.01), id="foreach-sgd"),
]


@pytest.mark.parametrize("options", RESUME_CASES)
def test_state_dict_resume_is_bit_exact(tmp_path, options):
    schedule = Cyclic(-0.25, 0.5, period=7, shape="triangle")
    n_before, n_after = 10, 9  # 10 % 7 = 3: the save is mid-cycle

    def make(p, lr):
        model = _model()
        return model, NSF(model.parameters(), lr=lr, p=p, **options)

    ref_model, ref_opt = make(schedule, 1e-2)
    model, opt = make(schedule, 1e-2)
    for k in range(n_before):
        _train_step(ref_model, ref_opt, k)
        _train_step(model, opt, k)
    _assert_same_optimizer(ref_model, ref_opt, model, opt)
    assert ref_opt.param_groups[0]["step"] == n_before
    assert float(ref_opt.param_groups[0]["p"]) == schedule(n_before - 1)

    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    del model, opt

    # a fresh model and optimizer built with a different (fixed) p and lr: both must come from the checkpoint
    ckpt = torch.load(path, weights_only=True)
    new_model, new_opt = make(0.125, 0.5)
    new_model.load_state_dict(ckpt["model"])
    new_opt.load_state_dict(ckpt["opt"])
    assert new_opt.param_groups[0]["p_schedule"] == schedule.to_dict()
    assert new_opt.param_groups[0]["lr"] == 1e-2
    assert isinstance(new_opt.param_groups[0]["p"], torch.Tensor)
    _assert_same_optimizer(ref_model, ref_opt, new_model, new_opt)

    seen = set()
    for k in range(n_before, n_before + n_after):
        _train_step(ref_model, ref_opt, k)
        _train_step(new_model, new_opt, k)
        _assert_same_optimizer(ref_model, ref_opt, new_model, new_opt)
        p_now = float(new_opt.param_groups[0]["p"])
        assert p_now == schedule(k)  # the resumed clock continues where it stopped
        seen.add(p_now)
    assert len(seen) >= 5 and min(seen) < 0 < max(seen)


def test_state_dict_resume_sequence_schedule(tmp_path):
    schedule = Sequence([(4, Constant(0.5)), (6, Anneal(0.5, -0.2, steps=6)), (1, Cyclic(0.0, 0.3, period=3))])
    ref_model, model = _model(), _model()
    ref_opt = NSF(ref_model.parameters(), lr=1e-2, scale="raw", p=schedule)
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=schedule)
    for k in range(6):
        _train_step(ref_model, ref_opt, k)
        _train_step(model, opt, k)
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=0.5)
    opt.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    for k in range(6, 16):
        _train_step(ref_model, ref_opt, k)
        _train_step(model, opt, k)
        assert float(opt.param_groups[0]["p"]) == schedule(k)
        _assert_same_optimizer(ref_model, ref_opt, model, opt)


def test_load_state_dict_copies_p_tensor():
    """Loading must not alias the source dict's p tensor (else stepping one optimizer moves the other's p)."""
    model = _model()
    opt = NSF(model.parameters(), scale="raw", p=Cyclic(0.0, 0.5, period=4))
    _train_step(model, opt, 0)
    sd = opt.state_dict()
    other = NSF(model.parameters(), scale="raw", p=0.3)
    other.load_state_dict(sd)
    assert other.param_groups[0]["p"] is not opt.param_groups[0]["p"]
    before = opt.param_groups[0]["p"].clone()
    _train_step(model, other, 1)
    assert torch.equal(opt.param_groups[0]["p"], before)


# ----------------------------------------------------------------------------------------------------------
# 2. deepcopy


@pytest.mark.parametrize("foreach", [False, True])
def test_deepcopy_steps_identically(foreach):
    model = _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=Cyclic(-0.2, 0.5, period=5), amsgrad=True, foreach=foreach)
    for k in range(4):
        _train_step(model, opt, k)
    bundle = copy.deepcopy({"model": model, "opt": opt})
    m2, o2 = bundle["model"], bundle["opt"]
    # the copy optimizes the copied model's parameters, with its own state
    copied_params = list(m2.parameters())
    assert all(any(q is c for c in copied_params) for q in o2.param_groups[0]["params"])
    assert not any(q is c for q in opt.param_groups[0]["params"] for c in copied_params)
    assert o2.param_groups[0]["p"] is not opt.param_groups[0]["p"]
    _assert_same_optimizer(model, opt, m2, o2)

    # stepping the copy leaves the original untouched
    snapshot = [q.detach().clone() for q in model.parameters()]
    p_before = opt.param_groups[0]["p"].clone()
    _train_step(m2, o2, 4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshot))
    assert torch.equal(opt.param_groups[0]["p"], p_before)
    _train_step(model, opt, 4)
    for k in range(5, 10):
        _train_step(model, opt, k)
        _train_step(m2, o2, k)
        _assert_same_optimizer(model, opt, m2, o2)


def _p_fn(step: int) -> float:  # module level: a plain callable schedule that deepcopy/pickle can carry
    return (0.5, -0.25, 0.1, 0.3)[step % 4]


def test_deepcopy_keeps_plain_callable_schedule():
    model = _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=_p_fn)
    _train_step(model, opt, 0)
    bundle = copy.deepcopy({"model": model, "opt": opt})
    for k in range(1, 5):
        _train_step(model, opt, k)
        _train_step(bundle["model"], bundle["opt"], k)
        assert float(bundle["opt"].param_groups[0]["p"]) == _p_fn(k)
        _assert_same_optimizer(model, opt, bundle["model"], bundle["opt"])


# ----------------------------------------------------------------------------------------------------------
# 3. checkpoints from before the newer group keys existed

NEW_KEYS = ("p_schedule", "step", "scale", "amsgrad", "decoupled_weight_decay", "total_steps")


def test_old_checkpoint_loads_with_documented_defaults(tmp_path):
    """Every NSF checkpoint has p (a float in old ones); one without p is Adam's (tests/test_optim_inputs.py)."""
    old_p = p_value = 0.3
    ref_model, model = _model(), _model()
    ref_opt = NSF(ref_model.parameters(), lr=1e-2, p=p_value, scale="raw")
    opt = NSF(model.parameters(), lr=1e-2, p=p_value, scale="raw")
    for k in range(3):
        _train_step(ref_model, ref_opt, k)
        _train_step(model, opt, k)

    sd = opt.state_dict()
    old_groups = []
    for g in sd["param_groups"]:
        g = {k: v for k, v in g.items() if k not in NEW_KEYS and k != "p"}
        g["p"] = old_p  # a float, as old versions stored it
        old_groups.append(g)
    old = {"state": sd["state"], "param_groups": old_groups}
    torch.save(old, tmp_path / "old.pt")

    # built with everything different from the defaults: the defaults must still win (the checkpoint's groups
    # replace the optimizer's, and missing keys get the documented defaults)
    fresh = NSF(model.parameters(), lr=0.5, p=Cyclic(-0.5, 0.5, period=3), scale="sgd", amsgrad=True,
                decoupled_weight_decay=True)
    fresh.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    g = fresh.param_groups[0]
    assert g["scale"] == "raw"
    assert g["amsgrad"] is False
    assert g["decoupled_weight_decay"] is False
    assert g["p_schedule"] is None
    assert isinstance(g["p"], torch.Tensor) and g["p"].dtype == F64 and g["p"].dim() == 0
    assert float(g["p"]) == p_value
    assert g["step"] == 3  # recovered from the per-parameter step counts
    assert g["total_steps"] is None  # and the saved p_schedule (none here) is what runs

    for k in range(3, 6):
        _train_step(ref_model, ref_opt, k)
        _train_step(model, fresh, k)
        _assert_same_optimizer(ref_model, ref_opt, model, fresh)
    assert float(g["p"]) == p_value and g["step"] == 6


def test_old_checkpoint_without_state_starts_clock_at_zero():
    model = _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=0.25)
    sd = opt.state_dict()
    groups = [{k: v for k, v in g.items() if k not in NEW_KEYS} for g in sd["param_groups"]]
    fresh = NSF(model.parameters())
    fresh.load_state_dict({"state": {}, "param_groups": groups})
    assert fresh.param_groups[0]["step"] == 0
    _train_step(model, fresh, 0)
    assert fresh.param_groups[0]["step"] == 1


# ----------------------------------------------------------------------------------------------------------
# 4. plain-callable p schedule


@pytest.mark.parametrize("foreach", [False, True])
def test_plain_callable_schedule(tmp_path, foreach):
    model, ref_model = _model(), _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=lambda step: _p_fn(step), foreach=foreach)
    # reference: a fixed-p optimizer whose p is set by hand to f(completed steps) before each update
    ref = NSF(ref_model.parameters(), lr=1e-2, scale="raw", p=0.0, foreach=foreach)
    for k in range(6):
        ref.param_groups[0]["p"].fill_(_p_fn(k))
        _train_step(ref_model, ref, k)
        _train_step(model, opt, k)
        assert float(opt.param_groups[0]["p"]) == _p_fn(k)  # the first update used f(0)
        for a, b in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(a, b)

    with pytest.warns(UserWarning, match="callable"):
        sd = opt.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.state_dict()  # warned once only
    assert sd["param_groups"][0]["p_schedule"] == "callable"  # a marker, not the function
    torch.save(sd, tmp_path / "o.pt")
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)

    # the rebuilt optimizer is given the callable again; the clock comes from the state dict
    fresh = NSF(model.parameters(), lr=1e-2, scale="raw", p=_p_fn, foreach=foreach)
    fresh.load_state_dict(loaded)
    assert fresh.param_groups[0]["step"] == 6
    for k in range(6, 9):
        ref.param_groups[0]["p"].fill_(_p_fn(k))
        _train_step(ref_model, ref, k)
        _train_step(model, fresh, k)
        assert float(fresh.param_groups[0]["p"]) == _p_fn(k)
        for a, b in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(a, b)


def test_plain_callable_returning_nan_raises():
    w = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="p"):
        NSF([w], scale="raw", p=lambda step: float("nan"))


# ----------------------------------------------------------------------------------------------------------
# 5. closures


@pytest.mark.parametrize("foreach", [False, True])
def test_closure_returns_loss_and_matches_plain_step(foreach):
    m1, m2 = _model(), _model()
    o1 = NSF(m1.parameters(), lr=1e-2, scale="raw", p=Cyclic(-0.2, 0.4, period=3), foreach=foreach)
    o2 = NSF(m2.parameters(), lr=1e-2, scale="raw", p=Cyclic(-0.2, 0.4, period=3), foreach=foreach)
    for k in range(4):
        calls = []

        def closure():
            calls.append(k)
            o1.zero_grad()
            loss = _loss(m1, k)
            loss.backward()
            return loss

        returned = o1.step(closure)
        expected = _train_step(m2, o2, k)
        assert calls == [k]
        assert isinstance(returned, torch.Tensor) and torch.equal(returned, expected)
        _assert_same_optimizer(m1, o1, m2, o2)
    assert NSF([nn.Parameter(torch.ones(2))]).step() is None


# ----------------------------------------------------------------------------------------------------------
# 6. per-group options


@pytest.mark.parametrize("foreach", [False, True])
def test_param_groups_equal_separate_optimizers(foreach):
    torch.manual_seed(3)
    w_a, w_b, w_c = torch.randn(5, 3, dtype=F64), torch.randn(7, dtype=F64), torch.randn(2, 2, dtype=F64)
    opt_a = dict(lr=0.02, p=-0.25, scale="sgd", weight_decay=0.1)
    opt_b = dict(lr=0.003, p=Cyclic(0.0, 0.5, period=3, shape="cosine"), scale="adam", weight_decay=0.0,
                 amsgrad=True)
    opt_c = dict(lr=0.01, p=0.25, weight_decay=0.05, decoupled_weight_decay=True, betas=(0.8, 0.99))

    def params():
        return [nn.Parameter(w.clone()) for w in (w_a, w_b, w_c)]

    multi = params()
    single = params()
    combined = NSF([{"params": [multi[0]], **opt_a}, {"params": [multi[1]], **opt_b},
                    {"params": [multi[2]], **opt_c}], foreach=foreach)
    separate = [NSF([single[i]], foreach=foreach, **o) for i, o in enumerate((opt_a, opt_b, opt_c))]

    def loss_fn(ws):  # couples all three tensors, so every gradient depends on every parameter
        a, b, c = ws
        return (a.sin().sum() * b.cos().mean()) ** 2 + (c @ c).trace() * b.sum() + (a**2).sum() * c.sum()

    p_b_seen = set()
    for _ in range(8):
        for ws, opts in ((multi, [combined]), (single, separate)):
            for o in opts:
                o.zero_grad()
            loss_fn(ws).backward()
            for o in opts:
                o.step()
        for a, b in zip(multi, single):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        assert float(combined.param_groups[0]["p"]) == -0.25
        assert float(combined.param_groups[2]["p"]) == 0.25
        assert torch.equal(combined.param_groups[1]["p"], separate[1].param_groups[0]["p"])
        p_b_seen.add(float(combined.param_groups[1]["p"]))
    assert len(p_b_seen) >= 2
    for i, g in enumerate(combined.param_groups):
        assert g["scale"] == separate[i].param_groups[0]["scale"]


# ----------------------------------------------------------------------------------------------------------
# 7. hooks


def test_step_hooks_called_once_in_order():
    model = _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=0.25)
    w = next(model.parameters())
    events = []

    def pre(optimizer, args, kwargs):
        assert optimizer is opt
        events.append(("pre", w.detach().clone()))

    def post(optimizer, args, kwargs):
        assert optimizer is opt
        events.append(("post", w.detach().clone()))

    h_pre, h_post = opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)
    for k in range(3):
        before = w.detach().clone()
        events.clear()
        _train_step(model, opt, k)
        assert [e[0] for e in events] == ["pre", "post"]
        assert torch.equal(events[0][1], before)  # pre runs before the update
        assert torch.equal(events[1][1], w.detach()) and not torch.equal(events[1][1], before)
    h_pre.remove()
    h_post.remove()
    events.clear()
    _train_step(model, opt, 3)
    assert events == []


def test_state_dict_hooks():
    model = _model()
    opt = NSF(model.parameters(), lr=1e-2, scale="raw", p=Cyclic(0.0, 0.5, period=4))
    _train_step(model, opt, 0)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd-pre"))

    def sd_post(o, sd):
        calls.append("sd-post")
        sd["extra"] = 1
        return sd

    opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    assert calls == ["sd-pre", "sd-post"] and sd["extra"] == 1

    fresh = NSF(model.parameters(), scale="raw", p=0.1)

    def load_pre(o, state_dict):
        calls.append("load-pre")
        state_dict = dict(state_dict)
        state_dict.pop("extra")
        return state_dict

    def load_post(o):
        # runs after the groups are restored: the schedule and clock are already those of the checkpoint
        calls.append(("load-post", o.param_groups[0]["step"], o.param_groups[0]["p_schedule"]["type"]))

    fresh.register_load_state_dict_pre_hook(load_pre)
    fresh.register_load_state_dict_post_hook(load_post)
    calls.clear()
    fresh.load_state_dict(sd)
    assert calls == ["load-pre", ("load-post", 1, "cyclic")]


# ----------------------------------------------------------------------------------------------------------
# 8. argument checking

BAD_OPTIONS = [  # where torch's Adam refuses the same input, the message starts with its wording
    (dict(lr=-1e-3), "^Invalid learning rate: -0.001"),
    (dict(lr=float("nan")), "^Invalid learning rate: nan"),
    (dict(lr=float("inf")), "^Invalid learning rate: inf"),
    (dict(lr=torch.tensor([1e-3, 1e-3])), r"^Tensor lr must be 1-element; got shape \(2,\)"),
    (dict(betas=(1.0, 0.999)), r"^Invalid beta parameter at index 0: 1.0; betas\[0\] must lie in \[0, 1\)"),
    (dict(betas=(0.9, -0.1)), "^Invalid beta parameter at index 1: -0.1"),
    (dict(betas=(0.9,)), "betas"),
    (dict(eps=0.0), "^Invalid epsilon value: 0.0; it must be a finite number > 0"),
    (dict(eps=-1.0), "^Invalid epsilon value: -1.0"),
    (dict(eps=float("nan")), "^Invalid epsilon value: nan"),
    (dict(weight_decay=-1.0), "^Invalid weight_decay value: -1.0"),
    (dict(weight_decay=float("nan")), "^Invalid weight_decay value: nan"),
    (dict(total_steps=0), "Invalid total_steps: 0"),
    (dict(total_steps=2.5), "Invalid total_steps: 2.5"),
    (dict(total_steps=True), "Invalid total_steps: True"),
    (dict(p=Cyclic(0.0, 0.5, cycles=2)), r"Invalid p: .*stated per run.*total_steps=T"),
    (dict(p=Cyclic(0.0, 0.5, cycles=3), total_steps=2), r"Invalid p: cycles \(3.0\) must not exceed"),
    (dict(p=float("nan")), "p"),
    (dict(p=float("inf")), "p"),
    (dict(p=float("-inf")), "p"),
    (dict(p={"type": "cyclic", "low": 0.0, "high": 0.5, "period": 0}), "period"),
    (dict(p={"type": "wobble"}), "wobble"),
    (dict(scale="bogus"), "scale"),
]


@pytest.mark.parametrize("options,name", BAD_OPTIONS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_OPTIONS)])
def test_bad_option_raises_value_error_naming_it(options, name):
    with pytest.raises(ValueError, match=name):
        NSF([nn.Parameter(torch.ones(2))], **options)
    # the same option given per group
    with pytest.raises(ValueError, match=name):
        NSF([{"params": [nn.Parameter(torch.ones(2))], **options}])


@pytest.mark.parametrize("make,name", [
    (lambda: Cyclic(0.0, 0.5, period=0), "period"),
    (lambda: Cyclic(0.0, 0.5, period=-3), "period"),
    (lambda: Cyclic(0.0, 0.5, period=2.5), "period"),
    (lambda: Cyclic(0.5, 0.0, period=4), "high"),
    (lambda: Cyclic(0.0, 0.5, period=4, shape="zigzag"), "shape"),
    (lambda: Cyclic(0.0, float("nan"), period=4), "high"),
    (lambda: Anneal(0.5, 0.0, steps=-1), "steps"),
    (lambda: Anneal(0.5, 0.0, steps=10, shape="exp"), "shape"),
    (lambda: Constant(float("inf")), "value"),
], ids=["period0", "period-neg", "period-float", "high<low", "zigzag", "nan-high", "anneal-steps", "anneal-shape",
        "const-inf"])
def test_bad_schedule_raises_value_error_naming_it(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_add_param_group_bad_option_raises():
    opt = NSF([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "lr": -1.0})
    with pytest.raises(ValueError, match="scale"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "scale": "bogus"})
    with pytest.raises(ValueError, match="p"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))], "p": float("nan")})


def test_add_param_group_rejected_group_is_not_kept():
    w = nn.Parameter(torch.ones(2))
    opt = NSF([w], lr=0.1, scale="raw", p=0.25)
    bad = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [bad], "lr": -1.0})
    assert len(opt.param_groups) == 1
    bad.grad = torch.ones(2)
    w.grad = torch.ones(2)
    opt.step()  # must not apply a negative learning rate to `bad`
    assert torch.equal(bad, torch.ones(2))


def test_set_of_params_raises_type_error():
    # torch.optim rejects an unordered set in a param group (ordering would differ between runs); a top-level
    # set is turned into a list by torch.optim.Optimizer itself (torch.optim.Adam accepts it too).
    params = {nn.Parameter(torch.ones(2)), nn.Parameter(torch.zeros(2))}
    with pytest.raises(TypeError, match="ordered"):
        NSF([{"params": params}])
    opt = NSF([nn.Parameter(torch.ones(2))])
    with pytest.raises(TypeError, match="ordered"):
        opt.add_param_group({"params": {nn.Parameter(torch.ones(2))}})


@pytest.mark.parametrize("foreach", [False, True])
def test_sparse_gradient_raises(foreach):
    w = nn.Parameter(torch.ones(4, 2))
    w.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (4, 2), check_invariants=True)
    opt = NSF([w], foreach=foreach)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_foreach_with_differentiable_raises():
    with pytest.raises(ValueError, match="differentiable"):
        NSF([nn.Parameter(torch.ones(2))], foreach=True, differentiable=True)


def test_per_group_foreach_with_differentiable_raises():
    x = torch.randn(3, dtype=F64, requires_grad=True)
    w = torch.ones(3, dtype=F64)
    with pytest.raises((ValueError, RuntimeError)):
        opt = NSF([{"params": [w], "foreach": True}], differentiable=True, scale="raw", p=0.3)
        w.grad = x * 2
        opt.step()


# ----------------------------------------------------------------------------------------------------------
# 9. complex parameters


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("scale", ["raw", "sgd", "adam"])
@pytest.mark.parametrize("p", [0.5, -0.25])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_complex_param_equals_view_as_real(foreach, scale, p, amsgrad):
    torch.manual_seed(5)
    z0 = torch.randn(4, 3, dtype=torch.complex128)
    zc = nn.Parameter(z0.clone())
    zr = nn.Parameter(torch.view_as_real(z0).clone())
    kw = dict(lr=0.05, p=p, scale=scale, amsgrad=amsgrad, weight_decay=0.01, foreach=foreach)
    oc, orr = NSF([zc], **kw), NSF([zr], **kw)
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        grad = torch.randn(4, 3, dtype=torch.complex128, generator=g)
        zc.grad = grad.clone()
        zr.grad = torch.view_as_real(grad).clone()
        oc.step()
        orr.step()
        torch.testing.assert_close(torch.view_as_real(zc.detach()), zr.detach(), rtol=1e-14, atol=1e-15)
    assert zc.dtype == torch.complex128
    torch.testing.assert_close(torch.view_as_real(oc.state[zc]["exp_avg_sq"]), orr.state[zr]["exp_avg_sq"],
                               rtol=1e-14, atol=1e-15)
    assert not torch.equal(zc.detach(), z0)


# ----------------------------------------------------------------------------------------------------------
# 10. torch.compile


def _compile_pair(p, lr=1e-2):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    m_eager, m_comp = _model(seed=4, dtype=F64), _model(seed=4, dtype=F64)
    o_eager = NSF(m_eager.parameters(), lr=lr, scale="raw", p=p, foreach=False)
    o_comp = NSF(m_comp.parameters(), lr=lr, scale="raw", p=p, foreach=False)

    @torch.compile(backend=counter)
    def compiled_step():
        o_comp.step()

    def both_step(k):
        for m, o in ((m_eager, o_eager), (m_comp, o_comp)):
            o.zero_grad()
            _loss(m, k).backward()
        before = [q.detach().clone() for q in m_eager.parameters()]
        o_eager.step()
        compiled_step()
        # updates, not parameters; traced, the bias corrections come from the float32 step tensor (as in
        # torch's Adam under compile): equal to ~1e-5 of the step, where a wrong p or step count is off by > 1 %
        for a, b, a0 in zip(m_eager.parameters(), m_comp.parameters(), before):
            step = (a - a0).detach()
            assert step.abs().max() > 0
            torch.testing.assert_close(b.detach() - a0, step, rtol=1e-4, atol=1e-4 * float(step.abs().max()))
            with torch.no_grad():
                b.copy_(a)  # the next step starts from the same θ: each update is compared on its own
        torch.testing.assert_close(o_eager.param_groups[0]["p"], o_comp.param_groups[0]["p"])

    both_step.eager = o_eager
    return counter, o_comp, both_step


def test_compiled_step_matches_eager_and_cyclic_p_does_not_recompile():
    schedule = Cyclic(-0.3, 0.6, period=24, shape="triangle")
    counter, opt, both_step = _compile_pair(schedule)
    for k in range(3):  # warm-up: state initialisation may compile more than once
        both_step(k)
    assert counter.frame_count > 0  # the step really went through dynamo
    frames = counter.frame_count
    seen = set()
    for k in range(3, 17):
        both_step(k)
        seen.add(float(opt.param_groups[0]["p"]))
    assert len(seen) >= 10 and min(seen) < 0 < max(seen)
    assert counter.frame_count == frames, "a moving p recompiled the step"


def test_compiled_step_fixed_p_filled_in_place_does_not_recompile():
    counter, opt, both_step = _compile_pair(0.3)
    for k in range(3):
        both_step(k)
    frames = counter.frame_count
    assert frames > 0
    p_tensor = opt.param_groups[0]["p"]
    values = [0.5, -0.25, 0.0, 0.1, -0.5, 0.25, 0.4, -0.1, 0.05, 0.45, -0.3, 0.2]
    for k, v in enumerate(values, start=3):
        both_step.eager.param_groups[0]["p"].fill_(v)  # the eager reference gets the same p
        p_tensor.fill_(v)
        both_step(k)
        assert opt.param_groups[0]["p"] is p_tensor and float(p_tensor) == v
    assert counter.frame_count == frames, "filling p in place recompiled the step"


# ----------------------------------------------------------------------------------------------------------
# 11. differentiable=True


@pytest.mark.parametrize("p,scale", [(0.3, "raw"), (-0.25, "sgd"), (0.5, "adam"), (0.0, "raw")])
def test_differentiable_step_gradcheck(p, scale):
    w0 = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=F64)

    def run(x, differentiable):
        w = w0.clone()
        opt = NSF([w], lr=0.1, p=p, scale=scale, weight_decay=0.05, differentiable=differentiable, foreach=False)
        for grad in (x * w0 + x**2, torch.sin(3 * x) - 0.5 * x):
            w.grad = grad if differentiable else grad.detach()
            opt.step()
        return w

    x = torch.tensor([0.4, -0.8, 1.1, 0.25], dtype=F64, requires_grad=True)
    out = run(x, True)
    assert out.requires_grad and out.grad_fn is not None
    torch.testing.assert_close(out.detach(), run(x.detach(), False), rtol=1e-14, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: run(t, True), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_non_differentiable_step_builds_no_graph():
    x = torch.tensor([0.4, -0.8], dtype=F64, requires_grad=True)
    w = nn.Parameter(torch.ones(2, dtype=F64))
    opt = NSF([w], scale="raw", p=0.3, foreach=False)
    w.grad = (x * 2).detach()
    opt.step()
    assert w.grad_fn is None and w.is_leaf


# ----------------------------------------------------------------------------------------------------------
# 12. HyperparamScheduler


def _opt_for_sched(p=Cyclic(0.0, 0.5, period=5), **kw):
    w = nn.Parameter(torch.linspace(-1, 1, 6, dtype=F64))
    return w, NSF([w], lr=0.1, scale="raw", p=p, **kw)


def _grad_step(w, opt, k):
    w.grad = torch.cos(w.detach() * (k + 1)) + 0.1 * k
    opt.step()


def test_hyperparam_scheduler_drives_lr():
    w, opt = _opt_for_sched()
    sched = HyperparamScheduler(opt, "lr", Anneal(0.1, 0.0, steps=4))
    values = []
    for k in range(6):
        values.append(opt.param_groups[0]["lr"])
        assert isinstance(opt.param_groups[0]["lr"], float)
        _grad_step(w, opt, k)
        sched.step()
    assert values == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.0])
    assert sched.get_last_value() == [0.0]
    before = w.detach().clone()
    _grad_step(w, opt, 6)  # lr 0: no move
    assert torch.equal(w.detach(), before)


def test_hyperparam_scheduler_drives_p_in_place_and_disables_own_schedule():
    w, opt = _opt_for_sched(p=Cyclic(0.0, 0.5, period=5))
    w_ref, ref = _opt_for_sched(p=0.0)
    p_tensor = opt.param_groups[0]["p"]
    driven = Cyclic(-0.25, 0.25, period=4, shape="triangle")
    sched = HyperparamScheduler(opt, "p", driven)
    assert opt.param_groups[0]["p_schedule"] is None
    for k in range(8):
        ref.param_groups[0]["p"].fill_(driven(k))
        _grad_step(w_ref, ref, k)
        _grad_step(w, opt, k)
        assert opt.param_groups[0]["p"] is p_tensor  # filled in place, never replaced
        assert float(p_tensor) == driven(k)
        assert torch.equal(w, w_ref)
        sched.step()
    assert opt.param_groups[0]["step"] == 8


def test_hyperparam_scheduler_overrides_plain_callable_p():
    w, opt = _opt_for_sched(p=_p_fn)
    HyperparamScheduler(opt, "p", 0.33)
    _grad_step(w, opt, 0)
    assert float(opt.param_groups[0]["p"]) == 0.33


def test_hyperparam_scheduler_drives_beta1_and_chains():
    w, opt = _opt_for_sched(p=0.25)
    s_beta = HyperparamScheduler(opt, "beta1", Anneal(0.9, 0.5, steps=4))
    s_lr = HyperparamScheduler(opt, "lr", Constant(0.02))
    w_ref, ref = _opt_for_sched(p=0.25)
    for k in range(6):
        expected_b1 = Anneal(0.9, 0.5, steps=4)(k)
        assert opt.param_groups[0]["betas"][0] == pytest.approx(expected_b1)
        assert opt.param_groups[0]["betas"][1] == 0.999
        assert opt.param_groups[0]["lr"] == 0.02
        ref.param_groups[0]["betas"] = (expected_b1, 0.999)
        ref.param_groups[0]["lr"] = 0.02
        _grad_step(w, opt, k)
        _grad_step(w_ref, ref, k)
        torch.testing.assert_close(w, w_ref, rtol=1e-14, atol=0)
        s_beta.step()
        s_lr.step()


def test_hyperparam_scheduler_per_group_schedules():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = NSF([{"params": [a]}, {"params": [b]}], lr=0.1, scale="raw", p=0.25)
    sched = HyperparamScheduler(opt, "lr", [Constant(0.1), Anneal(0.2, 0.0, steps=2)])
    sched.step()
    assert sched.get_last_value() == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError):
        HyperparamScheduler(opt, "lr", [Constant(0.1)])


def test_hyperparam_scheduler_state_dict_round_trip(tmp_path):
    schedule = Cyclic(-0.2, 0.4, period=6, shape="cosine")
    w, opt = _opt_for_sched(p=0.25)
    sched = HyperparamScheduler(opt, "p", schedule)
    for k in range(4):
        _grad_step(w, opt, k)
        sched.step()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.pt")
    ckpt = torch.load(tmp_path / "s.pt", weights_only=True)

    w2 = nn.Parameter(w.detach().clone())
    opt2 = NSF([w2], lr=0.1, scale="raw", p=0.0)
    opt2.load_state_dict(ckpt["opt"])
    sched2 = HyperparamScheduler(opt2, "p", Constant(0.0))  # a different schedule: it must come from the dict
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.last_step == sched.last_step == 4
    assert torch.equal(opt2.param_groups[0]["p"], opt.param_groups[0]["p"])
    for k in range(4, 10):
        _grad_step(w, opt, k)
        _grad_step(w2, opt2, k)
        sched.step()
        sched2.step()
        assert torch.equal(w, w2)
        assert sched2.get_last_value() == sched.get_last_value() == [pytest.approx(schedule(k + 1))]
    with pytest.raises(ValueError):
        HyperparamScheduler(opt2, "lr", 0.1).load_state_dict(ckpt["sched"])


def test_hyperparam_scheduler_unknown_key_raises_key_error():
    _, opt = _opt_for_sched()
    with pytest.raises(KeyError, match="bogus"):
        HyperparamScheduler(opt, "bogus", 0.1)
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(KeyError, match="'p'"):
        HyperparamScheduler(sgd, "p", 0.1)
    # a torch optimizer's lr works too
    s = HyperparamScheduler(sgd, "lr", Anneal(0.1, 0.05, steps=1))
    s.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------------------
# 13. zero_grad and groups without gradients


@pytest.mark.parametrize("foreach", [False, True])
def test_group_without_grads_takes_no_step_and_its_clock_stands(foreach):
    a, b = nn.Parameter(torch.linspace(-1, 1, 4)), nn.Parameter(torch.linspace(1, 2, 3))
    sched_b = Cyclic(-0.25, 0.5, period=5)
    opt = NSF([{"params": [a], "p": Cyclic(0.0, 0.5, period=3)}, {"params": [b], "p": sched_b}],
              lr=0.05, foreach=foreach)

    def grads(with_b):
        a.grad = torch.cos(a.detach()) + 0.3
        b.grad = torch.sin(b.detach()) - 0.2 if with_b else None

    grads(True)
    opt.step()
    assert [g["step"] for g in opt.param_groups] == [1, 1]

    b_before, b_state = b.detach().clone(), {k: v.clone() for k, v in opt.state[b].items()}
    p_b = float(opt.param_groups[1]["p"])
    for _ in range(3):
        grads(False)
        opt.step()
    assert [g["step"] for g in opt.param_groups] == [4, 1]
    assert torch.equal(b, b_before)
    assert all(torch.equal(opt.state[b][k], v) for k, v in b_state.items())
    assert float(opt.param_groups[1]["p"]) == p_b == sched_b(0)

    grads(True)
    opt.step()
    assert [g["step"] for g in opt.param_groups] == [5, 2]
    assert float(opt.param_groups[1]["p"]) == sched_b(1)  # the clock resumed where it stood
    assert float(opt.state[b]["step"]) == 2.0

    opt.zero_grad()
    assert a.grad is None and b.grad is None
    snapshot = (a.detach().clone(), b.detach().clone())
    opt.step()
    assert [g["step"] for g in opt.param_groups] == [5, 2]
    assert torch.equal(a, snapshot[0]) and torch.equal(b, snapshot[1])


def test_params_without_grads_inside_a_group_are_untouched():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = NSF([a, b], lr=0.1, scale="raw", p=0.25)
    a.grad = torch.full((3,), 0.5)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and len(opt.state[b]) == 0
    assert not torch.equal(a, torch.ones(3))
    assert opt.param_groups[0]["step"] == 1

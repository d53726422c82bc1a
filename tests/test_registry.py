"""create_optimizer: every optimizer from one spec language."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nsf
from nsf.registry import OPTIMIZERS, create_optimizer, parse_spec, spec_to_str


def params():
    return [torch.zeros(3, requires_grad=True)]


G = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)


def _graft(d, ref):
    return d * ref.norm() / d.norm()


#: the first step of every registry optimizer for the gradient G at θ = 0, written out from its definition
#: (first step: m̂ = g, v̂ = g²; torch's SGD: buffer = g; Adam: g/(|g|+ε) ≈ 1) with the preset lr it must use
FIRST_STEP = {
    "sgd": -0.05 * G,
    "adam": -1e-3 * torch.ones(3, dtype=torch.float64),
    "adamw": -1e-3 * torch.ones(3, dtype=torch.float64),
    "padam": -0.1 * G / G.sqrt().sqrt(),  # p = 1/8: g / (g²)^(1/8), raw
    "nsf": -1e-3 * _graft(G, torch.ones(3, dtype=torch.float64)),  # p(0) = 0: momentum's direction, Adam's length
    "nsf-fixed": -1.0 * G / G.sqrt(),  # p = 1/4, raw
    "nsf-cyclic": -1e-2 * G * G.sqrt(),  # p(0) = -1/4, raw
    "nsf-cyclic-sgd": -1e-2 * _graft(G * G.sqrt(), G),  # p(0) = -1/4, length of m̂
    "nsf-cyclic-adam": -1e-3 * _graft(G * G.sqrt(), torch.ones(3, dtype=torch.float64)),
    "fsgdm": -0.05 * G,  # buffer starts at 0: b = v·g with v = 1
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_name_takes_its_defined_first_step(name):
    ps = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    opt = create_optimizer(name, ps, total_steps=10)  # FSGDM needs the run's length
    ps[0].grad = G.clone()
    opt.step()
    torch.testing.assert_close(ps[0].detach(), FIRST_STEP[name], rtol=1e-6, atol=0)


def test_baselines_are_torch_optimizers():
    assert type(create_optimizer("sgd", params())) is torch.optim.SGD
    assert create_optimizer("sgd", params()).param_groups[0]["momentum"] == 0.9
    assert type(create_optimizer("adam", params())) is torch.optim.Adam
    assert type(create_optimizer("adamw", params())) is torch.optim.AdamW


def test_string_options_schedules_and_overrides():
    opt = create_optimizer("nsf-cyclic-adam:p=cyclic(-0.2,0.3,50,square),lr=3e-3,betas=(0.8,0.99)", params(),
                           weight_decay=0.1)
    group = opt.param_groups[0]
    assert group["scale"] == "adam" and group["lr"] == 3e-3 and group["betas"] == (0.8, 0.99)
    assert group["weight_decay"] == 0.1
    assert group["p_schedule"] == nsf.schedules.Cyclic(-0.2, 0.3, 50, "square").to_dict()
    assert create_optimizer("nsf-fixed:p=-0.25", params()).param_groups[0]["p"].item() == -0.25
    assert create_optimizer("adam", params(), lr=0.5).param_groups[0]["lr"] == 0.5  # override wins


def test_dict_and_string_forms_agree_and_are_json():
    a = parse_spec("nsf-fixed:p=-0.25,scale=sgd")
    b = parse_spec({"name": "nsf-fixed", "p": -0.25, "scale": "sgd"})
    assert a == b == json.loads(json.dumps(a))
    c = parse_spec({"name": "nsf", "p": nsf.schedules.Anneal(0.5, 0, 100)})
    assert c["p"] == {"type": "anneal", "start": 0.5, "end": 0.0, "steps": 100, "shape": "linear"}
    assert spec_to_str("nsf-cyclic:p=cyclic(-0.25,0.25,500,cosine)") == "nsf-cyclic:p=cyclic(-0.25,0.25,500,cosine)"
    for spec in ["adam", "nsf-cyclic-adam:p=cyclic(-0.2,0.3,50,square,0.25,quantize=0.25),lr=0.003",
                 {"name": "nsf", "p": nsf.schedules.Anneal(0.5, 0.0, 100, "cosine"), "betas": (0.8, 0.99)}]:
        assert parse_spec(spec_to_str(spec)) == parse_spec(spec)  # the short form reads back


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: sgd, adam, adamw, padam, nsf"):
        create_optimizer("adamax", params())


def test_unknown_option_names_it_and_lists_options():
    with pytest.raises(ValueError, match="no option momentum.*its options: lr"):
        create_optimizer("adam", params(), momentum=0.9)
    with pytest.raises(ValueError, match="not key=value"):
        parse_spec("nsf:0.25")


@pytest.mark.parametrize("word, value", [("true", True), ("FALSE", False), ("Yes", True), ("no", False),
                                         ("1", True), ("0", False), ("True", True)])
def test_spec_booleans_are_parsed_not_kept_as_strings(word, value):
    d = parse_spec(f"nsf-fixed:maximize={word},amsgrad={word}")
    assert d["maximize"] is value and d["amsgrad"] is value
    assert create_optimizer(f"adam:amsgrad={word}", params()).param_groups[0]["amsgrad"] is value
    assert parse_spec({"name": "nsf", "maximize": word})["maximize"] is value


def test_maximize_false_in_a_spec_minimizes():
    """The bug: the string 'false' was truthy, so the loss rose from 5 to 78.6 in 20 steps."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = create_optimizer("nsf-fixed:maximize=false,lr=0.05", [w])
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_optional_flags_take_none():
    d = parse_spec("adam:foreach=none,fused=False")
    assert d["foreach"] is None and d["fused"] is False


@pytest.mark.parametrize("spec, message", [
    ("nsf-fixed:maximize=maybe", "maximize must be a boolean"),
    ({"name": "nsf", "foreach": "maybe"}, "foreach must be a boolean"),
    ({"name": "adam", "amsgrad": 2}, "amsgrad must be a boolean"),
    ("nsf:betas=0.9", r"betas must be a pair"),
    ("nsf:betas=(0.9,0.99,0.999)", r"betas must be a pair"),
    ("nsf:betas=(0.9,x)", r"betas must be a pair"),
    ({"name": "nsf", "betas": (0.9, "x")}, r"betas\[1\] must be a number"),
    ("nsf:p=banana", "p must be a number"),
    ("nsf:lr=fast", "lr must be a number"),
    ("nsf:lr=true", "lr must be a number"),
    ("nsf:scale=banana", "Invalid scale"),
    ("nsf:lr=-1", "Invalid learning rate"),
    ("nsf:betas=(0.9,1.0)", r"betas\[1\]"),
    ("adam:eps=-1", "epsilon"),
    ("nsf:p=cyclic(0.5,0.25,100)", "high"),
    ({"name": "nsf", "p": {"type": "sequence"}}, "sequence is described"),
    ("nsf:p=cyclic(-0.25,0.25,cycles=0)", "cycles must be > 0"),
    ("nsf:p=cyclic(-0.25,0.25,100,cycles=4)", "either"),
])
def test_every_value_is_validated_at_parse_time(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_numpy_and_tensor_scalars_in_dict_specs_become_numbers():
    d = parse_spec({"name": "nsf", "lr": np.float32(0.5), "eps": torch.tensor(1e-6), "betas": (0.8, np.float64(0.9))})
    assert d == {"name": "nsf", "lr": 0.5, "eps": pytest.approx(1e-6), "betas": [0.8, 0.9]}
    assert json.loads(json.dumps(d)) == d


def test_cycles_per_run_in_the_spec_language():
    spec = "nsf-cyclic-adam:p=cyclic(-0.25,0.25,cycles=4,shape=cosine)"
    d = parse_spec(spec)
    assert d["p"] == {"type": "cyclic", "low": -0.25, "high": 0.25, "cycles": 4.0, "shape": "cosine", "phase": 0.0}
    assert parse_spec(spec_to_str(spec)) == d
    with pytest.raises(ValueError, match="stated per run.*total_steps=T"):
        create_optimizer(spec, params())
    opt = create_optimizer(spec, params(), total_steps=200)
    got = nsf.schedules.from_dict(opt.param_groups[0]["p_schedule"])
    want = nsf.schedules.Cyclic(-0.25, 0.25, period=50, shape="cosine")  # 4 cycles in 200 steps
    assert [got(s) for s in range(400)] == [want(s) for s in range(400)]
    # total_steps leaves a spec without per-run cycles alone
    assert create_optimizer("adam", params(), total_steps=200).param_groups[0]["lr"] == 1e-3


def test_a_plain_callable_p_cannot_be_part_of_a_spec():
    with pytest.raises(ValueError, match="plain-callable"):
        parse_spec({"name": "nsf", "p": lambda step: 0.1})


def test_fsgdm_gets_the_runs_length_from_create_optimizer():
    ps = params()
    with pytest.raises(ValueError, match="total_steps"):
        create_optimizer("fsgdm", ps)
    assert create_optimizer("fsgdm", ps, total_steps=123).param_groups[0]["total_steps"] == 123


def test_a_sequence_schedule_round_trips_through_its_text():
    from nsf.schedules import Constant, Cyclic, Sequence
    spec = {"name": "nsf", "p": Sequence([(100, Constant(0.5)), (200, Cyclic(-0.25, 0.25, period=50))]), "lr": 0.1}
    text = spec_to_str(spec)
    assert parse_spec(text) == parse_spec(spec)


def test_records_pin_the_library_default_so_a_new_default_gets_new_run_ids(monkeypatch):
    """make_config writes out the p and scale that "nsf" takes from the library defaults: a record of the old
    default is never reused for a new one. Names whose presets fix p and scale keep their (old) run ids."""
    from nsf import registry
    from nsf_lab.experiment.store import make_config, run_id
    from nsf.optim.defaults import DEFAULT_P, DEFAULT_SCALE
    cfg = make_config("digits-mlp", "nsf", 1e-3, 0)
    assert cfg["optimizer"] == {"name": "nsf", "p": DEFAULT_P.to_dict(), "scale": DEFAULT_SCALE}
    assert make_config("digits-mlp", "nsf:scale=sgd", 1e-3, 0)["optimizer"]["scale"] == "sgd"
    for name in ("padam", "nsf-fixed", "nsf-cyclic-adam", "adam"):
        assert make_config("digits-mlp", name, 1e-3, 0)["optimizer"] == {"name": name}
    monkeypatch.setattr(registry, "DEFAULT_P", nsf.schedules.Cyclic(-0.25, 0.25, period=1000, shape="cosine"))
    assert run_id(make_config("digits-mlp", "nsf", 1e-3, 0)) != run_id(cfg)

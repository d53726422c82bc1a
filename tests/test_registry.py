"""create_optimizer: every optimizer from one spec language."""

from __future__ import annotations

import json

import pytest
import torch

import nsf
from nsf.registry import OPTIMIZERS, create_optimizer, parse_spec, spec_to_str


def params():
    return [torch.zeros(3, requires_grad=True)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_name_builds_and_steps(name):
    ps = params()
    opt = create_optimizer(name, ps, **({"total_steps": 10} if name == "fsgdm" else {}))
    ps[0].grad = torch.ones(3)
    opt.step()
    assert not torch.equal(ps[0].detach(), torch.zeros(3))


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

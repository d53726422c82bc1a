"""Model-aware parameter groups (nsf.param_groups, create_optimizer(spec, model)): the no-decay rule, what the
optimizer then does with it (Δθ), per-module LR multipliers, and parameters/groups passed through unchanged."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import nsf


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.gn = nn.GroupNorm(2, 6)
        self.ln2d = nn.LayerNorm((6, 5))  # 2-D weight, still a normalisation layer
        self.rms = nn.RMSNorm(6)
        self.temperature = nn.Parameter(torch.ones(()))  # a learned scalar
        self.head = nn.Sequential(nn.Linear(30, 8), nn.Linear(8, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, idx):
        h = self.embed(idx).transpose(1, 2)  # (batch, 6, 5)
        h = self.ln2d(self.gn(self.bn(self.conv(h))))
        h = self.rms(h.transpose(1, 2)).flatten(1)
        return self.frozen(self.head(h)) * self.temperature


DECAYED = {"embed.weight", "conv.weight", "head.0.weight", "head.1.weight"}
NOT_DECAYED = {"conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln2d.weight", "ln2d.bias",
               "rms.weight", "temperature", "head.0.bias", "head.1.bias"}


def _by_decay(groups):
    out = {}
    for g in groups:
        out.setdefault(g["weight_decay"] > 0, set()).update(g["param_names"])
    return out


def test_rule_no_decay_for_1d_and_norm_parameters_frozen_left_out():
    groups = nsf.param_groups(Net(), weight_decay=0.1)
    assert _by_decay(groups) == {True: DECAYED, False: NOT_DECAYED}
    for g in groups:  # names and tensors line up
        assert len(g["params"]) == len(g["param_names"])


def test_decay_norm_and_bias_decays_every_trainable_parameter():
    groups = nsf.param_groups(Net(), weight_decay=0.1, decay_norm_and_bias=True)
    assert _by_decay(groups) == {True: DECAYED | NOT_DECAYED}


def test_no_weight_decay_method_is_honoured():
    model = Net()
    model.no_weight_decay = lambda: {"embed.weight"}
    assert _by_decay(nsf.param_groups(model, weight_decay=0.1))[False] == NOT_DECAYED | {"embed.weight"}


@pytest.mark.parametrize("spec", ["adamw", "nsf", "nsf-fixed:p=-0.25,scale=sgd"])
def test_excluded_parameters_take_no_decay_step(spec):
    """With zero gradients the only step is weight decay: decayed tensors move, excluded ones must not."""
    model = Net().double()
    opt = nsf.create_optimizer(spec, model, weight_decay=0.5, lr=1e-2)
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    opt.step()
    for name, q in model.named_parameters():
        moved = bool((q.detach() - before[name]).abs().max() > 0)
        assert moved == (name in DECAYED), name


def test_parameters_and_groups_are_used_as_given():
    model = Net()
    opt = nsf.create_optimizer("adamw", model.parameters(), weight_decay=0.05)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.05
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))  # frozen ones included, as before
    groups = [{"params": list(model.head.parameters()), "lr": 0.5}]
    opt = nsf.create_optimizer("nsf", groups)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="need the model"):
        nsf.create_optimizer("nsf", model.parameters(), lr_scale={"head": 2.0})


def test_lr_scale_longest_prefix_wins_and_a_torch_scheduler_keeps_the_ratios():
    model = Net()
    opt = nsf.create_optimizer("adamw", model, lr=1e-3, lr_scale={"head": 10.0, "head.1": 0.5, "": 2.0})
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert lrs["head.0.weight"] == pytest.approx(1e-2) and lrs["head.0.bias"] == pytest.approx(1e-2)
    assert lrs["head.1.weight"] == pytest.approx(5e-4)
    assert lrs["conv.weight"] == pytest.approx(2e-3) and lrs["temperature"] == pytest.approx(2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    for _ in range(3):
        opt.step()
        sched.step()
    assert {n: g["lr"] for g in opt.param_groups for n in g["param_names"]} == pytest.approx(
        {n: lr / 8 for n, lr in lrs.items()})


def test_lr_scale_callable_and_errors():
    groups = nsf.param_groups(Net(), lr=1.0, lr_scale=lambda name: 3.0 if name.startswith("conv") else 1.0)
    assert {n: g["lr"] for g in groups for n in g["param_names"]}["conv.bias"] == 3.0
    assert all("weight_decay" not in g for g in groups)  # not asked: the optimizer's own value applies
    with pytest.raises(ValueError, match="names no module"):
        nsf.param_groups(Net(), lr=1.0, lr_scale={"hed": 2.0})
    with pytest.raises(ValueError, match="pass lr"):
        nsf.param_groups(Net(), lr_scale={"head": 2.0})
    with pytest.raises(ValueError, match="nn.Module"):
        nsf.param_groups(list(Net().parameters()))


def test_state_dict_round_trip_keeps_groups_and_names():
    model = Net()
    opt = nsf.create_optimizer("nsf", model, weight_decay=1e-2, lr_scale={"head": 3.0})
    model(torch.randint(0, 10, (4, 5))).sum().backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = nsf.create_optimizer("nsf", model, weight_decay=1e-2, lr_scale={"head": 3.0})
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert [g["param_names"] for g in fresh.param_groups] == [g["param_names"] for g in opt.param_groups]
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in opt.param_groups]


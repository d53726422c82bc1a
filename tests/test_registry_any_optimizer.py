"""The registry takes any optimizer: torch's by lowercase name, any class by import path, one's own by
``nsf.register_optimizer`` — through ``create_optimizer``, the bench planner and sweep, and a spectral
instrument — and checks values without building an optimizer."""

from __future__ import annotations

import json

import pytest
import torch

import nsf
from nsf import registry
from nsf.registry import OPTIMIZERS, create_optimizer, parse_spec, register_optimizer, spec_to_str

G = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)


class Lion(torch.optim.Optimizer):
    """The toy optimizer of these tests, Lion (Chen et al. 2023): θ ← θ(1 - lr·wd) - lr·sign(β1 m + (1-β1) g),
    then m ← β2 m + (1-β2) g. ``steps`` counts the calls of ``step`` in this process."""
    steps = 0

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not 0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((beta1 * m + (1 - beta1) * p.grad).sign(), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        Lion.steps += 1
        return loss


def first_step(opt: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    before = param.detach().clone()
    param.grad = G.clone()
    opt.step()
    return param.detach() - before


@pytest.fixture
def toy():
    """``"toy-lion"`` registered for one test (lr preset 3e-4), then removed."""
    entry = register_optimizer("toy-lion", Lion, preset={"lr": 3e-4}, doc="Lion, the tests' toy")
    yield entry
    registry._ENTRIES.pop("toy-lion", None)


# ----------------------------------------------------------------------------------------------------------
# torch's optimizers by name


def _torch_optimizers() -> set[str]:
    return {n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
            and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != "Optimizer"}


def test_every_torch_optimizer_with_an_ordinary_step_has_its_lowercase_name():
    excluded = {"LBFGS", "SparseAdam", "Muon"}
    for cls in sorted(_torch_optimizers() - excluded):
        entry = OPTIMIZERS[cls.lower()]
        assert entry.factory is getattr(torch.optim, cls)
        if cls not in ("SGD", "Adam", "AdamW"):  # the others at torch's own defaults
            assert dict(entry.preset) == {}
    assert OPTIMIZERS["sgd"].preset == {"lr": 0.05, "momentum": 0.9}  # the names of before keep their presets
    for cls in excluded & _torch_optimizers():
        assert cls.lower() not in OPTIMIZERS


def test_the_excluded_torch_optimizers_cannot_train_a_whole_model():
    """The reasons the registry gives for leaving them out hold for the installed torch."""
    w, b = torch.zeros(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="closure"):
        torch.optim.LBFGS([b]).step()
    b.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="dense"):
        torch.optim.SparseAdam([b]).step()
    if hasattr(torch.optim, "Muon"):
        with pytest.raises(ValueError, match="2D"):
            torch.optim.Muon([w, b])
        assert type(create_optimizer("torch.optim:Muon", [w])) is torch.optim.Muon  # matrices: by import path


def test_torch_names_take_typed_options():
    opt = create_optimizer("rmsprop:lr=0.02,centered=yes,momentum=0.5", [torch.zeros(3, requires_grad=True)])
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.RMSprop and group["centered"] is True and group["momentum"] == 0.5
    opt = create_optimizer("rprop:etas=(0.4,1.3),step_sizes=(1e-5,10)", [torch.zeros(3, requires_grad=True)])
    assert opt.param_groups[0]["etas"] == (0.4, 1.3) and opt.param_groups[0]["step_sizes"] == (1e-5, 10)
    assert parse_spec("adagrad:lr_decay=0") == {"name": "adagrad", "lr_decay": 0}  # an int stays an int
    with pytest.raises(ValueError, match="etas must be a pair of numbers such as etas=\\(0.5,1.2\\)"):
        parse_spec("rprop:etas=0.5")


def test_values_are_checked_without_building_an_optimizer(monkeypatch):
    """The constructor's own checks run with no parameters: no param group (stand-in parameter) is ever made."""
    def refuse(self, group):
        raise AssertionError("parse_spec built an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "add_param_group", refuse)
    monkeypatch.setattr(nsf.NSF, "add_param_group", refuse)
    for spec in ["adam:eps=1e-6", "nsf-cyclic-adam", "fsgdm:c=0.05", "rmsprop", "nsf:p=cyclic(0,0.5,cycles=2)"]:
        parse_spec(spec)
    with pytest.raises(ValueError, match="optimizer 'adam': Invalid epsilon"):
        parse_spec("adam:eps=-1")
    with pytest.raises(ValueError, match="optimizer 'nsf'.*betas"):
        parse_spec("nsf:betas=(0.9,1.5)")
    with pytest.raises(ValueError, match="FSGDM: Invalid c: 0.0; it must be a finite number > 0"):
        parse_spec("fsgdm:c=0")


# ----------------------------------------------------------------------------------------------------------
# any optimizer by import path


def test_an_import_path_builds_any_optimizer_with_options_typed_from_its_signature():
    spec = f"{__name__}:Lion,betas=(0.9,0.95),weight_decay=0"
    d = parse_spec(spec)
    assert d == {"name": f"{__name__}:Lion", "betas": [0.9, 0.95], "weight_decay": 0}
    assert spec_to_str(spec) == f"{__name__}:Lion,betas=(0.9,0.95),weight_decay=0"
    assert parse_spec(spec_to_str(spec)) == d == parse_spec(d) == json.loads(json.dumps(d))
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = create_optimizer(spec, [p], lr=0.5)
    assert type(opt) is Lion and opt.param_groups[0]["betas"] == (0.9, 0.95)
    torch.testing.assert_close(first_step(opt, p), -0.5 * G.sign(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"betas must be a pair"):
        parse_spec(f"{__name__}:Lion,betas=0.9")
    with pytest.raises(ValueError, match="has no option momentum; its options: lr, betas, weight_decay"):
        parse_spec(f"{__name__}:Lion,momentum=0.9")


def test_torch_optim_by_import_path():
    opt = create_optimizer("torch.optim:RAdam,lr=1e-3,decoupled_weight_decay=yes",
                           [torch.zeros(2, requires_grad=True)])
    assert type(opt) is torch.optim.RAdam and opt.param_groups[0]["decoupled_weight_decay"] is True
    d = parse_spec({"name": "torch.optim:RAdam", "foreach": "none"})
    assert d == {"name": "torch.optim:RAdam", "foreach": None}
    assert spec_to_str("torch.optim:RAdam") == "torch.optim:RAdam"


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_here:Opt", "cannot import 'no_such_module_here'"),
    ("torch.optim:NoSuchOptimizer", "has no attribute 'NoSuchOptimizer'"),
    ("torch.optim:RAdam,lr", "option 'lr' in spec .* is not key=value"),
    ("adam:0.1", "option '0.1' in spec .* is not key=value"),
])
def test_a_bad_import_path_is_a_clear_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


# ----------------------------------------------------------------------------------------------------------
# one's own optimizer by name


def test_a_registered_optimizer_is_built_and_spelled_like_a_builtin(toy):
    assert nsf.register_optimizer is register_optimizer and OPTIMIZERS["toy-lion"] is toy
    assert toy.doc == "Lion, the tests' toy" and toy.defaults == {"lr": 3e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = create_optimizer("Toy-Lion", [p])
    assert type(opt) is Lion and opt.param_groups[0]["lr"] == 3e-4  # the preset
    torch.testing.assert_close(first_step(opt, p), -3e-4 * G.sign(), rtol=0, atol=0)
    d = parse_spec("toy-lion:betas=(0.8,0.9),lr=1e-3")
    assert d == {"name": "toy-lion", "betas": [0.8, 0.9], "lr": 1e-3}
    assert spec_to_str(d) == "toy-lion:betas=(0.8,0.9),lr=0.001" and parse_spec(spec_to_str(d)) == d
    with pytest.raises(ValueError, match="toy-lion.*has no option momentum"):
        create_optimizer("toy-lion", [p], momentum=0.9)
    model = torch.nn.Linear(2, 1)  # model-aware groups read the preset lr and the constructor's weight_decay
    assert [g["lr"] for g in create_optimizer("toy-lion", model).param_groups] == [3e-4, 3e-4]


def test_registration_refuses_builtin_names_bad_names_and_silent_replacement(toy):
    with pytest.raises(ValueError, match="built-in"):
        register_optimizer("adam", Lion)
    for bad in ("toy lion", "a:b", "torch.optim", "", 3):
        with pytest.raises(ValueError, match="an optimizer name is"):
            register_optimizer(bad, Lion)
    assert register_optimizer("toy-lion", Lion, preset={"lr": 3e-4}).factory is Lion  # a module imported twice
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("toy-lion", torch.optim.Adam)
    assert register_optimizer("toy-lion", torch.optim.Adam, replace=True).factory is torch.optim.Adam
    with pytest.raises(TypeError):
        OPTIMIZERS["x"] = toy  # read-only: names come in through register_optimizer
    with pytest.raises(ValueError, match="no option momentum"):
        register_optimizer("toy-2", Lion, preset={"momentum": 0.9})
    assert "toy-2" not in OPTIMIZERS


def test_registration_takes_a_check_and_declared_option_kinds():
    def make(params, lr=0.1, **options):  # a factory function taking any option
        return torch.optim.SGD(params, lr=lr * options.get("gain", 1.0))

    def check(options):
        if options["lr"] > 1:
            raise ValueError(f"lr must be <= 1, got {options['lr']}")

    register_optimizer("toy-fn", make, types={"gain": "number", "p": "schedule"}, check=check)
    try:
        d = parse_spec("toy-fn:gain=2,p=cyclic(0,0.5,100),anything=(1,2)")
        assert d == {"name": "toy-fn", "gain": 2, "anything": [1, 2],
                     "p": {"type": "cyclic", "low": 0.0, "high": 0.5, "period": 100, "shape": "triangle",
                           "phase": 0.0}}
        with pytest.raises(ValueError, match="optimizer 'toy-fn': lr must be <= 1"):
            parse_spec("toy-fn:lr=2")
        assert create_optimizer("toy-fn:gain=2", [torch.zeros(1, requires_grad=True)]).param_groups[0]["lr"] == 0.2
        with pytest.raises(ValueError, match="unknown kind 'float'"):
            register_optimizer("toy-fn2", make, types={"gain": "float"})
    finally:
        registry._ENTRIES.pop("toy-fn", None)


# ----------------------------------------------------------------------------------------------------------
# the same protocol for anyone's optimizer: the bench and a spectral instrument


def test_a_registered_optimizer_runs_through_the_bench_planner_and_sweep(toy, tmp_path):
    from nsf_lab.bench.protocol import Planner
    from nsf_lab.bench.report import load
    from nsf_lab.bench.suites import Suite, suite_to_dict
    from nsf_lab.experiment.sweep import InlineEngine, Sweep, drive

    suite = Suite("toy", ["digits-mlp-tiny"], [("Lion", "toy-lion")], default="toy-lion:betas=(0.95,0.98)",
                  ablations=False, seeds=[0], budgets=[], tune_seeds=[100], max_points=3)
    sweep, _ = Sweep.create(tmp_path, suite_to_dict(suite))
    planner = Planner(suite, sweep.store)
    steps = Lion.steps
    stats = drive(sweep, planner.plan, InlineEngine())
    sweep.write_decisions(planner.decisions())
    assert stats["failed"] == 0 and stats["done"] >= 4 and Lion.steps > steps  # the toy did the training
    records = list(sweep.store.records().values())
    assert {r["config"]["optimizer"]["name"] for r in records} == {"toy-lion"}
    dec = load(tmp_path)
    for label, spec in dec.optimizers():
        assert len(dec.final_runs("digits-mlp-tiny", label, spec)) == 1


def test_a_registered_optimizer_runs_through_a_spectral_instrument(toy):
    from nsf_lab.experiment.tuner import Grid
    from nsf_lab.spectral import fprinciple

    steps = Lion.steps
    data = fprinciple.run(["toy-lion"], quick=True, steps=40, n=32, ks=(1, 4), seeds=[0], eval_every=10,
                          lr_grid=Grid(lo=1e-3, hi=1e-2, step=0.5), progress=False)
    assert data["settings"]["optimizers"] == ["toy-lion"] and Lion.steps > steps
    result = data["results"]["equal"]["toy-lion"]
    assert result["lr"] > 0 and len(result["runs"]) == 1 and not result["runs"][0]["diverged"]


def test_option_kinds_come_from_defaults_then_annotations_even_unevaluable_ones():
    def make(params, lr=0.1, steps=3, betas=(0.9, None), scale="raw", nesterov=False, *,
             foreach: "bool | None" = None, label: "Optional[str]" = None,
             dtype: "Undefined | None" = None):  # noqa: F821 -- an annotation that cannot be evaluated
        return torch.optim.SGD(params, lr=lr)

    register_optimizer("toy-kinds", make)
    try:
        kinds = {k: (o.kind, o.optional) for k, o in OPTIMIZERS["toy-kinds"].options.items()}
        assert kinds == {"lr": ("number", False), "steps": ("number", False), "betas": ("numbers", False),
                         "scale": ("word", False), "nesterov": ("flag", False), "foreach": ("flag", True),
                         "label": ("word", True), "dtype": ("literal", True)}
        d = parse_spec("toy-kinds:steps=5,betas=(0.5,None),scale=sgd,nesterov=yes,foreach=none,label=x,"
                       "dtype=float32")
        assert d == {"name": "toy-kinds", "steps": 5, "betas": [0.5, None], "scale": "sgd", "nesterov": True,
                     "foreach": None, "label": "x", "dtype": "float32"}
        with pytest.raises(ValueError, match=r"Invalid betas\[1\]: 'x'; it must be a real number"):
            parse_spec({"name": "toy-kinds", "betas": (0.5, "x")})
        with pytest.raises(ValueError, match="'name' names the optimizer"):
            parse_spec("toy-kinds:name=adam")
    finally:
        registry._ENTRIES.pop("toy-kinds", None)


WORKER_SCRIPT = '''
import os, torch
import nsf
from nsf_lab.spectral._common import map_seeds

class Toy(torch.optim.SGD):
    pass

nsf.register_optimizer("toy-worker", Toy, preset={"lr": 0.5})  # top level: workers re-import the script

def build(seed):
    return os.getpid(), [type(nsf.create_optimizer(spec, [torch.zeros(2, requires_grad=True)])).__name__
                         for spec in ("toy-worker", "torch.optim:RAdam,lr=0.01")]

if __name__ == "__main__":
    for pid, names in map_seeds(build, [0, 1], workers=2):
        print(pid != os.getpid(), *names)
'''


def test_a_name_registered_at_a_scripts_top_level_and_an_import_path_work_in_worker_processes(tmp_path):
    """``--workers N`` pools start by spawn or forkserver: both re-import the main script, so its registrations
    exist there; an import path needs nothing."""
    import subprocess
    import sys
    script = tmp_path / "script.py"
    script.write_text(WORKER_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["True Toy RAdam", "True Toy RAdam"]

"""The framework recipes in examples/ run for a few steps, learn, and their schedulers really drive NSF.
Each is skipped, with the reason, when its framework is not installed."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest

import nsf

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mean(xs):
    return sum(xs) / len(xs)


def assert_default_fitted_to_the_run(opt, steps: int) -> None:
    """NSF is the library default for a run of the trainer's step count (``total_steps``: two whole p cycles in
    ``steps``), and its p was stepped by the optimizer through the whole run."""
    assert isinstance(opt, nsf.NSF)
    group = opt.param_groups[0]
    cycle = nsf.default_cycle(total_steps=steps)
    assert group["total_steps"] == steps
    assert group["p_schedule"] == cycle.to_dict()  # not the fixed 1000-step period, not another run length
    assert group["step"] == steps and float(group["p"]) == pytest.approx(cycle(steps - 1))
    assert group["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine LR schedule ran to its end


def test_lightning_recipe():
    pytest.importorskip("lightning", reason="PyTorch Lightning not installed (pip install lightning)")
    recipe = _load("lightning_recipe")
    steps = 30
    model, losses = recipe.main(["--steps", str(steps)])
    assert len(losses) == steps
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:5])
    assert_default_fitted_to_the_run(model.trainer.optimizers[0], steps)


@pytest.mark.parametrize("via", ["trainer", "optimizers"])
def test_hf_trainer_recipe(via):
    pytest.importorskip("transformers", reason="transformers not installed (pip install transformers accelerate)")
    pytest.importorskip("accelerate", reason="accelerate not installed (the Trainer needs it)")
    recipe = _load("hf_trainer_recipe")
    trainer, losses = recipe.main(["--steps", "20", "--via", via])
    assert trainer.state.global_step == 20
    assert losses[-1] < 0.5 * losses[0]
    assert_default_fitted_to_the_run(getattr(trainer.optimizer, "optimizer", trainer.optimizer), 20)  # unwrapped


def test_compile_amp_recipe():
    recipe = _load("compile_amp_recipe")
    losses = recipe.main(["--steps", "30", "--backend", "aot_eager"])  # inductor: run the example by hand
    assert all(math.isfinite(x) for x in losses)
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:5])

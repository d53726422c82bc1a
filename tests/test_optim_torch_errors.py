"""torch's own error inputs for optimizers, run against nsf.NSF as torch's ``TestOptimRenewed.test_errors``
runs them (issue #20): the same exception types, messages matching torch's regexes. NSF's messages start with
torch's wording and add their detail after it, so code written against torch's messages reads ours."""

from __future__ import annotations

import pytest
import torch

# torch.testing._internal imports expecttest (the "test" extra)
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    get_error_inputs_for_all_optims,
    optim_error_inputs_func_adam,
)

from nsf import NSF

#: Adam's own error inputs whose inputs NSF refuses too (the others probe tensor betas, which NSF refuses with
#: its own message, tests/test_optim_inputs.py, and a tensor lr with foreach=True, which NSF supports)
ADAM_INPUTS_NSF_SHARES = ("beta1 should be between 0 and 1", "weight_decay should > 0")


def _check(error_input: ErrorOptimizerInput) -> None:
    """One input, as torch's test_errors checks it (assertRaisesRegex / assertWarnsRegex use re.search)."""
    optim_input = error_input.optimizer_error_input
    params, kwargs = optim_input.params, optim_input.kwargs
    expect = pytest.warns if issubclass(error_input.error_type, Warning) else pytest.raises
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(error_input.error_type, match=error_input.error_regex):
            NSF(params, **kwargs)
    elif error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
        optimizer = NSF(params, **kwargs)
        with expect(error_input.error_type, match=error_input.error_regex):
            optimizer.step()
    else:
        raise NotImplementedError(f"unknown error_on {error_input.error_on}")


GENERIC = get_error_inputs_for_all_optims("cpu", torch.float32)
SHARED = [e for e in optim_error_inputs_func_adam("cpu", torch.float32)
          if e.optimizer_error_input.desc in ADAM_INPUTS_NSF_SHARES]


def test_the_inputs_are_there():
    """A torch upgrade that renames or drops them fails here, not silently as an empty parametrisation."""
    assert len(GENERIC) >= 6 and len(SHARED) == len(ADAM_INPUTS_NSF_SHARES)
    assert any(e.error_regex == "Tensor lr must be 1-element" for e in GENERIC)


@pytest.mark.parametrize("error_input", GENERIC, ids=[e.optimizer_error_input.desc for e in GENERIC])
def test_torchs_generic_error_inputs(error_input):
    _check(error_input)


@pytest.mark.parametrize("error_input", SHARED, ids=[e.optimizer_error_input.desc for e in SHARED])
def test_adams_error_inputs_for_options_nsf_shares(error_input):
    _check(error_input)


@pytest.mark.parametrize("kwargs, torch_text", [
    (dict(lr=torch.tensor([1e-3, 1e-3])), "Tensor lr must be 1-element"),
    (dict(lr=-1.0), "Invalid learning rate: -1"),
    (dict(eps=-1.0), "Invalid epsilon value: -1"),
    (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
    (dict(weight_decay=-1.0), "Invalid weight_decay value: -1"),
])
def test_messages_start_with_torchs_text_then_say_more(kwargs, torch_text):
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError) as adam_error:
        torch.optim.Adam([w], **kwargs)
    assert str(adam_error.value).startswith(torch_text)  # torch's own wording, as of the installed torch
    with pytest.raises(ValueError) as nsf_error:
        NSF([w], **kwargs)
    message = str(nsf_error.value)
    assert message.startswith(torch_text) and len(message) > len(str(adam_error.value))

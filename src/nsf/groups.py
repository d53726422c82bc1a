"""Model-aware parameter groups: what ``create_optimizer(spec, model)`` builds from an ``nn.Module``.

The rule (timm's and Hugging Face's, so results port): a trainable parameter gets **no weight decay** when

* it has at most one dimension (biases, the scales and shifts of every normalisation layer, learned scalars),
* or it belongs to a normalisation layer (BatchNorm/InstanceNorm, LayerNorm, GroupNorm, RMSNorm),
* or its name is in ``model.no_weight_decay()``, if the model defines it (timm's convention);

every other parameter (weights of linear, convolution and embedding layers) gets ``weight_decay``.
``decay_norm_and_bias=True`` decays everything (as ``model.parameters()`` would). Frozen parameters
(``requires_grad=False``) are left out. ``lr_scale`` multiplies the learning rate per module.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = ["NORM_LAYERS", "param_groups"]

#: Modules whose parameters are never decayed by default (1-D parameters of any other module are not either).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _scale_for(lr_scale: Mapping[str, float] | Callable[[str], float] | None, name: str) -> float:
    """Multiplier of parameter ``name``: the longest module-name prefix in ``lr_scale`` that contains it."""
    if lr_scale is None:
        return 1.0
    if callable(lr_scale):
        return float(lr_scale(name))
    hits = [prefix for prefix in lr_scale if prefix == "" or name == prefix or name.startswith(prefix + ".")]
    return float(lr_scale[max(hits, key=len)]) if hits else 1.0


def param_groups(
    model: nn.Module, *, weight_decay: float | None = None, lr: float | torch.Tensor | None = None,
    lr_scale: Mapping[str, float] | Callable[[str], float] | None = None, decay_norm_and_bias: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups for ``model`` by the rule above, ready for any ``torch.optim`` optimizer.

    Each group has ``params``, ``param_names`` (kept by torch in ``param_groups`` and state dicts),
    ``weight_decay`` (unless ``weight_decay`` is None: then the optimizer's own, for every group), and ``lr``
    when ``lr_scale`` is given: ``lr_scale={"head": 10.0, "backbone.stem": 0.1}`` maps module names
    (longest matching prefix wins; ``""`` is the whole model) or ``lr_scale=f(param_name)`` to multipliers of
    ``lr``. A torch LR scheduler keeps the ratios (it scales each group's own initial lr); an
    ``nsf.HyperparamScheduler`` on ``"lr"`` sets every group to one value unless given one schedule per group.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"param_groups needs an nn.Module, got {type(model).__name__}")
    if lr_scale is not None and lr is None:
        raise ValueError("lr_scale multiplies a learning rate: pass lr=... as well")
    if lr_scale is not None and not callable(lr_scale) and not isinstance(lr_scale, Mapping):
        raise ValueError(f"lr_scale is a dict {{module name: multiplier}} or f(param_name), got {lr_scale!r}")
    if lr_scale is not None and not callable(lr_scale):
        known = {name for name, _ in model.named_modules()}
        unknown = sorted(prefix for prefix in lr_scale if prefix not in known)
        if unknown:
            raise ValueError(f"lr_scale names no module {unknown}; modules: {sorted(known - {''})[:20]}")
    skip = set(getattr(model, "no_weight_decay", lambda: ())())  # timm's convention: names never decayed

    in_norm = {id(q) for m in model.modules() if isinstance(m, NORM_LAYERS) for q in m.parameters(recurse=False)}
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = decay_norm_and_bias or not (param.ndim <= 1 or id(param) in in_norm or name in skip)
        scale = _scale_for(lr_scale, name)
        group = groups.get((decay, scale))
        if group is None:
            group = groups[(decay, scale)] = {"params": [], "param_names": []}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay if decay else 0.0
            if lr_scale is not None:
                group["lr"] = lr * scale
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())

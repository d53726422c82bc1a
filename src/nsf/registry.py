"""One way to build every optimizer in every script: ``create_optimizer(spec, params, **overrides)``.

A spec is a name (``"adam"``), a name with options (``"nsf-fixed:p=-0.25,lr=3e-3"``,
``"nsf-cyclic-adam:p=cyclic(-0.25,0.25,500,cosine)"``) or a dict (``{"name": "nsf-fixed", "p": -0.25}``).
``parse_spec`` turns any of them into a canonical JSON-able dict, which is what experiment records store; it
types and validates every value, so a bad spec fails before any run starts. A p cycle may be stated per run
(``p=cyclic(-0.25,0.25,cycles=4)``): ``create_optimizer(spec, params, total_steps=T)`` gives it the run's length.
"""

from __future__ import annotations

import ast
import inspect
import numbers
import re
from typing import Any, Callable

import torch

from . import schedules
from .groups import param_groups
from .optim import FSGDM, NSF
from .optim.defaults import DEFAULT_P, DEFAULT_SCALE

__all__ = ["OPTIMIZERS", "create_optimizer", "parse_spec", "pin_defaults", "spec_to_str"]

#: the nsf-cyclic* presets: the ±1/4 cosine cycle of the v1 benchmark (issue #4's search), fixed so that those
#: names keep their meaning when the library default changes ("nsf" is the library default).
_CYCLE = {"type": "cyclic", "low": -0.25, "high": 0.25, "period": 1000, "shape": "cosine", "phase": 0.0}

#: name -> (constructor, preset options). Options given in the spec or as overrides win over presets.
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    # Padam (Chen et al. 2020): fixed p = 1/8 with AMSGrad; bias correction as torch's amsgrad does it.
    "padam": (NSF, {"lr": 0.1, "p": 0.125, "amsgrad": True, "scale": "raw"}),
    "nsf": (NSF, {}),
    "nsf-fixed": (NSF, {"lr": 1.0, "p": 0.25, "scale": "raw"}),
    "nsf-cyclic": (NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "raw"}),
    "nsf-cyclic-sgd": (NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "sgd"}),
    "nsf-cyclic-adam": (NSF, {"lr": 1e-3, "p": _CYCLE, "scale": "adam"}),
    # FSGDM (arXiv 2411.19671), the frequency-domain peer; needs total_steps=T. lr: SGD-M's, as the paper does.
    "fsgdm": (FSGDM, {"lr": 0.05}),
}


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses, brackets and braces (a sequence schedule is written as its dict)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as scale=sgd or shape=cosine


_SCHEDULE_CALL = re.compile(r"^(constant|cyclic|anneal)\((.*)\)$", re.IGNORECASE | re.DOTALL)
_SCHEDULE_ARGS = {"constant": ("value",), "cyclic": ("low", "high", "period", "shape", "phase"),
                  "anneal": ("start", "end", "steps", "shape")}

#: how each option's value is read: flags are booleans, optional flags also None (torch chooses), pairs are
#: two numbers, words are names; every other option is a number. ``p`` is a number or a schedule.
_FLAGS = {"amsgrad", "maximize", "nesterov", "capturable", "differentiable", "decoupled_weight_decay"}
_OPTIONAL_FLAGS = {"foreach", "fused"}
_PAIRS = {"betas"}
_WORDS = {"scale", "state_dtype"}
_SCHEDULED = {"p"}
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _schedule_call(text: str) -> dict[str, Any] | None:
    """``cyclic(-0.25,0.25,cycles=4)`` -> its description (a per-run cycle keeps no ``total_steps``)."""
    match = _SCHEDULE_CALL.match(text.strip())
    if not match:
        return None
    kind = match.group(1).lower()
    kwargs: dict[str, Any] = {}
    for i, arg in enumerate(_split_top_level(match.group(2))):
        if "=" in arg:
            key, val = arg.split("=", 1)
            kwargs[key.strip()] = _literal(val.strip())
        elif i < len(_SCHEDULE_ARGS[kind]):
            kwargs[_SCHEDULE_ARGS[kind][i]] = _literal(arg)
        else:
            raise ValueError(f"too many arguments in {text!r}")
    return {"type": kind, **kwargs}


def _schedule(key: str, value: Any) -> Any:
    """A number or a canonical schedule description; a per-run cycle is checked and kept without its length."""
    if callable(value) and not isinstance(value, torch.Tensor):  # a Schedule, or a plain f(step)
        description = value.to_dict() if isinstance(value, schedules.Schedule) else None
        if description is None:
            raise ValueError(f"{key}: a plain-callable schedule cannot be part of a spec")
        value = description
    if isinstance(value, dict):
        unresolved = "cycles" in value and "total_steps" not in value
        d = schedules.from_dict(schedules.per_run(value, 1_000_000 if unresolved else None)).to_dict()
        if unresolved:
            del d["total_steps"]
        return d
    return _number(key, value)


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return value if isinstance(value, (int, float)) else float(value)  # numpy scalars -> float


def _typed(key: str, value: Any) -> Any:
    """The option's value as its type demands (text from a spec string or a Python value), or a ValueError."""
    text = value.strip() if isinstance(value, str) else None
    if key in _FLAGS or key in _OPTIONAL_FLAGS:
        if isinstance(value, bool) or (value is None and key in _OPTIONAL_FLAGS):
            return value
        if text is not None and text.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[text.lower()]
        if text is not None and text.lower() == "none" and key in _OPTIONAL_FLAGS:
            return None
        allowed = "true/false/1/0/yes/no" + ("/none" if key in _OPTIONAL_FLAGS else "")
        raise ValueError(f"{key} must be a boolean ({allowed}, any case), got {value!r}")
    if key in _WORDS:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a name, got {value!r}")
        return text
    if text is not None:
        call = _schedule_call(text) if key in _SCHEDULED else None
        value = call if call is not None else _literal(text)
    if key in _PAIRS:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"{key} must be a pair of numbers such as {key}=(0.9,0.999), got {value!r}")
        return [_number(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if key in _SCHEDULED:
        return _schedule(key, value)
    return _number(key, value)


def _check_names(name: str, options: dict[str, Any]) -> None:
    accepted = inspect.signature(OPTIMIZERS[name][0]).parameters
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        valid = ", ".join(k for k in accepted if k != "params")
        raise ValueError(f"optimizer {name!r} has no option {', '.join(unknown)}; its options: {valid}")


def _options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options typed and checked against ``name``'s constructor (every value validated before a run starts)."""
    factory, preset = OPTIMIZERS[name]
    _check_names(name, options)
    typed = {key: _typed(key, val) for key, val in options.items()}
    try:  # the constructor's own checks (ranges, enums), on a stand-in parameter
        _build(factory, [torch.zeros(1, requires_grad=True)], {**preset, **typed}, total_steps=1_000_000)
    except (TypeError, ValueError) as e:
        raise ValueError(f"optimizer {name!r}: {e}") from None
    return typed


def _build(factory, params, options: dict[str, Any], total_steps: int | None) -> torch.optim.Optimizer:
    try:
        options = {key: schedules.per_run(val, total_steps) for key, val in options.items()}
    except ValueError as e:
        raise ValueError(f"{e}: create_optimizer(spec, params, total_steps=T)") from None
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    accepted = inspect.signature(factory).parameters
    if "total_steps" in accepted and "total_steps" not in options:  # NSF: its p cycles; FSGDM: its momentum
        if total_steps is None and accepted["total_steps"].default is inspect.Parameter.empty:
            raise ValueError("this optimizer needs the run's length: create_optimizer(spec, params, total_steps=T)")
        if total_steps is not None:
            options["total_steps"] = total_steps
    return factory(params, **options)


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Canonical, JSON-able ``{"name": ..., option: value, ...}`` for any spec form (presets not filled in).

    Every value is typed and validated here (a ValueError names the option), so a bad spec fails before any
    run starts. Booleans are ``true/false/1/0/yes/no`` in any case; pairs such as ``betas`` are
    ``(0.9,0.999)``; a cycle stated per run (``p=cyclic(-0.25,0.25,cycles=4)``) is resolved by
    ``create_optimizer(..., total_steps=T)``.
    """
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"a dict spec needs a 'name' key naming the optimizer; got {spec!r}")
    elif isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        options = {}
        for item in _split_top_level(rest):
            if "=" not in item:
                raise ValueError(f"option {item!r} in spec {spec!r} is not key=value")
            key, val = item.split("=", 1)
            options[key.strip()] = val.strip()
    else:
        raise ValueError(f"an optimizer spec is a string or a dict, got {type(spec).__name__}")
    name = name.strip().lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    return {"name": name, **_options(name, options)}


def pin_defaults(spec: str | dict[str, Any]) -> dict[str, Any]:
    """``parse_spec`` with the NSF options that follow the library defaults (``p``, ``scale``) written out.

    Experiment records store this form, so a run id names what ran: when the library default changes,
    ``"nsf"`` gets new run ids instead of silently reusing records of the old default."""
    d = parse_spec(spec)
    factory, preset = OPTIMIZERS[d["name"]]
    if factory is NSF:
        for key, default in (("p", DEFAULT_P.to_dict()), ("scale", DEFAULT_SCALE)):
            if key not in d and key not in preset:
                d[key] = default  # already canonical: what parse_spec makes of it
    return d


def _schedule_str(d: dict[str, Any]) -> str:
    """``cyclic(-0.25,0.25,1000,cosine)``: the call ``parse_spec`` reads back (a zero phase is left out)."""
    names = _SCHEDULE_ARGS.get(d["type"])
    if names is None:  # a sequence has no string form: keep its description
        return str(d)
    rest = {k: v for k, v in d.items() if k != "type" and not (k == "phase" and v == 0)}
    def text(v: Any) -> str:  # shortest exact form: 0.0 -> 0, 0.25 -> 0.25
        return repr(v)[:-2] if isinstance(v, float) and repr(v).endswith(".0") else str(v)

    args = []
    for k in names:  # positional while the names come in order, then by keyword (cycles=4 has no period)
        if k not in rest:
            break
        args.append(text(rest.pop(k)))
    args += [f"{k}={text(v)}" for k, v in rest.items()]
    return f"{d['type']}({','.join(args)})"


def spec_to_str(spec: str | dict[str, Any]) -> str:
    """Short, stable, human-readable form of a spec (labels, reports); ``parse_spec`` reads it back."""
    d = parse_spec(spec)
    name = d.pop("name")
    def text(v: Any) -> str:
        if isinstance(v, dict) and "type" in v:
            return _schedule_str(v)
        return f"({','.join(map(str, v))})" if isinstance(v, list) else str(v)

    items = [f"{k}={text(v)}" for k, v in sorted(d.items())]
    return name + (":" + ",".join(items) if items else "")


def create_optimizer(spec: str | dict[str, Any], params, total_steps: int | None = None, *,
                     lr_scale: Any = None, decay_norm_and_bias: bool = False,
                     **overrides: Any) -> torch.optim.Optimizer:
    """Build the optimizer a spec names; ``overrides`` (e.g. ``lr=...``) win over the spec and presets.

    ``params`` is what torch optimizers take (parameters or param groups, used as given) or an ``nn.Module``:
    then the groups are ``nsf.param_groups(model, ...)`` — no weight decay for biases and normalisation
    parameters unless ``decay_norm_and_bias``, and ``lr_scale`` multipliers per module (see ``nsf.groups``).
    ``total_steps`` (the run's number of optimizer steps) resolves cycles stated per run; a spec that has one
    and no ``total_steps`` raises a ValueError. ``overrides`` are Python values, passed on as given.
    """
    d = parse_spec(spec)
    name = d.pop("name")
    factory, preset = OPTIMIZERS[name]
    _check_names(name, overrides)  # Python values: the constructor checks them
    options = {**preset, **d, **overrides}
    if isinstance(params, torch.nn.Module):
        accepted = inspect.signature(factory).parameters  # for the values the optimizer will use
        wd, lr = (options.get(k, getattr(accepted.get(k), "default", None)) for k in ("weight_decay", "lr"))
        params = param_groups(params, weight_decay=wd, lr=lr, lr_scale=lr_scale,
                              decay_norm_and_bias=decay_norm_and_bias)
    elif lr_scale is not None or decay_norm_and_bias:
        raise ValueError("lr_scale and decay_norm_and_bias need the model: create_optimizer(spec, model, ...)")
    return _build(factory, params, options, total_steps)

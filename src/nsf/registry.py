"""One way to build every optimizer in every script: ``create_optimizer(spec, params, **overrides)``.

A spec is a name (``"adam"``), a name with options (``"nsf-fixed:p=-0.25,lr=3e-3"``,
``"nsf-cyclic-adam:p=cyclic(-0.25,0.25,500,cosine)"``) or a dict (``{"name": "nsf-fixed", "p": -0.25}``).
``parse_spec`` turns any of them into a canonical JSON-able dict, which is what experiment records store.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any, Callable

import torch

from . import schedules
from .optim import FSGDM, NSF
from .optim.defaults import DEFAULT_P

__all__ = ["OPTIMIZERS", "create_optimizer", "parse_spec", "spec_to_str"]

_CYCLE = DEFAULT_P.to_dict()

#: name -> (constructor, preset options). Options given in the spec or as overrides win over presets.
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    # Padam (Chen et al. 2020): fixed p = 1/8 with AMSGrad; bias correction as torch's amsgrad does it.
    "padam": (NSF, {"lr": 0.1, "p": 0.125, "amsgrad": True, "scale": "raw"}),
    "nsf": (NSF, {}),
    "nsf-fixed": (NSF, {"p": 0.25, "scale": "raw"}),
    "nsf-cyclic": (NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "raw"}),
    "nsf-cyclic-sgd": (NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "sgd"}),
    "nsf-cyclic-adam": (NSF, {"lr": 1e-3, "p": _CYCLE, "scale": "adam"}),
    # FSGDM (arXiv 2411.19671), the frequency-domain peer; needs total_steps=T. lr: SGD-M's, as the paper does.
    "fsgdm": (FSGDM, {"lr": 0.05}),
}


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses/brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
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


def _value(text: str) -> Any:
    match = _SCHEDULE_CALL.match(text.strip())
    if not match:
        return _literal(text)
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
    return schedules.from_dict({"type": kind, **kwargs}).to_dict()


def _canonical(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, val in options.items():
        if isinstance(val, schedules.Schedule):
            d = val.to_dict()
            if d is None:
                raise ValueError(f"{key}: a plain-callable schedule cannot be part of a spec")
            val = d
        elif isinstance(val, tuple):
            val = list(val)
        out[key] = val
    return out


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Canonical ``{"name": ..., option: value, ...}`` for any spec form (presets not filled in)."""
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if name is None:
            raise ValueError(f"a dict spec needs a 'name' key; got {spec!r}")
    elif isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        options = {}
        for item in _split_top_level(rest):
            if "=" not in item:
                raise ValueError(f"option {item!r} in spec {spec!r} is not key=value")
            key, val = item.split("=", 1)
            options[key.strip()] = _value(val.strip())
    else:
        raise ValueError(f"an optimizer spec is a string or a dict, got {type(spec).__name__}")
    name = name.strip().lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    return {"name": name, **_canonical(options)}


def _schedule_str(d: dict[str, Any]) -> str:
    """``cyclic(-0.25,0.25,1000,cosine)``: the call ``parse_spec`` reads back (a zero phase is left out)."""
    names = _SCHEDULE_ARGS.get(d["type"])
    if names is None:  # a sequence has no string form: keep its description
        return str(d)
    rest = {k: v for k, v in d.items() if k != "type" and not (k == "phase" and v == 0)}
    def text(v: Any) -> str:  # shortest exact form: 0.0 -> 0, 0.25 -> 0.25
        return repr(v)[:-2] if isinstance(v, float) and repr(v).endswith(".0") else str(v)

    args = [text(rest.pop(k)) for k in names if k in rest] + [f"{k}={text(v)}" for k, v in rest.items()]
    return f"{d['type']}({','.join(args)})"


def spec_to_str(spec: str | dict[str, Any]) -> str:
    """Short, stable, human-readable form of a spec (labels, reports); ``parse_spec`` reads it back."""
    d = parse_spec(spec)
    name = d.pop("name")
    items = [f"{k}={_schedule_str(v) if isinstance(v, dict) and 'type' in v else v}" for k, v in sorted(d.items())]
    return name + (":" + ",".join(items) if items else "")


def create_optimizer(spec: str | dict[str, Any], params, **overrides: Any) -> torch.optim.Optimizer:
    """Build the optimizer a spec names; ``overrides`` (e.g. ``lr=...``) win over the spec and presets."""
    d = parse_spec(spec)
    name = d.pop("name")
    factory, preset = OPTIMIZERS[name]
    options = {**preset, **d, **_canonical(overrides)}
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    accepted = inspect.signature(factory).parameters
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        valid = ", ".join(k for k in accepted if k != "params")
        raise ValueError(f"optimizer {name!r} has no option {', '.join(unknown)}; its options: {valid}")
    return factory(params, **options)

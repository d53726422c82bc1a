"""The text of the spec language: ``name:key=value,...`` or ``module:Class,key=value,...`` and back.

Only syntax lives here (splitting, literals, schedule calls, the canonical text of a value); what each option's
value means is :mod:`nsf._option_types`, which names are known is :mod:`nsf.registry`.
"""
from __future__ import annotations

import ast
import re
from typing import Any

#: an import path ``module.sub:Attr.Inner``: the name of an optimizer that is not registered
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

_SCHEDULE_CALL = re.compile(r"^(constant|cyclic|anneal)\((.*)\)$", re.IGNORECASE | re.DOTALL)
_SCHEDULE_ARGS = {"constant": ("value",), "cyclic": ("low", "high", "period", "shape", "phase"),
                  "anneal": ("start", "end", "steps", "shape")}


def split_top_level(text: str) -> list[str]:
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


def split_spec(text: str) -> tuple[str, list[str]]:
    """``(name, ["key=value", ...])`` of a spec string: ``name:key=value,...``, or an import path
    ``module:Class`` followed by ``,key=value,...`` (``"torch.optim:RAdam,lr=1e-3"``). What follows the colon is
    a class when it is a dotted identifier, an option otherwise (an option always has ``=``)."""
    head, colon, rest = text.strip().partition(":")
    items = split_top_level(rest)
    if colon and items and IMPORT_PATH.match(f"{head.strip()}:{items[0]}"):
        return f"{head.strip()}:{items[0]}", items[1:]
    return head, items


def literal(text: str) -> Any:
    """A Python literal (``0.1``, ``(0.9,0.99)``, ``None``), or the text itself: a bare word such as ``cosine``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def schedule_call(text: str) -> dict[str, Any] | None:
    """``cyclic(-0.25,0.25,cycles=4)`` -> its description (a per-run cycle keeps no ``total_steps``); None if the
    text is no schedule call."""
    match = _SCHEDULE_CALL.match(text.strip())
    if not match:
        return None
    kind = match.group(1).lower()
    kwargs: dict[str, Any] = {}
    for i, arg in enumerate(split_top_level(match.group(2))):
        if "=" in arg:
            key, val = arg.split("=", 1)
            kwargs[key.strip()] = literal(val.strip())
        elif i < len(_SCHEDULE_ARGS[kind]):
            kwargs[_SCHEDULE_ARGS[kind][i]] = literal(arg)
        else:
            raise ValueError(f"too many arguments in {text!r}")
    return {"type": kind, **kwargs}


def _schedule_text(d: dict[str, Any]) -> str:
    """``cyclic(-0.25,0.25,1000,cosine)``: the call :func:`schedule_call` reads back (a zero phase is left out)."""
    names = _SCHEDULE_ARGS.get(d["type"])
    if names is None:  # a sequence has no call form: keep its description
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


def value_text(value: Any) -> str:
    """The text of a canonical option value in a spec string (what :func:`literal` and the option types read)."""
    if isinstance(value, dict) and "type" in value:
        return _schedule_text(value)
    return f"({','.join(map(str, value))})" if isinstance(value, list) else str(value)

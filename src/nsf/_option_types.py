"""How an optimizer's options are read from a spec: each option's kind and default, inferred once from the
constructor's signature (the default's type, else the annotation), so that any optimizer's options are typed
the same way and none sits in a table of names.

Kinds: a *flag* is a boolean (``true/false/1/0/yes/no`` in any case); a *number* is a finite real number (an int
stays an int, so the canonical form keeps ``1`` and ``1.0`` apart, as records always have); *numbers* is a fixed
number of them (``betas=(0.9,0.999)``; a position whose default is None may be None); a *word* is a name
(``scale=sgd``); a *schedule* is a number or a schedule (``p=cyclic(-0.25,0.25,500,cosine)``); a *literal* is
any Python literal or bare word, for options whose type the signature does not tell. An optional option also
takes ``none``.
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers
import re
import types
import typing
from typing import Any, Callable

import torch

from . import schedules
from ._numbers import real
from ._spec_language import BOOL_WORDS, literal, schedule_call, value_text

FLAG, NUMBER, NUMBERS, WORD, SCHEDULE, LITERAL = KINDS = ("flag", "number", "numbers", "word", "schedule", "literal")
REQUIRED = inspect.Parameter.empty  # the default of an option the constructor requires

_NONE = type(None)
_PLAIN = {"bool": bool, "str": str, "int": int, "float": float, "None": _NONE}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its kind (module docstring), its default in the constructor, whether None is a value."""
    kind: str
    default: Any = REQUIRED
    optional: bool = False

    def read(self, key: str, value: Any) -> Any:
        """The canonical, JSON-able value of ``value`` (text from a spec string, or a Python value)."""
        text = value.strip() if isinstance(value, str) else None
        if self.optional and (value is None or (text is not None and text.lower() == "none")):
            return None
        if self.kind == FLAG:
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in BOOL_WORDS:
                return BOOL_WORDS[text.lower()]
            allowed = "true/false/1/0/yes/no" + ("/none" if self.optional else "")
            raise ValueError(f"{key} must be a boolean ({allowed}, any case), got {value!r}")
        if self.kind == WORD:
            if text is None:
                raise ValueError(f"{key} must be a name, got {value!r}")
            return text
        if text is not None:
            call = schedule_call(text) if self.kind == SCHEDULE else None
            value = call if call is not None else literal(text)
        if self.kind == NUMBERS:
            return self._numbers(key, value)
        if self.kind == SCHEDULE:
            return _schedule(key, value)
        return number(key, value) if self.kind == NUMBER else _plain(key, value)

    def _numbers(self, key: str, value: Any) -> list:
        n = len(self.default)
        if not isinstance(value, (tuple, list)) or len(value) != n:
            what = "a pair of numbers" if n == 2 else f"{n} numbers"
            raise ValueError(f"{key} must be {what} such as {key}={value_text(list(self.default))}, got {value!r}")
        return [None if v is None and self.default[i] is None else number(f"{key}[{i}]", v)
                for i, v in enumerate(value)]


def number(key: str, value: Any) -> float | int:
    """A finite real number as the canonical form keeps it: an int stays an int, anything else is a float."""
    checked = real(key, value)
    return value if isinstance(value, int) and not isinstance(value, bool) else checked


def _plain(key: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, (numbers.Real, torch.Tensor)):
        return number(key, value)
    raise ValueError(f"{key} must be a number, a boolean, a name, None or a tuple of them, got {value!r}")


def _schedule(key: str, value: Any) -> Any:
    """A number or a canonical schedule description."""
    if callable(value) and not isinstance(value, torch.Tensor):  # a Schedule, or a plain f(step)
        if not isinstance(value, schedules.Schedule) or value.to_dict() is None:
            raise ValueError(f"{key}: a plain-callable schedule cannot be part of a spec")
        value = value.to_dict()
    if isinstance(value, dict):
        return schedules.from_dict(value).to_dict()  # a cycle stated per run stays so: create_optimizer gives T
    return number(key, value)


def _plain_types(annotation: Any) -> set:
    """The plain types an annotation allows (``bool | None`` -> {bool, NoneType}); empty when it allows others."""
    if isinstance(annotation, str):  # an annotation that could not be evaluated: read its words
        words = set(re.split(r"[\s|\[\],]+", annotation.replace("typing.", ""))) - {"", "Optional", "Union"}
        return {_PLAIN[w] for w in words} if words <= set(_PLAIN) else set()
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [_plain_types(a) for a in typing.get_args(annotation)]
        return set().union(*parts) if all(parts) else set()
    return {annotation} if annotation in _PLAIN.values() else set()


def infer(default: Any, annotation: Any = REQUIRED) -> Option:
    """An option's kind from its default (a bool is a flag, a number a number, a tuple of numbers numbers, a
    schedule a schedule, a string a word), else from its annotation; a literal when neither tells."""
    if isinstance(default, bool):
        return Option(FLAG, default)
    if isinstance(default, numbers.Real):
        return Option(NUMBER, default)
    if isinstance(default, str):
        return Option(WORD, default)
    if isinstance(default, schedules.Schedule):
        return Option(SCHEDULE, default)
    if (isinstance(default, (tuple, list)) and default
            and all(d is None or (isinstance(d, numbers.Real) and not isinstance(d, bool)) for d in default)):
        return Option(NUMBERS, tuple(default))
    allowed = _plain_types(annotation) - {_NONE}
    kind = {frozenset({bool}): FLAG, frozenset({str}): WORD}.get(frozenset(allowed))
    if kind is None and allowed and allowed <= {int, float}:
        kind = NUMBER
    return Option(kind or LITERAL, default, optional=default is None or kind is None)


def options_of(factory: Callable, declared: typing.Mapping[str, Option]) -> tuple[dict[str, Option], bool]:
    """``({option: Option}, takes **kwargs)`` of ``factory(params, **options)``: every keyword the constructor
    takes after its first (the parameters), typed by ``declared`` where given, else by :func:`infer`."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except Exception:  # noqa: BLE001 -- an annotation that does not evaluate here: its words are read instead
        signature = inspect.signature(factory)
    out, takes_kwargs, first = {}, False, True
    for p in signature.parameters.values():
        positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        if first and positional:
            first = False  # the parameters
            continue
        if p.kind == p.VAR_KEYWORD:
            takes_kwargs = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = (dataclasses.replace(declared[p.name], default=p.default) if p.name in declared
                           else infer(p.default, p.annotation))
    unknown = sorted(set(declared) - set(out))
    if unknown and not takes_kwargs:
        raise ValueError(f"{getattr(factory, '__name__', factory)!r} takes no option {', '.join(unknown)}")
    for name in unknown:
        out[name] = declared[name]
    return out, takes_kwargs

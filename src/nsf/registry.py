"""One way to build every optimizer in every script: ``create_optimizer(spec, params, **overrides)``.

A spec is a name (``"adam"``, ``"rmsprop"``), a name with options (``"nsf-fixed:p=-0.25,lr=3e-3"``,
``"nsf-cyclic-adam:p=cyclic(-0.25,0.25,500,cosine)"``), an import path with options
(``"torch.optim:RAdam,lr=1e-3"``, ``"mypkg.opt:Lion,betas=(0.9,0.99)"``) or a dict
(``{"name": "nsf-fixed", "p": -0.25}``). ``parse_spec`` turns any of them into a canonical JSON-able dict, which
is what experiment records store; it types and validates every value, so a bad spec fails before any run
starts. A p cycle may be stated per run (``p=cyclic(-0.25,0.25,cycles=4)``): ``create_optimizer(spec, params,
total_steps=T)`` gives it the run's length.

Each name is one :class:`OptimizerEntry` (factory, preset, typed options, doc); ``register_optimizer`` adds
one's own, which ``nsf bench`` and the spectral instruments then evaluate under the same protocol.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from . import schedules
from ._option_types import KINDS, NUMBERS, REQUIRED, Option, options_of
from ._spec_language import IMPORT_PATH, split_spec, value_text
from .groups import param_groups
from .optim import FSGDM, NSF
from .optim.defaults import DEFAULT_P, DEFAULT_SCALE

__all__ = ["OPTIMIZERS", "OptimizerEntry", "create_optimizer", "optimizer_entry", "parse_spec", "pin_defaults",
           "register_optimizer", "spec_to_str"]

_EMPTY = "optimizer got an empty parameter list"  # torch.optim.Optimizer's refusal of no parameters
#: option kinds that a factory's signature does not tell (NSF's p defaults to None, the library's default cycle)
_KINDS_NOT_IN_SIGNATURE = {NSF: {"p": "schedule"}}


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer the registry builds as ``factory(params, **options)``.

    ``options`` maps every option the factory takes to its :class:`~nsf._option_types.Option` (kind and
    constructor default); ``preset`` is what this name sets over the constructor's defaults (a spec's options
    and ``create_optimizer``'s overrides win over it); ``check(options)``, given every option's value (the
    constructor's defaults, the preset, the spec), raises a ValueError for values the optimizer would refuse,
    without building it (None: the values are checked when it is built).
    """
    name: str
    factory: Callable[..., torch.optim.Optimizer]
    preset: Mapping[str, Any]
    options: Mapping[str, Option]
    doc: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    takes_any_option: bool = False  # the factory takes **kwargs: option names are not checked

    @property
    def defaults(self) -> dict[str, Any]:
        """The value each option has when a spec does not set it: the constructor's default, then the preset."""
        return {**{k: o.default for k, o in self.options.items() if o.default is not REQUIRED}, **self.preset}

    @property
    def run_length(self) -> str | None:
        """``"required"`` when the factory requires ``total_steps`` (e.g. FSGDM), ``"optional"`` when it takes it:
        ``create_optimizer(..., total_steps=T)`` passes the run's length to both."""
        option = self.options.get("total_steps")
        return None if option is None else "required" if option.default is REQUIRED else "optional"


def _entry(name: str, factory: Callable, preset: Mapping[str, Any] | None = None, doc: str = "",
           types: Mapping[str, str] | None = None, check: Callable | None = None) -> OptimizerEntry:
    """``factory``'s entry: its options read once from its signature (``types``: kinds declared by name), its
    preset in canonical form (as a spec's options are)."""
    declared = {}
    for key, kind in {**_KINDS_NOT_IN_SIGNATURE.get(factory, {}), **(types or {})}.items():
        if kind not in KINDS:
            raise ValueError(f"option {key!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        declared[key] = Option(kind, optional=kind == "literal")
    options, takes_any = options_of(factory, declared)
    entry = OptimizerEntry(name, factory, {}, MappingProxyType(options),
                           doc or (inspect.getdoc(factory) or "").split("\n")[0], check, takes_any)
    preset = _typed(entry, dict(preset or {}))
    return dataclasses.replace(entry, preset=MappingProxyType(preset))


def _check_names(entry: OptimizerEntry, options: Mapping[str, Any]) -> None:
    if "name" in options:
        raise ValueError(f"optimizer {entry.name!r}: 'name' names the optimizer, it cannot be an option")
    unknown = sorted(k for k in options if k not in entry.options)
    if unknown and not entry.takes_any_option:
        raise ValueError(f"optimizer {entry.name!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(entry.options)}")


_ANY = Option("literal", optional=True)  # an option that only the factory's **kwargs takes


def _typed(entry: OptimizerEntry, options: dict[str, Any]) -> dict[str, Any]:
    """Options in canonical form, typed by ``entry``."""
    _check_names(entry, options)
    return {key: entry.options.get(key, _ANY).read(key, val) for key, val in options.items()}


def _checked(entry: OptimizerEntry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` typed, and checked by the entry's ``check`` with the preset (every value before any run)."""
    typed = _typed(entry, options)
    if entry.check is not None:
        values = {**entry.defaults, **typed}
        if entry.run_length == "required":
            values.setdefault("total_steps", 1_000_000)  # a stand-in length: given by create_optimizer
        try:
            entry.check(_per_run(entry, values, 1_000_000))
        except (TypeError, ValueError) as e:
            raise ValueError(f"optimizer {entry.name!r}: {e}") from None
    return typed


def _per_run(entry: OptimizerEntry, options: dict[str, Any], total_steps: int | None) -> dict[str, Any]:
    """Options as the factory takes them: cycles stated per run resolved, tuples (``betas``) as tuples."""
    try:
        out = {key: schedules.per_run(val, total_steps) for key, val in options.items()}
    except ValueError as e:
        raise ValueError(f"{e}: create_optimizer(spec, params, total_steps=T)") from None
    return {k: tuple(v) if isinstance(v, list) and k in entry.options and entry.options[k].kind == NUMBERS else v
            for k, v in out.items()}


def _constructor_checks(factory: Callable) -> Callable[[dict[str, Any]], None]:
    """The constructor's own value checks, without building an optimizer: torch's optimizers (and this
    library's) check every argument before they look at the parameters, so called with none they raise either
    the value's ValueError or, everything being valid, the refusal of an empty parameter list."""
    def check(options: dict[str, Any]) -> None:
        try:
            factory([], **options)
        except ValueError as e:
            if str(e) != _EMPTY:
                raise
    return check


# ----------------------------------------------------------------------------------------------------------
# The built-in names

#: the nsf-cyclic* presets: the ±1/4 cosine cycle of the v1 benchmark (issue #4's search), fixed so that those
#: names keep their meaning when the library default changes ("nsf" is the library default).
_CYCLE = {"type": "cyclic", "low": -0.25, "high": 0.25, "period": 1000, "shape": "cosine", "phase": 0.0}


def _builtin(name: str, factory: Callable, preset: Mapping[str, Any] | None = None, doc: str = "") -> OptimizerEntry:
    return _entry(name, factory, preset, doc, check=_constructor_checks(factory))


_BUILTIN = [
    _builtin("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, "torch's SGD with momentum 0.9"),
    _builtin("adam", torch.optim.Adam, {"lr": 1e-3}, "torch's Adam"),
    _builtin("adamw", torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}, "torch's AdamW"),
    # Padam (Chen et al. 2020): fixed p = 1/8 with AMSGrad; bias correction as torch's amsgrad does it.
    _builtin("padam", NSF, {"lr": 0.1, "p": 0.125, "amsgrad": True, "scale": "raw"}, "Padam: NSF with p = 1/8"),
    _builtin("nsf", NSF, {}, "NSF at the library defaults"),
    _builtin("nsf-fixed", NSF, {"lr": 1.0, "p": 0.25, "scale": "raw"}, "NSF with a fixed p, raw scale"),
    _builtin("nsf-cyclic", NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "raw"}, "NSF, p cycling ±1/4, raw scale"),
    _builtin("nsf-cyclic-sgd", NSF, {"lr": 1e-2, "p": _CYCLE, "scale": "sgd"}, "NSF, p cycling ±1/4, SGD scale"),
    _builtin("nsf-cyclic-adam", NSF, {"lr": 1e-3, "p": _CYCLE, "scale": "adam"}, "NSF, p cycling ±1/4, Adam scale"),
    # FSGDM (arXiv 2411.19671), the frequency-domain peer; needs total_steps=T. lr: SGD-M's, as the paper does.
    _builtin("fsgdm", FSGDM, {"lr": 0.05}, "FSGDM: SGD whose momentum rises in stages (needs total_steps)"),
]
#: every other torch.optim optimizer with the ordinary step(), at torch's defaults, by its lowercase name. Not
#: here: LBFGS (its step needs a closure), SparseAdam (refuses dense gradients), Muon (refuses every parameter
#: that is not a matrix, so it cannot take a whole model; "torch.optim:Muon" builds it for matrices).
_TORCH_DEFAULTS = ["RMSprop", "RAdam", "NAdam", "Adamax", "Adagrad", "Adadelta", "ASGD", "Rprop", "Adafactor"]
_BUILTIN += [_builtin(cls.lower(), getattr(torch.optim, cls), doc=f"torch's {cls} at torch's defaults")
             for cls in _TORCH_DEFAULTS if hasattr(torch.optim, cls)]  # Adafactor: torch >= 2.5

_ENTRIES: dict[str, OptimizerEntry] = {e.name: e for e in _BUILTIN}
_BUILTIN_NAMES = frozenset(_ENTRIES)
_BY_IMPORT_PATH: dict[str, OptimizerEntry] = {}

#: name -> :class:`OptimizerEntry`, read-only (add names with :func:`register_optimizer`)
OPTIMIZERS: Mapping[str, OptimizerEntry] = MappingProxyType(_ENTRIES)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def register_optimizer(name: str, factory: Callable[..., torch.optim.Optimizer], *,
                       preset: Mapping[str, Any] | None = None, doc: str = "",
                       types: Mapping[str, str] | None = None,
                       check: Callable[[dict[str, Any]], None] | None = None,
                       replace: bool = False) -> OptimizerEntry:
    """Make ``name`` a spec name for ``factory(params, **options)``: ``create_optimizer(name, ...)``, the
    bench (``Suite`` arms, ``Planner``) and the spectral instruments then take it like any built-in name.

    ``factory`` is an optimizer class or any callable taking the parameters first; its options are typed from
    its signature (a default's type, else the annotation); ``types`` declares the kind of others: "flag",
    "number", "numbers", "word", "schedule" or "literal", e.g. ``{"p": "schedule"}``. ``preset`` overrides its
    defaults under this name. ``check(options)``, given every option's value, may refuse bad values when a spec
    is parsed (without it, the constructor refuses them when it builds). Built-in names cannot be replaced; a
    name can be registered again with the same factory and preset (e.g. a module imported twice), or with
    others if ``replace``. Returns the :class:`OptimizerEntry`.

    A name lives in the process that registered it, and in the worker processes of ``--workers N`` / Ray only
    if they import the registering module: register at the top level of an importable module (a script's top
    level is re-imported by spawn and forkserver workers), or use the import path form
    ``"mypkg.opt:Lion,lr=1e-4"``, which works everywhere, the ``nsf`` command included. A run id names the
    spec, not the code: give a changed optimizer a new name, or records of the old one are reused.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if not isinstance(key, str) or not _NAME.match(key):
        raise ValueError(f"an optimizer name is letters, digits, '-' and '_' (read in lowercase), got {name!r}")
    if key in _BUILTIN_NAMES:
        raise ValueError(f"{key!r} is a built-in optimizer name and cannot be replaced; choose another name")
    old = _ENTRIES.get(key)
    entry = _entry(key, factory, preset, doc, types, check)
    if old is not None and not replace and (old.factory, dict(old.preset)) != (factory, dict(entry.preset)):
        raise ValueError(f"optimizer {key!r} is already registered with {old.factory!r}; pass replace=True")
    _ENTRIES[key] = entry
    return entry


def _from_import_path(path: str) -> OptimizerEntry:
    """The entry of ``module:Attr`` (imported once; its options typed from its signature, no preset)."""
    if path in _BY_IMPORT_PATH:
        return _BY_IMPORT_PATH[path]
    module_name, _, attr = path.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"optimizer {path!r}: cannot import {module_name!r} ({e}); a spec is "
                         "'name:key=value,...' or 'module:Class,key=value,...'") from None
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"optimizer {path!r}: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"optimizer {path!r}: {attr!r} is not a class or function that builds an optimizer")
    _BY_IMPORT_PATH[path] = entry = _entry(path, factory, doc=f"{attr} from {module_name}")
    return entry


def optimizer_entry(name: str) -> OptimizerEntry:
    """The entry of a registered name (any case) or an import path ``module:Class``; a ValueError otherwise."""
    if IMPORT_PATH.match(name.strip()):
        return _from_import_path(name.strip())
    entry = _ENTRIES.get(name.strip().lower())
    if entry is None:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(_ENTRIES)}, or an import path "
                         "such as 'torch.optim:RAdam'")
    return entry


def parse_spec(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Canonical, JSON-able ``{"name": ..., option: value, ...}`` for any spec form (presets not filled in).

    Every value is typed and validated here (a ValueError names the option), so a bad spec fails before any
    run starts. Booleans are ``true/false/1/0/yes/no`` in any case; tuples such as ``betas`` are
    ``(0.9,0.999)``; a cycle stated per run (``p=cyclic(-0.25,0.25,cycles=4)``) is resolved by
    ``create_optimizer(..., total_steps=T)``.
    """
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"a dict spec needs a 'name' key naming the optimizer; got {spec!r}")
    elif isinstance(spec, str):
        name, items = split_spec(spec)
        options = {}
        for item in items:
            if "=" not in item:
                raise ValueError(f"option {item!r} in spec {spec!r} is not key=value")
            key, val = item.split("=", 1)
            options[key.strip()] = val.strip()
    else:
        raise ValueError(f"an optimizer spec is a string or a dict, got {type(spec).__name__}")
    entry = optimizer_entry(name)
    return {"name": entry.name, **_checked(entry, options)}


def pin_defaults(spec: str | dict[str, Any]) -> dict[str, Any]:
    """``parse_spec`` with the NSF options that follow the library defaults (``p``, ``scale``) written out.

    Experiment records store this form, so a run id names what ran: when the library default changes,
    ``"nsf"`` gets new run ids instead of silently reusing records of the old default."""
    d = parse_spec(spec)
    entry = optimizer_entry(d["name"])
    if entry.factory is NSF:
        for key, default in (("p", DEFAULT_P.to_dict()), ("scale", DEFAULT_SCALE)):
            if key not in d and key not in entry.preset:
                d[key] = default  # already canonical: what parse_spec makes of it
    return d


def spec_to_str(spec: str | dict[str, Any]) -> str:
    """Short, stable, human-readable form of a spec (labels, reports); ``parse_spec`` reads it back."""
    d = parse_spec(spec)
    name = d.pop("name")
    items = [f"{k}={value_text(v)}" for k, v in sorted(d.items())]
    separator = "," if IMPORT_PATH.match(name) else ":"
    return name + (separator + ",".join(items) if items else "")


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
    entry = optimizer_entry(d.pop("name"))
    _check_names(entry, overrides)  # Python values: the constructor checks them
    options = {**entry.preset, **d, **overrides}
    if isinstance(params, torch.nn.Module):
        wd, lr = ({**entry.defaults, **options}.get(k) for k in ("weight_decay", "lr"))
        params = param_groups(params, weight_decay=wd, lr=lr, lr_scale=lr_scale,
                              decay_norm_and_bias=decay_norm_and_bias)
    elif lr_scale is not None or decay_norm_and_bias:
        raise ValueError("lr_scale and decay_norm_and_bias need the model: create_optimizer(spec, model, ...)")
    options = _per_run(entry, options, total_steps)
    if entry.run_length and "total_steps" not in options:
        if total_steps is not None:
            options["total_steps"] = total_steps
        elif entry.run_length == "required":  # e.g. FSGDM: its momentum schedule is stated over the run
            raise ValueError("this optimizer needs the run's length: create_optimizer(spec, params, total_steps=T)")
    return entry.factory(params, **options)

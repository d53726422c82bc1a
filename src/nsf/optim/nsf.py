"""NSF: Adam with a signed, scheduled second-moment exponent p: the class, and ``nsf``, the functional step
that chooses among the three paths — ``_single_tensor_nsf`` (``_single_tensor.py``), ``_multi_tensor_nsf``
(``_foreach.py``) and ``_fused_nsf`` (``_fused.py``). Each takes a group's ``StepOptions`` and is tested equal
to ``reference_step`` (``reference.py``, the method written out) in tests/test_optim_reference.py and
tests/test_optim_fast.py.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT, _use_grad_for_differentiable

from .. import schedules as _schedules
from . import _fused, _fused_kernels
from ._foreach import _is_dtensor, _multi_tensor_nsf
from ._fused import _fused_nsf
from ._options import SCALES, check_loadable, checked_options, p_schedule, state_dtype_for
from ._single_tensor import _single_tensor_nsf
from ._step_options import StepOptions, initial_state
from .defaults import DEFAULT_LR, DEFAULT_SCALE  # defined once, imported everywhere

__all__ = ["NSF", "nsf", "SCALES"]

_CALLABLE = "callable"  # group["p_schedule"] marker: the schedule is a plain callable held by the optimizer
#: group keys only NSF writes; a state dict from torch's Adam or AdamW has none, and keeps this optimizer's
_OWN_KEYS = ("p", "p_schedule", "step", "scale", "state_dtype", "total_steps")


class NSF(Optimizer):
    r"""Natural Spectral Fusion: Adam whose second moment is raised to a signed, scheduled power ``p``.

    Per parameter tensor, with bias-corrected moments :math:`\hat m, \hat v`:

    * ``p > 0``: :math:`d = \hat m / (\hat v^p + \epsilon)` — ``p = 1/2`` is exactly ``torch.optim.Adam``;
    * ``p = 0``: :math:`d = \hat m` — SGD with EMA momentum. At lr ``η`` this equals
      ``torch.optim.SGD(momentum=β1)`` at lr ``η·(1−β1)`` after the first ~``1/(1−β1)`` steps (torch's buffer
      sums gradients, ours averages them, with bias correction);
    * ``p < 0``: :math:`d = \hat m \cdot \hat v^{|p|}` — amplifies coordinates with much gradient energy.
      :math:`\hat v^p` is never formed, so zero gradients stay a no-op.

    ``scale`` sets the step length: ``"raw"`` (the paper's form, :math:`\theta \mathrel{-}= \eta d`; the step
    scales like :math:`|g|^{1-2p}`, so cycling p also cycles the effective learning rate), or the grafted modes
    ``"sgd"`` / ``"adam"`` which keep, per tensor, the length of the ``p = 0`` / Adam step and let ``p`` choose
    only the direction. The defaults (``scale="adam"``, ``lr=1e-3``) make ``NSF(params)`` a drop-in for
    ``torch.optim.Adam(params)``: the same step length, with p turning its direction.

    Give ``total_steps=T``, the run's number of optimizer steps, to get the searched default (p cycles twice per
    run); without it the default p period is 1000 steps, whatever the run's length.

    Numbers are taken as torch's optimizers take them (Python, numpy or one-element tensor scalars); flags must
    be booleans; a bad option raises a ValueError naming it, worded as torch's Adam words it where the two share
    the option (see docs/optimizer.md for the full table).

    ``load_state_dict`` of a state dict without NSF's own keys (torch's Adam or AdamW wrote it) loads its
    moments, step counts and shared options, keeps this optimizer's ``p`` (schedule and clock), ``scale``,
    ``state_dtype`` and ``total_steps``, and warns once that it continues as NSF from those moments, not as Adam.

    Args:
        params: iterable of parameters or param groups (each group may set any option below, ``p`` included).
        lr: learning rate: a number, or a one-element tensor of any shape (kept, so it can be driven in place;
            squeezed at each step as torch's Adam does). With the default ``scale="adam"`` it is Adam's lr.
        betas: EMA coefficients of the first and second moments (numbers; tensors are refused: drive them with
            ``nsf.HyperparamScheduler``).
        eps: added to :math:`\hat v^p` for ``p > 0`` (and to :math:`\sqrt{\hat v}` in the ``"adam"`` graft).
        weight_decay: L2 coefficient λ; coupled (``g += λθ``) unless ``decoupled_weight_decay``.
        p: the exponent: a float, a 0-dim tensor, an ``nsf.schedules`` schedule, its dict, or a plain
            ``f(step) -> float`` (works, but is not saved in ``state_dict``). ``group["p"]`` is a 0-dim float64
            tensor holding the value used by the latest step, updated in place, so ``torch.compile`` does not
            recompile as p moves. A fixed p leaves ``group["p"]`` alone, so it can be driven from outside
            (``nsf.HyperparamScheduler`` or ``group["p"].fill_``). ``None`` (default): a cosine cycle between 0
            (momentum's direction) and ½ (Adam's), stepped on multiples of ⅛ (chosen by the evidence protocol's
            search, ``nsf.optim.defaults``): two cycles per run of ``total_steps``, or a 1000-step period
            without it. A cycle stated per run (``Cyclic(0, 0.5, cycles=2)``) takes ``total_steps`` too.
        scale: ``"raw"``, ``"sgd"`` or ``"adam"`` (default). Complex parameters are, like in Adam, their real
            and imaginary parts as independent coordinates, and one tensor for the grafted norms.
        amsgrad: keep the running max of v and use it for :math:`\hat v` (with fixed ``p`` this is Padam).
        total_steps: the run's number of optimizer steps T, the length of every p cycle stated per run (the
            default's and the user's); an explicit period ignores it. Saved in ``state_dict`` (per group, as
            ``group["total_steps"]``); it changes nothing but p's schedule.
        decoupled_weight_decay: ``θ ← θ(1 − ηλ)`` as in AdamW.
        foreach: use the ``torch._foreach_*`` path (default: yes, unless ``differentiable``; under
            ``torch.compile`` the single-tensor path is traced whatever this says).
        maximize: maximize the objective.
        capturable: keep step counts on the parameters' device: then no step reads a device value on the
            host (every scale and p; ``p`` itself and a float lr are host values), so it can be captured in a
            CUDA graph. On a device the grafted scales never read norms on the host, capturable or not.
        differentiable: allow autograd through the step (single-tensor path).
        fused: the fused step: one pass over θ, g, m, v per tensor (two for the grafted scales). Contiguous
            float32 CPU parameters (without amsgrad or coupled weight decay) take native C kernels, built once per
            machine with the system C compiler; everything else ``torch.compile`` of the foreach arithmetic,
            where every moving value (p, lr, betas, weight decay, bias corrections) is a tensor input, so
            schedules never recompile. p = 0 and |p| a multiple of ⅛ up to 1 get exact square-root kernels.
            ``None`` (default) chooses it, when ``foreach`` is not given, for parameters the native kernels take
            (any size) and for a device/dtype group of at least ``AUTO_FUSED_MIN_NUMEL`` (≈ 1 M) elements; else
            foreach.
            ``fused=True`` on a device or dtype it cannot run raises ``RuntimeError``; where compiling fails,
            that optimizer and configuration warn once and use foreach. Complex parameters,
            ``differentiable`` and FSDP2 (DTensor) parameters in the automatic choice take the other paths.
            See docs/performance.md.
        state_dtype: dtype of m and v for real floating parameters (default: the parameter's). With bf16 or
            fp16 parameters, ``torch.float32`` keeps the moments exact to float32; the power is always taken
            in float32 or wider.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = DEFAULT_LR,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        p: Any = None,
        scale: str = DEFAULT_SCALE,
        amsgrad: bool = False,
        *,
        total_steps: int | None = None,
        decoupled_weight_decay: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        defaults = checked_options(dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, p=p, scale=scale, amsgrad=amsgrad,
            total_steps=total_steps, decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
            state_dtype=state_dtype,
        ))
        self._p_callables: dict[int, _schedules.Schedule] = {}  # per group index: unsaveable schedules
        self._warned_unsaved = False
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # checked before the group is in (a bad group leaves no trace); the group's own numbers normalised
        checked = checked_options({**self.defaults, **param_group})
        param_group.update({k: checked[k] for k in param_group if k != "params"})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        schedule = p_schedule(group["p"], group["total_steps"])  # None: the default; per-run cycles take T
        if isinstance(schedule, _schedules.Constant):
            group["p_schedule"] = None
        elif schedule.to_dict() is not None:
            group["p_schedule"] = schedule.to_dict()
        else:  # a plain callable: kept on the optimizer, marked in the (saveable) group
            group["p_schedule"] = _CALLABLE
            self._p_callables[len(self.param_groups) - 1] = schedule
        group["p"] = torch.tensor(schedule(0), dtype=torch.float64)
        group.setdefault("step", 0)  # steps this group has taken: the schedules' clock

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_p_callables": self._p_callables}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_p_callables", {})
        self.__dict__.setdefault("_warned_unsaved", False)
        self.defaults.setdefault("total_steps", None)  # an optimizer pickled before total_steps existed
        for group in self.param_groups:
            group.setdefault("scale", "raw")
            group.setdefault("amsgrad", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("state_dtype", None)
            group.setdefault("total_steps", None)  # older checkpoints: their saved p_schedule is what ran
            group.setdefault("p_schedule", None)
            group.setdefault("p", 0.5)
            if not isinstance(group["p"], Tensor):
                group["p"] = torch.tensor(float(group["p"]), dtype=torch.float64)
            if "step" not in group:  # older checkpoints: recover the clock from the per-parameter counts
                steps = [float(self.state[q]["step"]) for q in group["params"] if "step" in self.state.get(q, {})]
                group["step"] = int(max(steps, default=0))
            for q in group["params"]:  # plain-number step counts (older torch) become the tensors the paths use
                q_state = self.state.get(q, {})
                if "step" in q_state and not isinstance(q_state["step"], Tensor):
                    q_state["step"] = torch.tensor(float(q_state["step"]), dtype=torch.float32,
                                                   device=q.device if group["capturable"] else "cpu")

    def state_dict(self) -> dict[str, Any]:
        if not self._warned_unsaved and any(g["p_schedule"] == _CALLABLE for g in self.param_groups):
            warnings.warn(
                "NSF: a p schedule given as a plain callable is not saved in the state dict; pass it again when "
                "you rebuild the optimizer (or use an nsf.schedules schedule, which is saved)", stacklevel=2)
            self._warned_unsaved = True
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, refusing up front a state dict from another optimizer, or one whose p followed a plain
        callable this optimizer was not given (p would silently stop moving). One from torch's Adam or AdamW
        (no ``p``) keeps this optimizer's own options and warns once: see ``_adopting_own_options``."""
        check_loadable(state_dict)
        state_dict = self._adopting_own_options(state_dict)
        for index, saved in enumerate(state_dict["param_groups"]):
            if saved.get("p_schedule") == _CALLABLE and index not in self._p_callables:
                raise ValueError(
                    f"NSF.load_state_dict: param group {index}'s p followed a plain callable, which is not saved; "
                    "build the optimizer with the same p=callable before loading (or set that group's "
                    "'p_schedule' to None in the state dict to hold p at its saved value)")
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; moments kept in another dtype (state_dtype) are
        # restored from the saved tensors, so a bf16 model's float32 moments come back without a bf16 round trip
        saved_state = state_dict.get("state", {})
        for group, saved in zip(self.param_groups, state_dict.get("param_groups", [])):
            if group.get("state_dtype") is None:
                continue
            for param, pid in zip(group["params"], saved["params"]):
                saved_param_state = saved_state.get(pid, {})
                for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    value = saved_param_state.get(key)
                    if isinstance(value, Tensor) and param.is_floating_point():
                        self.state[param][key] = value.to(
                            device=param.device, dtype=state_dtype_for(param, group["state_dtype"]), copy=True)

    def _adopting_own_options(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` with the keys only NSF writes (``_OWN_KEYS``) taken from this optimizer's groups where
        a saved group has no ``p``: torch's Adam or AdamW wrote it. Its moments, step counts and shared options
        load; without this, the old-checkpoint defaults would silently turn NSF into Adam (p = ½, raw)."""
        saved = state_dict["param_groups"]
        if all("p" in g for g in saved) or len(saved) != len(self.param_groups):
            return state_dict  # NSF's own, or a group count torch refuses
        groups = [g if "p" in g else {**{k: mine[k] for k in _OWN_KEYS}, **g}
                  for g, mine in zip(saved, self.param_groups)]
        mine = self.param_groups[0]
        schedule = mine["p_schedule"]
        p = (f"p = {float(mine['p']):g}" if schedule is None else "p following its callable" if schedule == _CALLABLE
             else f"p following {_schedules.from_dict(schedule)!r}")
        warnings.warn(
            "NSF.load_state_dict: the state dict has no p (torch's Adam or AdamW wrote it): its moments, step "
            "counts, lr, betas, eps and weight_decay are loaded; p, scale and total_steps stay this optimizer's, "
            f"so it continues as NSF from those moments (scale={mine['scale']!r}, {p}, p's clock at step "
            f"{mine['step']}), not as Adam. To continue as Adam, build NSF(params, p=0.5, scale='raw') before "
            "loading.", stacklevel=3)
        return {**state_dict, "param_groups": groups}

    def hyperparam_scheduled(self, key: str) -> None:
        """Called by ``nsf.HyperparamScheduler`` when it takes over ``key``: for ``"p"``, every group's own p
        schedule stops (the scheduler now writes ``group["p"]``)."""
        if key == "p":
            for group in self.param_groups:
                group["p_schedule"] = None

    def _schedule_from(self, index: int, description: dict) -> _schedules.Schedule:
        """``from_dict``, remembered per group while the description stays the same (it is rebuilt each step
        otherwise, which is most of the step's Python overhead on small models)."""
        cache = self.__dict__.setdefault("_schedule_cache", {})
        hit = cache.get(index)
        if hit is not None and hit[0] == description:
            return hit[1]
        schedule = _schedules.from_dict(description)
        cache[index] = (copy.deepcopy(description), schedule)
        return schedule

    def _schedule(self, index: int, group: dict[str, Any]) -> Callable[[int], float] | None:
        """The group's p schedule, or None when p is held (fixed, or driven from outside)."""
        if group["p_schedule"] == _CALLABLE:
            return self._p_callables.get(index)
        if group["p_schedule"] is not None:
            return self._schedule_from(index, group["p_schedule"])
        return None

    @torch.compiler.disable
    def _advance_p(self, index: int, group: dict[str, Any]) -> None:
        """Set ``group["p"]`` to the schedule's value for this step (kept out of compiled graphs: the
        step counter is a Python int and must not become a guard)."""
        schedule = self._schedule(index, group)
        if schedule is not None:
            group["p"].fill_(schedule(group["step"]))
        group["step"] += 1

    @torch.no_grad()
    def warm_up(self, steps: int | None = None) -> int:
        """Compile now every fused kernel that the p schedules will need, so that no compile lands mid-training
        (a cycled p meets a new exponent kind every few hundred steps; each compile takes seconds on a CPU).

        For each group that takes the fused path, the p values its schedule takes over ``steps`` steps from
        its current clock (default: the group's ``total_steps``, else 10 000) are stepped, one per kernel kind,
        on scratch tensors shaped like the group's parameters: nothing of the optimizer or the model is read
        or changed, but the scratch (parameters, gradients and moments) takes about four times the
        parameters' memory while it runs. The kernels are keyed on the parameters that have a gradient (all
        of them when none has one yet): call it where the training loop will step the same set. Returns the
        number of kernels compiled. Without it, each kernel compiles at the first step that needs it. Groups that
        take the native CPU kernels need no scratch: the library, which serves every p, is built here (once per
        machine) and nothing is stepped."""
        compiled = len(_fused._kernels)
        for index, group in enumerate(self.param_groups):
            params = [q for q in group["params"] if q.grad is not None] or [
                q for q in group["params"] if q.requires_grad]
            options = StepOptions.from_group(group)
            if not params or not _use_fused(params, options, any(q.is_complex() for q in params)):
                continue
            if _fused.native_takes(params, options):
                continue  # built by native_takes; one library serves every p, nothing to compile
            schedule = self._schedule(index, group)
            horizon = steps if steps is not None else (group["total_steps"] or 10_000)
            values = [float(group["p"])] if schedule is None else [
                schedule(group["step"] + t) for t in range(max(int(horizon), 1))]
            for p in {_fused_kernels.exponent_kind(v): v for v in values}.values():
                state = [initial_state(q, options) for q in params]
                scratch = [torch.zeros_like(q).requires_grad_(q.requires_grad) for q in params]
                nsf(scratch, [torch.zeros_like(q) for q in params], *([s[k] for s in state] for k in (
                    "exp_avg", "exp_avg_sq")), [s["max_exp_avg_sq"] for s in state] if options.amsgrad else [],
                    [s["step"] for s in state], dataclasses.replace(options, p=p))
        return len(_fused._kernels) - compiled

    def _init_group(self, group, options, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps) -> bool:
        has_complex = False
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError("NSF does not support sparse gradients (param.grad is sparse)")
            has_complex |= torch.is_complex(param)
            params.append(param)
            grads.append(param.grad)
            state = self.state[param]
            if len(state) == 0:
                state.update(initial_state(param, options))
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if options.amsgrad:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            state_steps.append(state["step"])
        return has_complex

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:  # a hand-set scale is not silently taken as another; nothing moves
            if group["scale"] not in SCALES:
                raise ValueError(f"Invalid scale: {group['scale']!r}; expected one of {', '.join(SCALES)}")
        for index, group in enumerate(self.param_groups):
            options = StepOptions.from_group(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            max_exp_avg_sqs: list[Tensor] = []
            state_steps: list[Tensor] = []
            has_complex = self._init_group(
                group, options, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
            if not params:
                continue  # a group with no gradients takes no step and its p clock stands still
            self._advance_p(index, group)  # fills group["p"], the tensor options.p holds, in place
            nsf(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, options, has_complex=has_complex)
        return loss


def _use_fused(params: list[Tensor], options: StepOptions, has_complex: bool) -> bool:
    """Whether this call takes the compiled path. ``fused=None`` chooses it where it was measured to win (see
    ``docs/performance.md``); cases it does not cover (complex parameters, differentiable, inside an outer
    ``torch.compile``) quietly take the other paths. ``fused=True`` on a device or dtype the kernels cannot
    run raises before anything is compiled or written."""
    if options.fused is False or options.differentiable or has_complex or torch.compiler.is_compiling():
        return False
    if options.fused is None:
        return options.foreach is None and _auto_fused(params, options)
    _fused.check_support(params)
    return True


#: ``fused=None`` takes the compiled step for a call with at least this many elements (≈ 1 M): there it was
#: measured 2–4× faster than the foreach path on a CPU, and the one-off compile (seconds) is soon repaid; below
#: it, guard and launch overheads eat the gain. Float32 CPU parameters that the native kernels take (built once
#: per machine, no per-size compile) take the fused step at any size. See docs/performance.md.
AUTO_FUSED_MIN_NUMEL = 1 << 20


def _auto_fused(params: list[Tensor], options: StepOptions) -> bool:
    if params[0].device.type not in ("cpu", "cuda") or any(_is_dtensor(q) for q in params):
        return False
    return sum(q.numel() for q in params) >= AUTO_FUSED_MIN_NUMEL or _fused.native_takes(params, options)


def nsf(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
        max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], options: StepOptions, *,
        has_complex: bool = False) -> None:
    """Functional NSF step over one group's tensors (see ``NSF``): the step ``options`` choose the path."""
    fast = bool(params) and _use_fused(params, options, has_complex)
    foreach = options.foreach
    if foreach is None:  # unlike torch's Adam, also on the CPU: the foreach path does fewer passes there
        foreach = not options.differentiable
    compiling = torch.compiler.is_compiling()
    if (fast or foreach) and options.scale == "adam" and not compiling and float(options.p) == 0.5:
        # m̂/(√v̂ + ε) grafted onto its own length is Adam's step itself: the fast paths take the raw kernel (one
        # pass, no norms); the single-tensor path keeps the graft, so the tests prove the two equal
        options = dataclasses.replace(options, scale="raw")
    if fast:
        path = _fused_nsf
    elif foreach and not compiling:
        path = _multi_tensor_nsf
    else:  # under torch.compile the single-tensor path is traced with p as a tensor input
        path = _single_tensor_nsf
    path(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, options, has_complex=has_complex)

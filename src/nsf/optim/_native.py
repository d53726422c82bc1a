"""The fused step's native CPU kernels (``_native.c``): built once per machine with the system C compiler, cached,
and called through ``ctypes`` for contiguous float32 CPU tensors. Their loops do what inductor's cannot: the
grafted first pass writes the new moments while it reduces the norms (9 words per element for the exact graft,
against 10 for the compiled kernels and 7 for Adam). Where no compiler works, ``library()`` is None and the fused
step compiles its kernels with ``torch.compile`` as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from ._fused_kernels import exponent_kind
from ._step_options import StepOptions

SOURCE = Path(__file__).with_name("_native.c")
#: compiler flags: exact IEEE arithmetic (no fast-math; no implicit contraction into FMAs: the one FMA, lerp's, is
#: explicit, as in ATen) with errno-free sqrtf, so that the loops vectorise
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-shared", "-fPIC"]
#: the C compilers looked for (``$CC`` first)
COMPILERS = ("cc", "gcc", "clang")
#: the variants tried in order: this CPU's instruction set with OpenMP threads and glibc's vector math, then
#: without vector math, then serial, then portable (a compiler without -march=native)
VARIANTS = (["-march=native", "-fopenmp", "-DNSF_VECTOR_MATH", "-lmvec"], ["-march=native", "-fopenmp"],
            ["-march=native", "-fopenmp-simd"], ["-fopenmp-simd"])

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_failure = ""  # why the build failed, until it has been said once


def cache_dir() -> Path:
    """Where built libraries are kept: ``$NSF_CACHE_DIR``, else ``$XDG_CACHE_HOME/nsf`` (``~/.cache/nsf``)."""
    if os.environ.get("NSF_CACHE_DIR"):
        return Path(os.environ["NSF_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nsf"


def _machine() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and feature flags (so a cache shared between
    different machines never loads a library built for another instruction set)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def _build(compiler: str, extra: list[str]) -> Path:
    """The library built for this source, these flags, compiler and CPU: from the cache, else compiled into it (or,
    where the cache cannot be written, into a private temporary directory, for this process only). A variant that
    failed to compile leaves a ``.failed`` note with the compiler's last line, so that later processes do not
    try it again (delete the cache directory to retry)."""
    source = SOURCE.read_text()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([source, *FLAGS, *extra, version, _machine()]).encode()).hexdigest()[:20]
    target = cache_dir() / f"nsf_native_{key}.so"
    failed = target.with_suffix(".failed")
    if target.exists():
        return target
    if failed.exists():
        raise OSError(failed.read_text())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.mkdtemp(dir=target.parent)  # built aside, then renamed: atomic for concurrent builds
    except OSError:
        target = Path(tempfile.mkdtemp(prefix="nsf-native-")) / target.name
        failed = target.with_suffix(".failed")
        scratch = tempfile.mkdtemp(dir=target.parent)
    try:
        out = Path(scratch) / target.name
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(out), "-lm", *extra], capture_output=True,
                              text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            failed.write_text(lines[-1] if lines else f"{compiler} exited with status {done.returncode}")
            raise OSError(failed.read_text())
        os.replace(out, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def library(*, warn: bool = True) -> ctypes.CDLL | None:
    """The loaded kernels, built at the first call (a few seconds, once per machine), or None where no variant
    builds. Why they did not build is said once, by the first call with ``warn`` (the automatic path choice asks
    without: where the kernels are missing, small models quietly keep the foreach path)."""
    global _library, _tried, _failure
    with _lock:
        if not _tried:
            _tried = True
            compiler = os.environ.get("CC") or next(filter(None, map(shutil.which, COMPILERS)), None)
            errors = []
            for extra in VARIANTS if compiler else ():
                try:
                    _library = _declare(ctypes.CDLL(str(_build(compiler, extra))))
                    break
                except (OSError, subprocess.CalledProcessError) as e:
                    message = (getattr(e, "stderr", None) or str(e)).strip()
                    errors.append(message.splitlines()[-1] if message else type(e).__name__)
            if _library is None:
                reasons = "; ".join(dict.fromkeys(errors)) or "no C compiler"
                _failure = f"NSF: the native CPU kernels could not be built ({reasons}); the fused step " \
                           "compiles its kernels with torch.compile"
        if warn and _failure:
            warnings.warn(_failure, RuntimeWarning, stacklevel=3)
            _failure = ""
        return _library


class Step(ctypes.Structure):
    """The step's options (``_native.c``'s ``Step``)."""

    _fields_ = [*((name, ctypes.c_double) for name in ("lr", "beta1", "beta2", "eps", "decay", "low", "a")),
                *((name, ctypes.c_int) for name in ("eighths", "negative", "scale", "maximize", "threads"))]


class TensorRef(ctypes.Structure):
    """One tensor and its step count (``_native.c``'s ``TensorRef``)."""

    _fields_ = [("th", ctypes.c_void_p), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p), ("g", ctypes.c_void_p),
                ("step", ctypes.c_void_p), ("n", ctypes.c_int64)]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.nsf_step.argtypes = [ctypes.POINTER(Step), ctypes.POINTER(TensorRef), ctypes.c_int64]
    lib.nsf_step.restype = ctypes.c_int64
    return lib


def covers(options: StepOptions) -> bool:
    """The options the native kernels implement: all but amsgrad and coupled weight decay."""
    return not options.amsgrad and (options.weight_decay == 0 or options.decoupled_weight_decay)


def supports(tensors: Iterable[Tensor], steps: Iterable[Tensor] = ()) -> bool:
    """Whether the native kernels can take these tensors: all float32, contiguous, on the CPU (and the step
    counts float32 scalars there)."""
    return all(t.dtype == torch.float32 and t.is_cpu and t.is_contiguous() for t in tensors) and all(
        t.dtype == torch.float32 and t.is_cpu and t.numel() == 1 for t in steps)


def step(lib: ctypes.CDLL, params, grads, exp_avgs, exp_avg_sqs, steps, options: StepOptions, p: float,
         low: float) -> int:
    """One NSF step in place, step counts included (``low``: the float32 sums' underflow bound, below which
    they are redone in float64). Returns the number of tensors whose sums were redone."""
    kind = exponent_kind(p)
    eighths = 0 if kind == "zero" else (-1 if kind.endswith("pow") else round(abs(p) * 8))
    beta1, beta2 = options.betas
    lr = float(options.lr)  # a CPU tensor lr is read on the host: it synchronises nothing
    decay = 1 - lr * options.weight_decay if options.decoupled_weight_decay else 1.0
    o = Step(lr, beta1, beta2, options.eps, decay, low, abs(p), eighths, int(p < 0),
             ("raw", "sgd", "adam").index(options.scale), int(options.maximize), torch.get_num_threads())
    refs = (TensorRef * len(params))(*(
        TensorRef(th.data_ptr(), m.data_ptr(), v.data_ptr(), g.data_ptr(), t.data_ptr(), th.numel())
        for th, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps)))
    redone = lib.nsf_step(ctypes.byref(o), refs, len(params))
    if redone < 0:
        raise MemoryError("NSF: the native step could not allocate its scratch memory")
    # written through pointers: bump the version counters as in-place torch ops do, so that autograd still
    # notices a parameter changed between a forward pass and its backward
    increment_version([*params, *exp_avgs, *exp_avg_sqs, *steps])
    return redone

"""Fixtures shared by the optimizer tests."""

from __future__ import annotations

import shutil

import pytest

from nsf.optim import _fused, _native


@pytest.fixture
def uncompiled_fused_kernels(monkeypatch):
    """The fused path with its kernels' Python run as it is, not compiled: the same arithmetic, fast to test,
    and every host read inside a kernel visible. Dynamo's tracing of the kernels is tested with
    ``dynamo_fused_kernels``, inductor's code by the test_inductor_* tests, the native CPU kernels with
    ``native_fused_kernels``."""
    monkeypatch.setattr(_fused, "BACKEND", None)
    monkeypatch.setattr(_fused, "NATIVE", False)
    monkeypatch.setattr(_fused, "_kernels", {})


@pytest.fixture
def dynamo_fused_kernels(monkeypatch):
    """The fused path with its kernels traced by dynamo (``fullgraph=True``) and run by the "eager" backend:
    no C++ compile."""
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "NATIVE", False)
    monkeypatch.setattr(_fused, "_kernels", {})


def require_native_kernels():
    """The native CPU kernels, built; a skip only where the machine has no C compiler at all (a build that fails
    with a compiler present fails the test)."""
    if not any(shutil.which(c) for c in _native.COMPILERS):
        pytest.skip("no C compiler")
    assert _native.library() is not None, "the native kernels failed to build"


@pytest.fixture
def native_fused_kernels(monkeypatch):
    """The fused path with the native CPU kernels for what they cover (float32, contiguous); what they do not
    cover runs the compiled kernels' Python uncompiled."""
    require_native_kernels()
    monkeypatch.setattr(_fused, "BACKEND", None)
    monkeypatch.setattr(_fused, "NATIVE", True)
    monkeypatch.setattr(_fused, "_kernels", {})


@pytest.fixture(params=["kernels", "native"])
def each_fused_kernel(request):
    """Each fused implementation in turn: the compiled kernels' arithmetic (run uncompiled) and the native CPU
    kernels."""
    request.getfixturevalue("uncompiled_fused_kernels" if request.param == "kernels" else "native_fused_kernels")
    return request.param

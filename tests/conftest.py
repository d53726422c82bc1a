"""Fixtures shared by the optimizer tests."""

from __future__ import annotations

import pytest

from nsf.optim import _fused


@pytest.fixture
def uncompiled_fused_kernels(monkeypatch):
    """The fused path with its kernels' Python run as it is, not compiled: the same arithmetic, fast to test,
    and every host read inside a kernel visible. Dynamo's tracing of the kernels is tested with
    ``dynamo_fused_kernels``, inductor's code by the test_inductor_* tests."""
    monkeypatch.setattr(_fused, "BACKEND", None)
    monkeypatch.setattr(_fused, "_kernels", {})


@pytest.fixture
def dynamo_fused_kernels(monkeypatch):
    """The fused path with its kernels traced by dynamo (``fullgraph=True``) and run by the "eager" backend:
    no C++ compile."""
    monkeypatch.setattr(_fused, "BACKEND", "eager")
    monkeypatch.setattr(_fused, "_kernels", {})

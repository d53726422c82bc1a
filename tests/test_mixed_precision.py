"""Mixed precision: bf16 parameters with float32 moments (``state_dtype``), autocast, fp16 with GradScaler."""

from __future__ import annotations

import importlib.util
import io
import pathlib

import pytest
import torch

import nsf
from nsf.optim import _fused

torch.set_num_threads(1)
ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = [dict(foreach=False), dict(foreach=True), dict(fused=True)]
PATH_IDS = ["single", "foreach", "fused"]


#: no C++ compile in this file; the one test that asks for ``dynamo_fused_kernels`` gets it (set up after this)
pytestmark = pytest.mark.usefixtures("uncompiled_fused_kernels")


def test_bf16_float32_state_kernel_traces_with_dynamo(dynamo_fused_kernels):
    a = [torch.randn(6, 5).bfloat16().requires_grad_()]
    b = [a[0].detach().clone().requires_grad_()]
    opts = [nsf.NSF(a, scale="raw", p=-0.37, foreach=True, state_dtype=torch.float32),
            nsf.NSF(b, scale="raw", p=-0.37, fused=True, state_dtype=torch.float32)]
    for k in range(3):
        grad = torch.randn(6, 5, generator=torch.Generator().manual_seed(k)).bfloat16()
        a[0].grad, b[0].grad = grad, grad.clone()
        for o in opts:
            o.step()
    assert len(_fused._kernels) == 1
    torch.testing.assert_close(opts[0].state[a[0]]["exp_avg_sq"], opts[1].state[b[0]]["exp_avg_sq"])
    assert (a[0].float() - b[0].float()).abs().max() <= 2 * torch.finfo(torch.bfloat16).eps * a[0].abs().max()


def grads_for(shapes, steps, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) * 1e-2 for s in shapes] for _ in range(steps)]


SHAPES = [(24, 10), (10,)]


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("p", [0.5, -0.37, 0.25])
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.01, False), (0.01, True)])
def test_bf16_params_float32_state_equal_float32_reference_within_bf16_rounding(path, p, weight_decay, decoupled):
    """Each step from the same bf16 parameters and gradients: the float32 moments agree with a float32 reference
    to float32 precision, and the new bf16 parameters are the reference's, rounded to bf16 (± 1 ulp)."""
    torch.manual_seed(0)
    params = [torch.randn(s).bfloat16().requires_grad_() for s in SHAPES]
    ref_params = [q.detach().float().requires_grad_() for q in params]
    opt = nsf.NSF(params, lr=1e-2, scale="raw", p=p, weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                  state_dtype=torch.float32, **path)
    ref = nsf.NSF(ref_params, lr=1e-2, scale="raw", p=p, weight_decay=weight_decay, decoupled_weight_decay=decoupled,
                  foreach=False)
    for grads in grads_for(SHAPES, 6):
        for q, r, grad in zip(params, ref_params, grads):
            q.grad = grad.bfloat16()
            r.grad = q.grad.float()
            with torch.no_grad():
                r.copy_(q.float())  # start each step from the same (bf16-representable) point
        opt.step()
        ref.step()
        for q, r in zip(params, ref_params):
            assert q.dtype == torch.bfloat16
            for key in ("exp_avg", "exp_avg_sq"):
                assert opt.state[q][key].dtype == torch.float32
                torch.testing.assert_close(opt.state[q][key], ref.state[r][key], rtol=1e-5, atol=1e-12)
            ulp = torch.finfo(torch.bfloat16).eps * r.detach().abs().clamp(min=1e-3)
            assert ((q.float() - r.detach()).abs() <= ulp + 1e-7).all()


def test_float32_state_keeps_small_second_moments_that_bf16_state_rounds():
    """Why the option exists: with bf16 moments, v = β2·v + (1−β2)·g² stops growing (its increments round away)."""
    torch.manual_seed(0)
    w16 = torch.zeros(1000, dtype=torch.bfloat16, requires_grad=True)
    w32 = torch.zeros(1000, dtype=torch.bfloat16, requires_grad=True)
    ref = torch.zeros(1000, requires_grad=True)
    opts = [nsf.NSF([w16], scale="raw", p=0.5, foreach=True), nsf.NSF([w32], p=0.5, foreach=True, state_dtype="float32"),
            nsf.NSF([ref], scale="raw", p=0.5, foreach=True)]
    for _ in range(300):
        grad = torch.randn(1000)
        w16.grad, w32.grad, ref.grad = grad.bfloat16(), grad.bfloat16(), grad.bfloat16().float()
        for o in opts:
            o.step()
    v16, v32, vref = (o.state[w]["exp_avg_sq"].float() for o, w in zip(opts, (w16, w32, ref)))
    err16 = ((v16 - vref).abs() / vref).median()
    err32 = ((v32 - vref).abs() / vref).median()
    assert err32 < 1e-5 < err16


def test_state_dtype_validation_and_state_dict_round_trip():
    q = [torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)]
    for bad in ("float8", torch.int32, 3):
        with pytest.raises(ValueError, match="state_dtype"):
            nsf.NSF(q, state_dtype=bad)
    opt = nsf.NSF(q, state_dtype="torch.float32")
    assert opt.param_groups[0]["state_dtype"] is torch.float32
    q[0].grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = nsf.NSF(q, state_dtype=torch.float32)
    fresh.load_state_dict(sd)
    for key in ("exp_avg", "exp_avg_sq"):  # restored in float32, not cast to the bf16 parameter's dtype
        assert fresh.state[q[0]][key].dtype == torch.float32
        assert torch.equal(fresh.state[q[0]][key], opt.state[q[0]][key])
        assert fresh.state[q[0]][key] is not sd["state"][0][key]
    z = [torch.zeros(2, dtype=torch.complex64, requires_grad=True)]
    zopt = nsf.NSF(z, state_dtype=torch.float32)
    z[0].grad = torch.ones(2, dtype=torch.complex64)
    zopt.step()
    assert zopt.state[z[0]]["exp_avg"].dtype == torch.complex64  # applies to real floating parameters only


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g), torch.randint(0, 4, (32,), generator=g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_matches_float32_closely(dtype):
    """float32 parameters, autocast forward: NSF steps on the float32 gradients as usual. The whole update
    Δθ over 10 steps is compared (the parameters themselves move by only ~5e-4)."""
    m_amp, m_ref, m_start = _model(), _model(), _model()
    o_amp = nsf.NSF(m_amp.parameters(), lr=3e-3, scale="raw", p=-0.25)
    o_ref = nsf.NSF(m_ref.parameters(), lr=3e-3, scale="raw", p=-0.25)
    for k in range(10):
        x, y = _batch(k)
        for m, o, amp in ((m_amp, o_amp, True), (m_ref, o_ref, False)):
            o.zero_grad()
            with torch.autocast("cpu", dtype=dtype, enabled=amp):
                out = m(x)
                loss = torch.nn.functional.cross_entropy(out, y)
            assert out.dtype == (dtype if amp else torch.float32)  # autocast really ran the forward
            loss.backward()
            o.step()
    assert all(q.dtype == torch.float32 for q in m_amp.parameters())

    def update(model):
        return torch.cat([(q - q0).detach().flatten() for q, q0 in zip(model.parameters(), m_start.parameters())])

    d_amp, d_ref = update(m_amp), update(m_ref)
    rel = float((d_amp - d_ref).norm() / d_ref.norm())
    # measured: 0.8 % (bf16), 0.07 % (fp16); an untouched or wrongly stepped model is off by ~100 %
    assert 0 < rel < 0.05


def test_fp16_grad_scaler_skips_overflowing_steps_and_matches_unscaled():
    m_s, m_ref = _model(), _model()
    o_s = nsf.NSF(m_s.parameters(), lr=3e-3, scale="raw", p=nsf.schedules.Cyclic(-0.3, 0.3, period=4))
    o_ref = nsf.NSF(m_ref.parameters(), lr=3e-3, scale="raw", p=nsf.schedules.Cyclic(-0.3, 0.3, period=4))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for k in range(6):
        x, y = _batch(k)
        o_s.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(m_s(x), y)
        scaler.scale(loss).backward()
        scaler.step(o_s)
        scaler.update()
        o_ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(m_ref(x), y)
        loss.backward()
        o_ref.step()
    for a, b in zip(m_s.parameters(), m_ref.parameters()):  # power-of-two scale: unscaling is exact
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # an overflow: the scaler skips the step, and NSF's state and p clock do not move
    before = [q.detach().clone() for q in m_s.parameters()]
    clock = o_s.param_groups[0]["step"]
    o_s.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.cross_entropy(m_s(x), y) * float("inf")
    scaler.scale(loss).backward()
    scale = scaler.get_scale()
    scaler.step(o_s)
    scaler.update()
    assert scaler.get_scale() < scale
    assert o_s.param_groups[0]["step"] == clock
    for a, b in zip(m_s.parameters(), before):
        assert torch.equal(a, b)


def test_example_recipes_track_the_float32_run():
    """Each recipe of examples/mixed_precision.py follows the same run in float32 step by step, and that run
    learns. Measured over 30 steps: every recipe within 0.01 of the float32 loss at every step; a 20 % larger lr
    in a recipe puts it 0.22 off; a recipe that does not step stays near the initial loss, 2.3."""
    spec = importlib.util.spec_from_file_location("amp_example", ROOT / "examples" / "mixed_precision.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    baseline = example.main(["--mode", "float32", "--steps", "30", "--synthetic"])
    assert baseline[-1] < 0.01 * baseline[0]
    for mode in ("bf16-autocast", "fp16-gradscaler", "bf16-params"):
        losses = example.main(["--mode", mode, "--steps", "30", "--synthetic"])
        assert max(abs(a - b) for a, b in zip(losses, baseline)) < 0.05, mode

#!/usr/bin/env bash
# NSF on a CUDA machine, in under 5 minutes:
#   1. the optimizer tests with their tensors on the GPU (NSF_TEST_DEVICE=cuda), and the CPU suites;
#   2. CUDA paths (single-tensor, foreach, fused, capturable) against the float64 CPU reference;
#   3. step time ÷ torch.optim.Adam(fused=True) at 8 M and 32 M parameters.
#
#   bash benchmarks/gpu_check.sh              # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --dry-run    # print what would run (any machine)
#   NSF_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh --quick   # the same flow on the CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${NSF_GPU_CHECK_DEVICE:-cuda}"
SIZES="8e6 32e6"
REPEATS=7
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --quick) SIZES="2e5"; REPEATS=2 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
OUT="${NSF_GPU_CHECK_OUT:-benchmarks/results/gpu_check}"

run() {
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ "$DRY" = 0 ] && [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
if [ "$DRY" = 0 ]; then mkdir -p "$OUT"; fi
start=$(date +%s)

echo "== 1. tests (device: $DEVICE for test_optim_fast.py) =="
run env NSF_TEST_DEVICE="$DEVICE" timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_optim_fast.py
run timeout 120 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_optim_reference.py tests/test_mixed_precision.py

echo "== 2. $DEVICE paths vs the float64 CPU reference =="
run timeout 120 "$PY" - "$DEVICE" <<'EOF'
import sys, torch, nsf
device = sys.argv[1]
torch.manual_seed(0)
shapes = [(64, 33), (33,), (7, 5, 3)]
worst = {}
for p in [0.5, 0.25, -0.25, -0.37, nsf.schedules.Cyclic(-0.3, 0.4, period=5)]:
    for name, kw in {"single": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True),
                     "capturable": dict(foreach=True, capturable=True),
                     "adam-graft": dict(foreach=True, scale="adam"),
                     "bf16+f32state": dict(fused=True, state_dtype=torch.float32)}.items():
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        init = [torch.randn(s) for s in shapes]
        ref = [t.double().requires_grad_() for t in init]
        dev = [t.to(device, dtype).requires_grad_() for t in init]
        extra = {k: v for k, v in kw.items() if k == "scale"}
        o_ref = nsf.NSF(ref, lr=1e-2, p=p, foreach=False, weight_decay=0.01, **extra)
        o_dev = nsf.NSF(dev, lr=1e-2, p=p, weight_decay=0.01, **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            for a, b in zip(ref, dev):
                grad = torch.randn(a.shape, generator=g) * 1e-2
                a.grad, b.grad = grad.double(), grad.to(device, dtype)
                if dtype == torch.bfloat16:  # compare from the same bf16 point each step
                    with torch.no_grad():
                        a.copy_(b.double())
                    a.grad = b.grad.double()
            o_ref.step(); o_dev.step()
        err = max(float(((a.detach() - b.detach().double().cpu()).abs() / (a.detach().abs() + 1e-3)).max())
                  for a, b in zip(ref, dev))
        # capturable: bias corrections 1 − β^t in float32 on the device (as torch's Adam): ~1e-4 relative
        tol = 2e-2 if dtype == torch.bfloat16 else (1e-3 if name == "capturable" else 1e-4)
        worst[name] = max(worst.get(name, 0.0), err)
        assert err < tol, (name, p, err)
for name, err in worst.items():
    print(f"  {name:<14} max relative error vs float64 CPU reference: {err:.2e}")
print("  ok")
EOF

echo "== 3. step time ÷ Adam(fused=True) on $DEVICE =="
# shellcheck disable=SC2086
run timeout 240 "$PY" benchmarks/step_overhead.py --device "$DEVICE" --params $SIZES --repeats "$REPEATS" \
  --steps 10 --json "$OUT/step_overhead_$DEVICE.json"

echo "done in $(( $(date +%s) - start )) s; results in $OUT/"

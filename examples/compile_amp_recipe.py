"""A plain training loop with ``torch.compile`` and bfloat16 autocast on the CPU, with NSF.

The model is compiled; parameters and NSF's moments stay float32 while the forward and backward run in
bfloat16. p moves every step (NSF's own cycle, ``quantize=0.25`` keeps it on the exact square-root kernels);
``group["p"]`` is a tensor updated in place, so a moving p never recompiles anything. For the optimizer step
itself, ``nsf.NSF(..., fused=True)`` compiles it too (chosen automatically for ≥ ~1 M parameters per
device/dtype group; see docs/performance.md). Tiny synthetic data:

    python examples/compile_amp_recipe.py --steps 100
    python examples/compile_amp_recipe.py --backend aot_eager   # no C++ compiler needed
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import nsf


def data(n: int = 1024):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    w = torch.randn(32, 10, generator=g)
    return x, (x @ w + 0.5 * torch.randn(n, 10, generator=g)).argmax(1)


def main(argv=None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x, y = data()
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.LayerNorm(128),
                                torch.nn.Linear(128, 10))
    opt = nsf.NSF(model.parameters(), lr=args.lr, scale="adam",
                  p=nsf.schedules.Cyclic(-0.25, 0.5, period=40, shape="cosine", quantize=0.25))
    compiled = torch.compile(model, backend=args.backend)

    losses = []
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(compiled(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    k = max(1, args.steps // 10)
    print(f"loss {sum(losses[:k]) / k:.4f} -> {sum(losses[-k:]) / k:.4f} over {args.steps} steps "
          f"(backend {args.backend}); p now {float(opt.param_groups[0]['p']):+.2f}")
    return losses


if __name__ == "__main__":
    main()

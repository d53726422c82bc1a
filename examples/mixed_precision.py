"""Mixed-precision training with NSF on a small CNN (Fashion-MNIST when it is installed, else synthetic data).

Three recipes, and the full-precision run they are measured against:

* ``bf16-autocast``   float32 parameters and optimizer state; forward/backward under ``torch.autocast(bfloat16)``.
* ``fp16-gradscaler`` the same with float16 autocast and ``torch.amp.GradScaler`` (it skips steps whose gradients
  overflowed; NSF's p clock then stands still, since ``step()`` is not called).
* ``bf16-params``     the whole model in bfloat16, NSF's moments kept in float32 (``state_dtype=torch.float32``):
  half the parameter memory; the power of v̂ is always taken in float32.
* ``float32``         no mixed precision at all: the baseline.

    python examples/mixed_precision.py --mode bf16-autocast --steps 200
    python examples/mixed_precision.py --mode fp16-gradscaler --synthetic
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import nsf

FASHION = "/usr/share/datasets/fashion-mnist"


def data(synthetic: bool, n: int = 4096):
    if not synthetic:
        try:
            from nsf_lab.experiment.data import load_idx_pair
            ds = load_idx_pair(FASHION, name="fashion-mnist")
            return ds.x_train[:n], ds.y_train[:n]
        except Exception as e:  # not installed here: fall back to a learnable synthetic task
            print(f"Fashion-MNIST unavailable ({type(e).__name__}); using synthetic data")
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    templates = torch.randn(10, 1, 28, 28, generator=g)
    return templates[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g), y


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, stride=2, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def main(argv=None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["bf16-autocast", "fp16-gradscaler", "bf16-params", "float32"],
                        default="bf16-autocast")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--synthetic", action="store_true", help="do not look for Fashion-MNIST")
    args = parser.parse_args(argv)

    x, y = data(args.synthetic)
    net = model()
    p = nsf.schedules.Cyclic(-0.25, 0.5, period=50, shape="cosine", quantize=0.25)  # stays on fast paths
    if args.mode == "bf16-params":
        net = net.bfloat16()
        x = x.bfloat16()
        opt = nsf.NSF(net.parameters(), lr=args.lr, p=p, scale="adam", state_dtype=torch.float32)
    else:
        opt = nsf.NSF(net.parameters(), lr=args.lr, p=p, scale="adam")
    amp_dtype = torch.float16 if args.mode == "fp16-gradscaler" else torch.bfloat16
    use_autocast = args.mode in ("bf16-autocast", "fp16-gradscaler")
    scaler = torch.amp.GradScaler("cpu") if args.mode == "fp16-gradscaler" else None

    losses = []
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp_dtype, enabled=use_autocast):
            loss = F.cross_entropy(net(x[idx]), y[idx])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 5) == 0:
            recent = losses[-max(1, args.steps // 5):]
            print(f"{args.mode}: step {step + 1:4d}  loss {sum(recent) / len(recent):.4f}  "
                  f"p {float(opt.param_groups[0]['p']):+.2f}")
    return losses


if __name__ == "__main__":
    main()

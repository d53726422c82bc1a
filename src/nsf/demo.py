"""``nsf demo``: a short, offline training run that shows NSF next to Adam and SGD on real data (digits)."""

from __future__ import annotations

import time

import torch
from torch import nn

from .registry import create_optimizer, spec_to_str

DEMO_SPECS = ["sgd", "adam", "nsf", "nsf-cyclic-adam"]


def _digits(seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:400], order[400:]
    return x[train], y[train], x[test], y[test]


def train_digits(spec: str, epochs: int = 20, batch_size: int = 64, seed: int = 0) -> dict:
    """Train a small MLP on sklearn's digits; returns final test accuracy/loss and the p trace when there is one."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = _digits(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = create_optimizer(spec, model.parameters())
    gen = torch.Generator().manual_seed(seed)
    p_trace = []
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            if "p" in opt.param_groups[0]:
                p_trace.append(float(opt.param_groups[0]["p"]))
    with torch.no_grad():
        logits = model(xte)
        return {
            "spec": spec_to_str(spec),
            "test_acc": (logits.argmax(1) == yte).float().mean().item(),
            "test_loss": nn.functional.cross_entropy(logits, yte).item(),
            "p_range": (min(p_trace), max(p_trace)) if p_trace else None,
            "seconds": time.perf_counter() - start,
        }


def run(args) -> int:
    torch.set_num_threads(args.threads)
    print(f"digits MLP, {args.epochs} epochs, seed {args.seed}, preset learning rates (untuned)")
    print(f"{'optimizer':<22}{'test acc':>9}{'test loss':>11}{'p range':>16}{'time':>8}")
    for spec in args.optimizers:
        r = train_digits(spec, epochs=args.epochs, seed=args.seed)
        p_range = "" if r["p_range"] is None else f"{r['p_range'][0]:.2f}..{r['p_range'][1]:.2f}"
        print(f"{r['spec']:<22}{r['test_acc']:>9.3f}{r['test_loss']:>11.3f}{p_range:>16}{r['seconds']:>7.1f}s")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="short offline training run: NSF next to SGD and Adam on digits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizers", nargs="+", default=DEMO_SPECS, metavar="SPEC",
                        help="registry specs, e.g. adam 'nsf-fixed:p=-0.25'")
    parser.set_defaults(func=run)

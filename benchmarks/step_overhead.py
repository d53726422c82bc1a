"""NSF step time relative to torch.optim.Adam's step on the same parameters (≈ 8 M by default).

Every configuration is timed in the same process, interleaved round-robin, and the median over repeats is
reported, so the ratios compare like with like even on a busy machine.

    python benchmarks/step_overhead.py                 # ≈ 8 M parameters, 15 repeats
    python benchmarks/step_overhead.py --params 1e6 --repeats 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import nsf

CYCLIC = nsf.schedules.Cyclic(-0.25, 0.25, period=10, shape="cosine")  # short period: p changes every step


def make_params(n_params: float, seed: int = 0) -> list[torch.Tensor]:
    """Layers of an MLP of width w (w² + 2·w·w/2 weights, plus biases) with about n_params parameters."""
    width = int((n_params / 2) ** 0.5)
    gen = torch.Generator().manual_seed(seed)
    shapes = [(width, width // 2), (width,), (width, width), (width,), (width // 2, width), (width // 2,)]
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    for q in params:
        q.grad = torch.randn(q.shape, generator=gen) * 1e-3
    return params


def configurations() -> dict[str, tuple]:
    """label -> (factory, kwargs). Adam's three implementations are the baselines."""
    configs = {
        "Adam for-loop": (torch.optim.Adam, {"foreach": False}),
        "Adam foreach": (torch.optim.Adam, {"foreach": True}),
        "Adam fused": (torch.optim.Adam, {"fused": True}),
    }
    for label, p in [("½", 0.5), ("¼", 0.25), ("−¼", -0.25), ("−0.37", -0.37), ("cyclic", CYCLIC)]:
        for foreach in (False, True):
            path = "foreach" if foreach else "for-loop"
            configs[f"NSF p={label} raw {path}"] = (nsf.NSF, {"p": p, "foreach": foreach})
        configs[f"NSF p={label} adam-graft foreach"] = (nsf.NSF, {"p": p, "scale": "adam", "foreach": True})
    return configs


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=8e6, help="approximate parameter count")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing sample")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = configurations()
    optimizers = {}
    for label, (factory, kwargs) in configs.items():
        params = make_params(args.params)
        optimizers[label] = factory(params, lr=1e-3, **kwargs)
        time_steps(optimizers[label], 2)  # warm-up: lazy state, allocator
    n = sum(q.numel() for q in next(iter(optimizers.values())).param_groups[0]["params"])

    samples: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(args.repeats):  # round-robin, so drifts in machine load hit every configuration alike
        for label, opt in optimizers.items():
            samples[label].append(time_steps(opt, args.steps))
    median = {label: statistics.median(s) for label, s in samples.items()}

    print(f"{n / 1e6:.1f} M parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.repeats} interleaved repeats "
          f"of {args.steps} steps")
    header = f"{'optimizer':<34}{'ms/step':>9}{'÷ Adam loop':>13}{'÷ foreach':>11}{'÷ fused':>9}"
    print(header)
    print("-" * len(header))
    for label, t in median.items():
        print(f"{label:<34}{t * 1e3:>9.2f}{t / median['Adam for-loop']:>13.2f}"
              f"{t / median['Adam foreach']:>11.2f}{t / median['Adam fused']:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": n, "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "repeats": args.repeats, "steps": args.steps, "median_s": median, "samples_s": samples},
                      f, indent=1)


if __name__ == "__main__":
    main()

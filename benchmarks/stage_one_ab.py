"""Stage 1 of the fused grafted step, float64 sums (two divisions under scale="adam") against the CPU's float32 sums
(host-checked; q and Adam's step from one division), the same kernels on the same tensors, interleaved in one
process: medians ÷ fused Adam's whole step.

    python benchmarks/stage_one_ab.py --threads 1 --params 8e6 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nsf.optim import _fused
from nsf.optim._fused_kernels import KernelConfig, graft_norms_kernel
from nsf.optim._step_options import StepOptions
from step_overhead import make_params


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=8e6)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = make_params(args.params)
    adam = torch.optim.Adam(params, lr=1e-3, fused=True)
    moments = [(torch.randn_like(q) * 1e-3, torch.rand_like(q) * 1e-6) for q in params]
    steps = [torch.tensor(10.0) for _ in params]
    calls = {}
    for scale, p in (("adam", 0.25), ("adam", 0.125), ("sgd", 0.25), ("adam", 0.0)):
        options = StepOptions(p=p, scale=scale, fused=True)
        scalars, hyper, _, _ = _fused._scalars(steps, options, p, params[0].device, torch.float32)
        for acc in (torch.float64, torch.float32):
            config = KernelConfig.of(options, p, torch.float32, acc)
            shapes = tuple(q.shape for q in params)
            key = (config, params[0].device, torch.float32, torch.float32, torch.float32, shapes)
            _, kernel = _fused._get_kernel(graft_norms_kernel, key)
            tensors = (params, [q.grad for q in params], [m for m, _ in moments], [v for _, v in moments], [])
            calls[f"{scale} p={p} stage 1, {str(acc)[6:]} sums"] = (kernel, tensors, scalars, hyper)
    with torch.no_grad():
        for kernel, tensors, scalars, hyper in calls.values():
            kernel(*tensors, scalars, hyper)
        adam.step()
        samples = {label: [] for label in ["Adam fused", *calls]}
        for _ in range(args.repeats):
            t = time.perf_counter()
            adam.step()
            samples["Adam fused"].append(time.perf_counter() - t)
            for label, (kernel, tensors, scalars, hyper) in calls.items():
                t = time.perf_counter()
                kernel(*tensors, scalars, hyper)
                samples[label].append(time.perf_counter() - t)
    median = {label: statistics.median(s) for label, s in samples.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, {sum(q.numel() for q in params) / 1e6:.1f} M parameters,"
          f" medians of {args.repeats} interleaved repeats")
    for label, t in median.items():
        print(f"{label:<34}{t * 1e3:>8.2f} ms{t / median['Adam fused']:>7.2f} × Adam fused")
    return median


if __name__ == "__main__":
    main()

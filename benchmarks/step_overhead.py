"""NSF step time relative to torch.optim.Adam (fused=True, and foreach) on the same parameters.

Every configuration of one size is timed in the same process, interleaved round-robin, and the median over
repeats is reported, so the ratios compare like with like even on a busy machine. Next to the times: the
bytes/s the step achieves, counting the minimum traffic of an Adam-type step (read θ, g, m, v; write θ, m, v:
7 × 4 bytes per float32 element), against a measured copy bandwidth (``dst.copy_(src)``, 2 × 4 bytes).

    python benchmarks/step_overhead.py --threads 1                       # 1 M / 8 M / 32 M parameters
    python benchmarks/step_overhead.py --params 8e6 --repeats 30 --json out.json
    python benchmarks/step_overhead.py --e2e --threads 1                 # Fashion-MNIST CNN training step
    python benchmarks/step_overhead.py --device cuda --params 8e6 32e6   # on a GPU
    python benchmarks/step_overhead.py --params 8e6 --paths fused --only default graft   # a subset
    python benchmarks/step_overhead.py --stages --params 8e6 --threads 1  # the fused step's stages
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import nsf
from nsf.optim.defaults import default_cycle

CYCLIC = nsf.schedules.Cyclic(-0.25, 0.25, period=10, shape="cosine")  # short period: p changes every step
STEPPED = nsf.schedules.Cyclic(-0.25, 0.25, period=10, shape="cosine", quantize=0.25)  # on the fast paths
DEFAULT_10 = default_cycle(10)  # the default cycle shortened so that every p it visits (0, ⅛, …, ½) is timed
P_VALUES = [("½", 0.5), ("¼", 0.25), ("⅜", 0.375), ("−¼", -0.25), ("−0.37", -0.37), ("default", "default"),
            ("cyclic ±¼", CYCLIC), ("stepped ±¼", STEPPED)]
BYTES_PER_ELEMENT = 7 * 4
WARMUP_STEPS = 10  # the period of CYCLIC, STEPPED and DEFAULT_10


def make_params(n_params: float, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    """Layers of an MLP of width w (w² + 2·w·w/2 weights, plus biases) with about n_params parameters."""
    width = int((n_params / 2) ** 0.5)
    gen = torch.Generator().manual_seed(seed)
    shapes = [(width, width // 2), (width,), (width, width), (width,), (width // 2, width), (width // 2,)]
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for q in params:
        q.grad = (torch.randn(q.shape, generator=gen) * 1e-3).to(device)
    return params


def _nsf(p, **kw):
    """Fixed p and the explicit cycles take the raw scale; "default" is NSF() as shipped (nsf.optim.defaults:
    the cosine cycle between 0 and ½ on multiples of ⅛, grafted on Adam's step length) with its cycle
    shortened to 10 steps, so that the timing visits every p of the cycle, not only its first value."""
    def make(params, lr):
        if p == "default":
            return nsf.NSF(params, lr=lr, p=DEFAULT_10, **kw)
        return nsf.NSF(params, lr=lr, p=p, **{"scale": "raw", **kw})
    return make


def configurations(paths=("foreach", "fused")) -> dict[str, object]:
    """label -> factory(params, lr). Adam's three implementations are the baselines."""
    configs = {
        "Adam for-loop": lambda ps, lr: torch.optim.Adam(ps, lr=lr, foreach=False),
        "Adam foreach": lambda ps, lr: torch.optim.Adam(ps, lr=lr, foreach=True),
        "Adam fused": lambda ps, lr: torch.optim.Adam(ps, lr=lr, fused=True),
    }
    for label, p in P_VALUES:
        for path in paths:
            kw = {"foreach": True} if path == "foreach" else ({"fused": True} if path == "fused" else {})
            configs[f"NSF p={label} {path}"] = _nsf(p, **kw)
    for path in paths:
        kw = {"foreach": True} if path == "foreach" else ({"fused": True} if path == "fused" else {})
        configs[f"NSF p=¼ sgd-graft {path}"] = _nsf(0.25, scale="sgd", **kw)
        configs[f"NSF p=¼ adam-graft {path}"] = _nsf(0.25, scale="adam", **kw)
        configs[f"NSF p=−0.37 adam-graft {path}"] = _nsf(-0.37, scale="adam", **kw)
        configs[f"NSF old default (continuous ±¼, adam-graft) {path}"] = _nsf(CYCLIC, scale="adam", **kw)
    return configs


def select(configs: dict, patterns: list[str] | None) -> dict:
    """Adam's baselines and the configurations whose label contains one of ``patterns`` (all when None)."""
    return {label: make for label, make in configs.items()
            if patterns is None or label.startswith("Adam") or any(pat in label for pat in patterns)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(opt: torch.optim.Optimizer, steps: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


class CopyProbe:
    """Times ``dst.copy_(src)`` over n float32 elements (read n, write n) in the same round-robin as the
    optimizers, so the bandwidth it measures saw the same machine load."""

    label = "copy (bandwidth probe)"

    def __init__(self, n: int, device: str):
        self.src = torch.randn(n, device=device)
        self.dst = torch.zeros_like(self.src)

    def step(self):
        self.dst.copy_(self.src)


def bench_size(n_params: float, args, configs) -> dict:
    params = make_params(n_params, device=args.device)  # shared: every optimizer steps the same tensors
    n = sum(q.numel() for q in params)
    optimizers, compile_s = {}, {}
    for label, factory in configs.items():
        optimizers[label] = factory(params, 1e-3)
        t = time.perf_counter()
        # warm-up over one whole period of the cycled configurations (10 steps), so that every p kind they
        # visit is compiled before timing: lazy state, allocator, compiles
        time_steps(optimizers[label], WARMUP_STEPS, args.device)
        compile_s[label] = time.perf_counter() - t
    probe = CopyProbe(n, args.device)
    time_steps(probe, 2, args.device)
    timed = {**optimizers, probe.label: probe}
    samples: dict[str, list[float]] = {label: [] for label in timed}
    for _ in range(args.repeats):  # round-robin, so drifts in machine load hit every configuration alike
        for label, opt in timed.items():
            samples[label].append(time_steps(opt, args.steps, args.device))
    copy_s = statistics.median(samples.pop(probe.label))
    bandwidth = 8 * n / copy_s
    median = {label: statistics.median(s) for label, s in samples.items()}
    return {"params": n, "median_s": median, "samples_s": samples, "warmup_s": compile_s,
            "copy_bytes_per_s": bandwidth}


def print_size(res: dict) -> None:
    median, bw = res["median_s"], res["copy_bytes_per_s"]
    n = res["params"]
    print(f"\n{n / 1e6:.1f} M parameters; copy bandwidth {bw / 1e9:.2f} GB/s")
    header = (f"{'optimizer':<38}{'ms/step':>9}{'÷ fused':>9}{'÷ foreach':>11}{'÷ loop':>8}"
              f"{'GB/s':>7}{'÷ copy':>8}")
    print(header)
    print("-" * len(header))
    for label, t in median.items():
        rate = BYTES_PER_ELEMENT * n / t
        print(f"{label:<38}{t * 1e3:>9.2f}{t / median['Adam fused']:>9.2f}{t / median['Adam foreach']:>11.2f}"
              f"{t / median['Adam for-loop']:>8.2f}{rate / 1e9:>7.2f}{rate / bw:>8.2f}")


# --- per stage: where the grafted step's time goes -----------------------------------------------------------

STAGE_CONFIGS = [("raw", 0.25), ("raw", -0.37), ("sgd", 0.25), ("sgd", -0.37), ("adam", 0.25), ("adam", -0.37)]


def stages(args) -> dict:
    """Each compiled call of the fused step timed alone (raw kernel; grafted stage 1, the norms; stage 2, the
    update), next to fused Adam and a compiled read-only pass over g, m, v (stage 1's memory floor), all
    interleaved; medians ÷ fused Adam."""
    from nsf.optim import _fused

    params = make_params(args.params[0], device=args.device)
    samples: dict[str, list[float]] = {"Adam fused": [], "read g, m, v (sum)": []}
    current = [""]
    real_call = _fused._call

    def timed_call(owner, key_kernel, *kernel_args):
        name = key_kernel[0][1]
        stage = {"raw_kernel": "raw", "graft_norms_kernel": "stage 1 (norms)"}.get(name, "stage 2 (update)")
        _sync(args.device)
        start = time.perf_counter()
        out = real_call(owner, key_kernel, *kernel_args)
        _sync(args.device)
        if current[0]:
            samples.setdefault(f"{current[0]} {stage}", []).append(time.perf_counter() - start)
        return out

    opts = {f"{scale} p={p}": nsf.NSF(params, lr=1e-3, p=p, scale=scale, fused=True) for scale, p in STAGE_CONFIGS}
    adam = torch.optim.Adam(params, lr=1e-3, fused=True)
    moments = [(q.grad, torch.randn_like(q).detach(), torch.rand_like(q).detach()) for q in params]
    read = torch.compile(lambda ts: torch.stack([(g + m + v).sum() for g, m, v in ts]), fullgraph=True)
    _fused._call = timed_call
    try:
        for opt in (*opts.values(), adam):
            time_steps(opt, 2, args.device)  # warm-up: compiles
        read(moments)
        for _ in range(args.repeats):
            samples["Adam fused"].append(time_steps(adam, 1, args.device))
            _sync(args.device)
            start = time.perf_counter()
            read(moments)
            _sync(args.device)
            samples["read g, m, v (sum)"].append(time.perf_counter() - start)
            for label, opt in opts.items():
                current[0] = label
                opt.step()
                current[0] = ""
    finally:
        _fused._call = real_call
    median = {label: statistics.median(s) for label, s in samples.items()}
    print(f"\nper compiled call, {sum(q.numel() for q in params) / 1e6:.1f} M parameters (medians of {args.repeats})")
    for label, t in median.items():
        print(f"{label:<34}{t * 1e3:>9.2f} ms{t / median['Adam fused']:>8.2f} × Adam fused")
    return {"median_s": median, "samples_s": samples}


# --- end to end: the Fashion-MNIST CNN of the benchmark suite ----------------------------------------------------

def e2e(args) -> dict:
    from nsf_lab.experiment.models import build

    try:
        from nsf_lab.experiment.data import load_idx_pair
        ds = load_idx_pair("/usr/share/datasets/fashion-mnist", name="fashion-mnist")
        x_all, y_all, source = ds.x_train[:8192], ds.y_train[:8192], "fashion-mnist"
    except Exception:  # not installed: same shapes, synthetic
        g = torch.Generator().manual_seed(0)
        x_all, y_all, source = torch.rand(8192, 1, 28, 28, generator=g), torch.randint(0, 10, (8192,), generator=g), \
            "synthetic"
    optims = {
        "Adam (torch default)": lambda ps: torch.optim.Adam(ps, lr=1e-3),
        "Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "NSF default (auto path)": lambda ps: nsf.NSF(ps, lr=1e-3, p=DEFAULT_10),
        "NSF p=−0.37 raw": lambda ps: nsf.NSF(ps, lr=1e-3, p=-0.37, scale="raw"),
        "NSF old default (continuous ±¼)": lambda ps: nsf.NSF(ps, lr=1e-3, p=CYCLIC),
    }
    runs = {}
    for label, make in optims.items():
        torch.manual_seed(0)
        model = build("cnn2d", (1, 28, 28), 10, widths=[8, 16], hidden=64)
        runs[label] = (model, make(list(model.parameters())))
    batch = args.batch_size
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, len(x_all), (batch,), generator=g) for _ in range(64)]
    fwd_bwd: dict[str, list[float]] = {label: [] for label in runs}
    step: dict[str, list[float]] = {label: [] for label in runs}
    total: dict[str, list[float]] = {label: [] for label in runs}
    warmup = 5
    for k in range(warmup + args.repeats * args.steps):  # one training step per optimizer per round
        idx = batches[k % len(batches)]
        for label, (model, opt) in runs.items():
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if k >= warmup:
                fwd_bwd[label].append(t1 - t0)
                step[label].append(t2 - t1)
                total[label].append(t2 - t0)
    med = lambda d: {label: statistics.median(v) for label, v in d.items()}  # noqa: E731
    m_fb, m_step, m_total = med(fwd_bwd), med(step), med(total)
    n = sum(q.numel() for q in next(iter(runs.values()))[0].parameters())
    n_steps = args.repeats * args.steps
    print(f"\nend to end: cnn2d (widths 8,16, hidden 64; {n} parameters) on {source}, batch {batch}: "
          f"{n_steps} training steps per optimizer, interleaved one step at a time; medians per step")
    header = (f"{'optimizer':<34}{'fwd+bwd ms':>11}{'step ms':>9}{'total ms':>10}{'÷ Adam':>8}{'÷ Adam fused':>14}"
              f"{'(fwd+bwd+step) ÷ Adam':>24}")
    print(header)
    print("-" * len(header))
    base, fused = "Adam (torch default)", "Adam fused"
    for label in runs:
        composed = (m_fb[label] + m_step[label]) / (m_fb[base] + m_step[base])
        print(f"{label:<34}{m_fb[label] * 1e3:>11.3f}{m_step[label] * 1e3:>9.3f}{m_total[label] * 1e3:>10.3f}"
              f"{m_total[label] / m_total[base]:>8.3f}{m_total[label] / m_total[fused]:>14.3f}{composed:>24.3f}")
    return {"params": n, "source": source, "batch": batch, "steps": n_steps, "median_fwd_bwd_s": m_fb,
            "median_step_s": m_step, "median_total_s": m_total}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, nargs="+", default=[1e6, 8e6, 32e6],
                        help="approximate parameter counts")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing sample")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paths", nargs="+", default=["foreach", "fused"], choices=["foreach", "fused", "auto"])
    parser.add_argument("--only", nargs="+", default=None,
                        help="time only the configurations whose label contains one of these (and Adam's)")
    parser.add_argument("--e2e", action="store_true", help="only the end-to-end training-step comparison")
    parser.add_argument("--stages", action="store_true", help="only the per-stage times of the fused step "
                        "(at the first --params size)")
    parser.add_argument("--batch-size", type=int, default=128, help="end-to-end batch size")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{platform.processor() or platform.machine()}; median of {args.repeats} interleaved repeats of "
          f"{args.steps} steps")
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
           "repeats": args.repeats, "steps": args.steps}
    if args.e2e:
        out["e2e"] = e2e(args)
    elif args.stages:
        out["stages"] = stages(args)
    else:
        configs = select(configurations(tuple(args.paths)), args.only)
        out["sizes"] = []
        for n_params in args.params:
            res = bench_size(n_params, args, configs)
            print_size(res)
            out["sizes"].append(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

"""NSF under torch.distributed on the CPU (gloo, 2 processes): DDP, ZeroRedundancyOptimizer, FSDP2.

One ``torch.multiprocessing.spawn`` runs every scenario (starting processes is the slow part); each test then
checks one scenario's result against a single process that trains on the combined batch.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nsf

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
STEPS = 6
LR = 1e-2
SCHEDULE = nsf.schedules.Cyclic(-0.3, 0.4, period=4, shape="triangle")  # crosses 0: every branch is taken

# scenario -> NSF options
DDP_CASES = {
    "ddp-raw-foreach": dict(p=SCHEDULE, scale="raw", foreach=True),
    "ddp-adam-graft-loop": dict(p=SCHEDULE, scale="adam", foreach=False, weight_decay=0.01),
}
ZERO_CASES = {
    "zero-raw": dict(p=SCHEDULE, scale="raw"),
    "zero-sgd-graft": dict(p=SCHEDULE, scale="sgd", amsgrad=True),
}
FSDP_CASES = {
    "fsdp2-raw-foreach": dict(p=SCHEDULE, scale="raw", foreach=True),
    "fsdp2-adam-graft-foreach": dict(p=SCHEDULE, scale="adam", foreach=True),
    "fsdp2-sgd-graft-loop": dict(p=-0.3, scale="sgd", foreach=False, decoupled_weight_decay=True,
                                 weight_decay=0.1),
}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    return x, torch.sin(x[:, :3]) + 0.3 * torch.randn(16, 3, generator=g, dtype=torch.float64)


def loss_fn(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def single_process(options) -> list[torch.Tensor]:
    """The reference: one process, the combined batch."""
    model = make_model()
    opt = nsf.NSF(model.parameters(), lr=LR, **options)
    x, y = make_data()
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    return [q.detach().clone() for q in model.parameters()]


def _max_diff(a, b) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def _train(model, opt, x, y):
    for _ in range(STEPS):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()


def _worker(rank: int, world: int, init: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, y = make_data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]  # equal halves: DDP's mean of means is the full mean
    results: dict[str, dict] = {}

    def record(name, fn):
        try:
            t0 = time.perf_counter()
            results[name] = fn()
            results[name]["seconds"] = time.perf_counter() - t0
        except Exception as e:  # reported by the test that owns the scenario
            results[name] = {"error": f"{type(e).__name__}: {e}"}

    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, options in DDP_CASES.items():
        def ddp_case(options=options):
            model = make_model()
            ddp = DDP(model)
            _train(ddp, nsf.NSF(ddp.parameters(), lr=LR, **options), xs, ys)
            return {"diff": _max_diff(model.parameters(), single_process(options))}
        record(name, ddp_case)

    from torch.distributed.optim import ZeroRedundancyOptimizer

    for name, options in ZERO_CASES.items():
        def zero_case(options=options):
            model = make_model()
            ddp = DDP(model)
            opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=nsf.NSF, lr=LR, **options)
            _train(ddp, opt, xs, ys)
            owned = sum(len(g["params"]) for g in opt.optim.param_groups)
            opt.consolidate_state_dict(to=0)
            info = {"diff": _max_diff(model.parameters(), single_process(options)), "owned": owned}
            if rank == 0:
                sd = opt.state_dict()
                info["state_groups"] = len(sd["param_groups"])
                info["p_schedule"] = sd["param_groups"][0]["p_schedule"]
                info["state_entries"] = len(sd["state"])
            return info
        record(name, zero_case)

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # older torch: FSDP2 lives elsewhere or not at all
        fully_shard = None
    for name, options in FSDP_CASES.items():
        def fsdp_case(options=options):
            model = make_model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = nsf.NSF(model.parameters(), lr=LR, **options)
            _train(model, opt, xs, ys)
            param = next(model.parameters())
            full = [q.full_tensor() for q in model.parameters()]
            return {"diff": _max_diff(full, single_process(options)), "param_type": type(param).__name__,
                    "local_rows": int(param.to_local().shape[0]), "rows": int(param.shape[0])}
        if fully_shard is None:
            results[name] = {"error": "unavailable"}
        else:
            record(name, fsdp_case)

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    init = "file://" + str(out / "rendezvous")
    mp.spawn(_worker, args=(WORLD, init, str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _check(results, name, tol=1e-12):
    for rank, res in enumerate(results):
        info = res[name]
        assert "error" not in info, f"rank {rank}: {info['error']}"
        assert info["diff"] <= tol, f"rank {rank}: {name} differs from one process by {info['diff']:.3g}"
    return [res[name] for res in results]


@pytest.mark.parametrize("name", list(DDP_CASES))
def test_ddp_equals_one_process_on_the_combined_batch(results, name):
    _check(results, name, tol=1e-12)


@pytest.mark.parametrize("name", list(ZERO_CASES))
def test_zero_redundancy_optimizer_with_nsf_matches(results, name):
    infos = _check(results, name)
    assert sum(info["owned"] for info in infos) == len(list(make_model().parameters()))  # whole params, split
    assert all(info["owned"] > 0 for info in infos)
    assert infos[0]["state_entries"] == len(list(make_model().parameters()))  # consolidated on rank 0
    assert infos[0]["p_schedule"] == SCHEDULE.to_dict()


@pytest.mark.parametrize("name", list(FSDP_CASES))
def test_fsdp2_fully_shard_matches_including_grafted_norms(results, name):
    """Grafted scales need full-tensor norms: DTensor's norm reduces across shards, so the result matches one
    process exactly (a shard-local norm would not)."""
    if results[0][name].get("error") == "unavailable":
        pytest.skip("torch.distributed.fsdp.fully_shard is not available in this torch")
    infos = _check(results, name)
    assert infos[0]["param_type"] == "DTensor"
    assert infos[0]["local_rows"] < infos[0]["rows"]  # really sharded


@pytest.mark.parametrize("scale", ["sgd", "adam"])
def test_sharded_norm_would_differ(scale):
    """Guards the FSDP2 test's power: NSF grafting each half of a tensor on its own (as a shard-local norm
    would) moves the parameters far beyond that test's tolerance, while the raw scale does not care."""
    def run(halves: bool, scale: str) -> torch.Tensor:
        torch.manual_seed(0)
        w = torch.randn(16, 6, dtype=torch.float64)
        params = [torch.nn.Parameter(c.clone()) for c in w.chunk(2)] if halves else [torch.nn.Parameter(w)]
        opt = nsf.NSF(params, lr=LR, p=SCHEDULE, scale=scale)
        g = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            grad = torch.randn(16, 6, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16)[:, None]
            for q, gq in zip(params, grad.chunk(len(params))):
                q.grad = gq
            opt.step()
        return torch.cat([q.detach() for q in params])

    assert _max_diff(run(True, scale), run(False, scale)) > 1e-4
    assert _max_diff(run(True, "raw"), run(False, "raw")) <= 1e-12


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

"""Train one benchmark task with DistributedDataParallel under torchrun (CPU: gloo; GPU: nccl).

Each rank takes its slice of every global batch, so N ranks train on the same global batches as one process.
``--verify`` replays the run in one process on rank 0 and reports the largest parameter difference.

    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_task.py --task fashion-cnn --steps 200
    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_task.py --task digits-mlp --optimizer \
        'nsf:scale=adam' --steps 50 --verify
    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_task.py --zero     # ZeroRedundancyOptimizer
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import nsf
from nsf_lab.experiment import data as D
from nsf_lab.experiment import models as M
from nsf_lab.experiment.tasks import get_task


def batches(n_train: int, batch_size: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n_train, (batch_size,), generator=g) for _ in range(steps)]


def build_optimizer(spec: str, params, lr: float, zero: bool):
    if not zero:
        return nsf.create_optimizer(spec, params, lr=lr)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    d = nsf.registry.parse_spec(spec)
    entry = nsf.registry.optimizer_entry(d.pop("name"))
    return ZeroRedundancyOptimizer(params, optimizer_class=entry.factory, lr=lr, **{**entry.preset, **d})


def train(model, opt, ds, idx_list, rank: int, world: int) -> tuple[list[float], float]:
    losses = []
    t0 = time.perf_counter()
    for idx in idx_list:
        local = idx.chunk(world)[rank]
        loss = F.cross_entropy(model(ds.x_train[local]), ds.y_train[local])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fashion-cnn")
    parser.add_argument("--optimizer", default="nsf", help="registry spec, e.g. 'nsf:scale=adam'")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zero", action="store_true", help="shard optimizer state (ZeroRedundancyOptimizer)")
    parser.add_argument("--verify", action="store_true", help="replay in one process on rank 0 and compare")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    task = get_task(args.task)
    if task.batch_size % world:
        raise SystemExit(f"batch size {task.batch_size} is not divisible by {world} ranks")
    ds = D.prepared(task.dataset, "test", task.val_frac, device)
    in_shape = tuple(ds.x_train.shape[1:])

    def fresh_model():
        torch.manual_seed(args.seed)
        return M.build(task.model, in_shape, ds.n_classes, **task.model_kw).to(device)

    idx_list = [i.to(device) for i in batches(len(ds.y_train), task.batch_size, args.steps, args.seed + 1)]
    model = fresh_model()
    ddp = DDP(model)
    opt = build_optimizer(args.optimizer, ddp.parameters(), args.lr, args.zero)
    losses, wall = train(ddp, opt, ds, idx_list, rank, world)
    result = {"task": args.task, "optimizer": args.optimizer, "world": world, "backend": backend,
              "zero": args.zero, "steps": args.steps, "first_loss": losses[0], "last_loss": losses[-1],
              "ms_per_step": 1e3 * wall / args.steps}
    if args.verify and rank == 0:
        ref = fresh_model()
        ref_opt = nsf.create_optimizer(args.optimizer, ref.parameters(), lr=args.lr)
        train(ref, ref_opt, ds, idx_list, 0, 1)
        result["max_param_diff_vs_one_process"] = max(
            float((a.detach() - b.detach()).abs().max()) for a, b in zip(model.parameters(), ref.parameters()))
    if rank == 0:
        print(json.dumps(result, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    dist.barrier()  # rank 0 may still be verifying: nobody leaves before everyone is done
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()

"""``nsf demo``: a short, offline training run that shows NSF next to Adam and SGD on real data (digits).

Data, model and loop are the benchmark's (task ``digits-mlp``: same split, same standardisation, same MLP,
same training loop), but with each optimizer's preset learning rate, constant, instead of a tuned one.
"""

from __future__ import annotations

import time

import torch

from nsf_lab.experiment import data as D
from nsf_lab.experiment import models as M
from nsf_lab.experiment.metrics import classification_metrics
from nsf_lab.experiment.tasks import get_task
from nsf_lab.experiment.train import fit, shuffled_batches
from nsf.optim.defaults import DEFAULT_CYCLES, default_cycle
from nsf.registry import create_optimizer, parse_spec, spec_to_str

DEMO_SPECS = ["sgd", "adam", "nsf", "nsf-cyclic-adam"]
TASK = "digits-mlp"


def _default_p(spec: str, steps: int) -> dict:
    """The library default ("nsf") as the evidence search ran it: its p cycle completed within the run
    (``default_cycle(total_steps=...)``), not stopped part way by the fixed 1000-step period."""
    return {"p": default_cycle(total_steps=steps)} if parse_spec(spec) == {"name": "nsf"} else {}


def train_digits(spec: str, epochs: int = 20, seed: int = 0) -> dict:
    """Train the benchmark's digits MLP; returns final test accuracy/loss and the p trace when there is one."""
    task = get_task(TASK)
    ds = D.prepared(task.dataset, "test", task.val_frac)
    torch.manual_seed(seed)
    model = M.build(task.model, tuple(ds.x_train.shape[1:]), ds.n_classes, **task.model_kw)
    steps = epochs * task.epoch_steps(len(ds.y_train))
    default_p = _default_p(spec, steps)
    opt = create_optimizer(spec, model.parameters(), total_steps=steps, **default_p)
    p_trace = []

    def trace_p(step, model, loss):
        if step and "p" in opt.param_groups[0]:
            p_trace.append(float(opt.param_groups[0]["p"]))

    start = time.perf_counter()
    batches = shuffled_batches(ds.x_train, ds.y_train, task.batch_size, torch.Generator().manual_seed(seed))
    fit(model, opt, batches, steps, callbacks=[trace_p])
    with torch.no_grad():
        m = classification_metrics(model(ds.x_test), ds.y_test)
    return {
        "spec": spec_to_str(spec) + (f" ({DEFAULT_CYCLES} cycles)" if default_p else ""),
        "test_acc": m["acc"],
        "test_loss": m["loss"],
        "p_range": (min(p_trace), max(p_trace)) if p_trace else None,
        "seconds": time.perf_counter() - start,
    }


def run(args) -> int:
    torch.set_num_threads(args.threads)
    print(f"digits MLP (benchmark task {TASK}), {args.epochs} epochs, seed {args.seed}, "
          "preset learning rates (untuned)")
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

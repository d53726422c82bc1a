"""``nsf demo``: a short, offline training run that shows NSF next to Adam and SGD on real data (digits).

Data, model and loop are the benchmark's (task ``digits-mlp``: same split, same standardisation, same MLP,
same training loop), but with each optimizer's preset learning rate, constant, instead of a tuned one.
"""

from __future__ import annotations

import time

import torch

from nsf_lab.cli import check_spec, non_negative_int, positive_int
from nsf_lab.experiment import data as D
from nsf_lab.experiment import models as M
from nsf_lab.experiment.metrics import classification_metrics
from nsf_lab.experiment.tasks import get_task
from nsf_lab.experiment.train import fit, shuffled_batches
from nsf.registry import create_optimizer, spec_to_str

DEMO_SPECS = ["sgd", "adam", "nsf", "nsf-cyclic-adam"]
TASK = "digits-mlp"


def run_steps(epochs: int) -> int:
    """The number of optimizer steps of a demo run of ``epochs`` epochs (the run length a per-run cycle spans)."""
    task = get_task(TASK)
    return epochs * task.epoch_steps(len(D.prepared(task.dataset, "test", task.val_frac).y_train))


def train_digits(spec: str, epochs: int = 20, seed: int = 0, progress: bool = False) -> dict:
    """Train the benchmark's digits MLP; returns final test accuracy/loss and the p trace when there is one.
    ``progress``: a progress bar over the run's steps (stderr)."""
    from tqdm.auto import tqdm

    task = get_task(TASK)
    ds = D.prepared(task.dataset, "test", task.val_frac)
    torch.manual_seed(seed)
    model = M.build(task.model, tuple(ds.x_train.shape[1:]), ds.n_classes, **task.model_kw)
    steps = epochs * task.epoch_steps(len(ds.y_train))
    opt = create_optimizer(spec, model.parameters(), total_steps=steps)  # "nsf": the default, 2 p cycles per run
    label, cycle = spec_to_str(spec), opt.param_groups[0].get("p_schedule")
    if "p=" not in label and isinstance(cycle, dict) and "cycles" in cycle:  # the default's cycle, fitted to the run
        label += f" ({cycle['cycles']:g} cycles)"
    p_trace = []
    bar = tqdm(total=steps, desc=label, unit="step", leave=False, disable=not progress)

    def trace(step, model, loss):
        if step:
            bar.update(1)
            if "p" in opt.param_groups[0]:
                p_trace.append(float(opt.param_groups[0]["p"]))

    start = time.perf_counter()
    batches = shuffled_batches(ds.x_train, ds.y_train, task.batch_size, torch.Generator().manual_seed(seed))
    try:
        fit(model, opt, batches, steps, callbacks=[trace])
    finally:
        bar.close()
    with torch.no_grad():
        m = classification_metrics(model(ds.x_test), ds.y_test)
    return {
        "spec": label,
        "test_acc": m["acc"],
        "test_loss": m["loss"],
        "p_range": (min(p_trace), max(p_trace)) if p_trace else None,
        "seconds": time.perf_counter() - start,
    }


def run(args) -> int:
    steps = run_steps(args.epochs)
    for spec in args.optimizers:  # all checked before the first row trains
        check_spec(spec, "--optimizers", total_steps=steps)
    torch.set_num_threads(args.threads)
    print(f"digits MLP (benchmark task {TASK}), {args.epochs} epochs ({steps} steps), seed {args.seed}, "
          "preset learning rates (untuned)")
    print(f"{'optimizer':<22}{'test acc':>9}{'test loss':>11}{'p range':>16}{'time':>8}", flush=True)
    for spec in args.optimizers:
        r = train_digits(spec, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
        p_range = "" if r["p_range"] is None else f"{r['p_range'][0]:.2f}..{r['p_range'][1]:.2f}"
        print(f"{r['spec']:<22}{r['test_acc']:>9.3f}{r['test_loss']:>11.3f}{p_range:>16}{r['seconds']:>7.1f}s",
              flush=True)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="short offline training run: NSF next to SGD and Adam on digits")
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--optimizers", nargs="+", default=DEMO_SPECS, metavar="SPEC",
                        help="registry specs, e.g. adam 'nsf-fixed:p=-0.25' 'nsf:p=cyclic(0,0.5,cycles=2)' "
                             "(a cycle stated per run spans the demo's run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar within a row")
    parser.set_defaults(func=run)

"""Benchmark tasks: dataset + model + budget + LR schedule + evaluation cadence.

Every optimizer in a comparison gets the same task, hence the same LR *shape* (linear warm-up then cosine
decay to zero); only the base LR differs (tuned per optimizer on the validation split).  A budget fraction
``f`` compresses the whole run (steps, LR schedule, p cycles stated per run and evaluation grid) to ``f`` of the
full number of steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str                       # key of data.LOADERS
    model: str                         # key for models.build
    epochs: float                      # full budget, in epochs (text: in nominal epochs of `steps_per_epoch`)
    batch_size: int
    model_kw: dict = field(default_factory=dict)
    warmup: float = 0.05               # fraction of the run spent in linear warm-up
    val_frac: float = 0.1              # validation split carved from the training set
    early_evals_per_epoch: int = 4     # evaluation cadence during the first `early_epochs`
    early_epochs: float = 2.0
    evals_per_epoch: int = 1           # cadence afterwards
    steps_per_epoch: int | None = None  # text tasks: nominal epoch length (steps)
    seq_len: int = 64                  # text tasks
    eval_windows: int = 128            # text tasks: number of evaluation windows (validation split)
    # Optional fields, left out of ``to_dict`` while None so that older tasks keep their run ids.
    test_windows: int | None = None    # text tasks: evaluation windows on the test split (default eval_windows)
    train_subset: int | None = None    # a fixed seeded subset of the training rows (after the validation carve)
    augment: dict | None = None        # kwargs of augment.random_crop, applied to training batches only

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not (k in _OPTIONAL and v is None)}

    def windows(self, split: str) -> int:
        """Number of evaluation windows of a text task on ``split`` ("val" or "test")."""
        return self.test_windows if split == "test" and self.test_windows else self.eval_windows

    def total_steps(self, n_train: int, budget: float = 1.0) -> int:
        return max(1, int(round(self.epochs * self.epoch_steps(n_train) * budget)))

    def epoch_steps(self, n_train: int) -> int:
        return self.steps_per_epoch or max(1, n_train // self.batch_size)


_OPTIONAL = ("test_windows", "train_subset", "augment")


def lr_lambda(total_steps: int, warmup: float):
    """Linear warm-up over ``warmup`` of the run, then cosine to zero (multiplier of the base LR)."""
    w = max(1, int(round(warmup * total_steps)))

    def f(step: int) -> float:  # LambdaLR passes the number of steps taken so far
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total_steps - w))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return f


def eval_steps(task: Task, epoch_steps: int, total: int, budget: float = 1.0) -> list[int]:
    """Steps after which to evaluate: dense early (several per epoch), then per epoch, always the last step.

    The grid is defined in *compressed* epochs (an epoch of a budget-``f`` run is ``f * epoch_steps``), so a
    run at budget f is evaluated at the same fractions of its run as the full run.
    """
    e = epoch_steps * budget
    pts = set()
    k = 1
    while True:
        x = k * e / task.early_evals_per_epoch
        if x > task.early_epochs * e + 1e-9 or x > total:
            break
        pts.add(int(round(x)))
        k += 1
    k = 1
    while k * e / task.evals_per_epoch <= total + 1e-9:
        pts.add(int(round(k * e / task.evals_per_epoch)))
        k += 1
    pts.add(total)
    return sorted(p for p in pts if 1 <= p <= total)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("digits-mlp", "digits", "mlp", epochs=20, batch_size=64, model_kw={"hidden": [128]}),
    Task("mnist1d-mlp", "mnist1d", "mlp", epochs=30, batch_size=128, model_kw={"hidden": [256, 256]},
         early_epochs=2, evals_per_epoch=1),
    Task("mnist1d-cnn", "mnist1d", "cnn1d", epochs=30, batch_size=128, model_kw={"width": 32}),
    Task("fashion-mlp", "fashion-mnist", "mlp", epochs=2, batch_size=128, model_kw={"hidden": [256]},
         early_evals_per_epoch=8, evals_per_epoch=4),
    Task("fashion-cnn", "fashion-mnist", "cnn2d", epochs=2, batch_size=128, model_kw={"widths": [8, 16], "hidden": 64},
         early_evals_per_epoch=8, evals_per_epoch=4),
    Task("mnist-cnn", "mnist", "cnn2d", epochs=1, batch_size=128, model_kw={"widths": [8, 16], "hidden": 64},
         early_evals_per_epoch=8, evals_per_epoch=8),
    Task("shakespeare-gru", "shakespeare", "chargru", epochs=5, batch_size=32, steps_per_epoch=50,
         model_kw={"emb": 32, "hidden": 128}, seq_len=64, eval_windows=128, early_evals_per_epoch=2,
         early_epochs=1),
    # The paper's regime at CPU size (issue #9, stage 2): a residual CNN with batch norm and random-crop
    # augmentation on 10 240 Fashion-MNIST training images (validation: 10 % of the full training set, carved
    # first; test: the full 10 000), and a pre-LN decoder-only character transformer on Shakespeare.
    Task("fashion-resnet", "fashion-mnist", "resnet", epochs=4, batch_size=128, train_subset=10240,
         model_kw={"widths": [8, 16, 32], "blocks": 1, "stem_stride": 2}, augment={"pad": 2},
         early_evals_per_epoch=4, early_epochs=1),
    Task("shakespeare-charlm", "shakespeare", "charlm", epochs=5, batch_size=32, steps_per_epoch=60,
         model_kw={"d_model": 64, "n_layers": 2, "n_heads": 4, "context": 64}, seq_len=64, eval_windows=128,
         test_windows=256, early_evals_per_epoch=4, early_epochs=1),
    # Evidence v3 (issue 23, docs/evidence_v3.md): sized to converge within the budget (piloted first).
    Task("fashion-mlp-long", "fashion-mnist", "mlp", epochs=8, batch_size=128, model_kw={"hidden": [256]},
         early_evals_per_epoch=4, early_epochs=2, evals_per_epoch=2),
    Task("fashion-resnet-20k", "fashion-mnist", "resnet", epochs=30, batch_size=128, train_subset=20480,
         model_kw={"widths": [8, 16, 32], "blocks": 1, "stem_stride": 2}, augment={"pad": 2},
         early_evals_per_epoch=2, early_epochs=6),
    Task("shakespeare-charlm-2k", "shakespeare", "charlm", epochs=20, batch_size=32, steps_per_epoch=100,
         model_kw={"d_model": 64, "n_layers": 2, "n_heads": 4, "context": 64}, seq_len=64, warmup=0.1,
         eval_windows=256, test_windows=512, early_evals_per_epoch=2, early_epochs=4),
    # Tiny variants for the smoke / quick suites and the tests.
    Task("digits-mlp-tiny", "digits", "mlp", epochs=3, batch_size=64, model_kw={"hidden": [32]},
         early_evals_per_epoch=2, early_epochs=1),
    Task("mnist1d-mlp-short", "mnist1d", "mlp", epochs=10, batch_size=128, model_kw={"hidden": [128, 128]}),
    Task("fashion-mlp-short", "fashion-mnist", "mlp", epochs=1, batch_size=256, model_kw={"hidden": [128]},
         early_evals_per_epoch=8, early_epochs=1),
    Task("shakespeare-gru-short", "shakespeare", "chargru", epochs=3, batch_size=32, steps_per_epoch=40,
         model_kw={"emb": 32, "hidden": 96}, seq_len=48, eval_windows=64, early_evals_per_epoch=2,
         early_epochs=1),
    Task("fashion-resnet-short", "fashion-mnist", "resnet", epochs=1, batch_size=32, train_subset=256,
         model_kw={"widths": [4, 8], "blocks": 1, "stem_stride": 2}, augment={"pad": 2}, early_evals_per_epoch=2,
         early_epochs=1),
    Task("shakespeare-charlm-short", "shakespeare", "charlm", epochs=2, batch_size=8, steps_per_epoch=4,
         model_kw={"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 32}, seq_len=32, eval_windows=16,
         test_windows=32, early_evals_per_epoch=2, early_epochs=1),
]}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None

"""NSF with the Hugging Face ``Trainer``, either way it takes a custom optimizer:

* ``--via optimizers``  build NSF and its LR schedule yourself: ``Trainer(..., optimizers=(opt, scheduler))``;
* ``--via cls``         let the Trainer build it: ``Trainer(..., optimizer_cls_and_kwargs=(nsf.NSF, kwargs))``
  (the Trainer adds the LR schedule ``TrainingArguments`` names; give ``lr`` in the kwargs, it is not filled in).

p follows NSF's own schedule (``p=`` a ``nsf.schedules`` schedule, saved in the optimizer's state dict), because
the Trainer steps exactly one scheduler, the LR one. Any ``nn.Module`` that returns ``{"loss": ...}`` trains;
a ``PreTrainedModel`` works the same. Tiny synthetic classification, CPU, a few seconds:

    python examples/hf_trainer_recipe.py --steps 100 --via cls
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup

import nsf

P_CYCLE = nsf.schedules.Cyclic(-0.25, 0.5, period=50, shape="cosine")


class Data(torch.utils.data.Dataset):
    """Gaussian blobs: the label is the nearest of four centres."""

    def __init__(self, n: int = 512):
        g = torch.Generator().manual_seed(0)
        self.centres = 2 * torch.randn(4, 16, generator=g)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.x = self.centres[self.labels] + torch.randn(n, 16, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.labels[i]}


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


def main(argv=None) -> tuple[Trainer, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--via", choices=["optimizers", "cls"], default="optimizers")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Classifier()
    options = dict(lr=args.lr, p=P_CYCLE, scale="adam", weight_decay=1e-4, decoupled_weight_decay=True)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=32, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=args.steps // 10, logging_steps=max(1, args.steps // 10),
            save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
        if args.via == "optimizers":
            opt = nsf.NSF(model.parameters(), **options)
            schedule = get_cosine_schedule_with_warmup(opt, args.steps // 10, args.steps)
            trainer = Trainer(model=model, args=training, train_dataset=Data(), optimizers=(opt, schedule))
        else:
            trainer = Trainer(model=model, args=training, train_dataset=Data(),
                              optimizer_cls_and_kwargs=(nsf.NSF, options))
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {trainer.state.global_step} steps ({args.via}); "
          f"p now {float(trainer.optimizer.param_groups[0]['p']):+.3f}")
    return trainer, losses


if __name__ == "__main__":
    main()

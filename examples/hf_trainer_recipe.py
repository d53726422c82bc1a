"""NSF with the Hugging Face ``Trainer``: the library default for the run, its p cycle stated per run (two cycles
in the run's optimizer steps), either way the Trainer takes a custom optimizer:

* ``--via trainer``     let the Trainer build it, with the step count it computes (from ``max_steps`` or from
  epochs × batches): a ``Trainer`` subclass whose ``create_optimizer`` builds NSF (:class:`NSFTrainer`); the
  Trainer adds its parameter groups and the LR schedule ``TrainingArguments`` names;
* ``--via optimizers``  build NSF and its LR schedule yourself for a run of known length:
  ``Trainer(..., optimizers=(opt, scheduler))``.

p follows NSF's own schedule (saved in the optimizer's state dict), because the Trainer steps exactly one
scheduler, the LR one. Any ``nn.Module`` that returns ``{"loss": ...}`` trains; a ``PreTrainedModel`` works the
same. Tiny synthetic classification, CPU, a few seconds:

    python examples/hf_trainer_recipe.py --steps 100 --via trainer
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup

import nsf

OPTIONS = dict(decoupled_weight_decay=True)  # with the Trainer's weight decay: AdamW's form


class NSFTrainer(Trainer):
    """A Trainer whose optimizer is NSF with its p cycle fitted to the run the Trainer computed
    (``state.max_steps``); the Trainer still builds the parameter groups (no weight decay on biases and norms)
    and the LR schedule."""

    def create_optimizer(self, model=None):
        run = dict(lr=self.args.learning_rate, total_steps=self.state.max_steps)  # the default: 2 p cycles per run
        self.optimizer_cls_and_kwargs = (nsf.NSF, dict(**run, **OPTIONS))
        return super().create_optimizer(model)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.state.max_steps = num_training_steps  # transformers 4.x builds the optimizer here, before its state
        super().create_optimizer_and_scheduler(num_training_steps)


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
    parser.add_argument("--via", choices=["trainer", "optimizers"], default="trainer")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Classifier()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=32, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=args.steps // 10, logging_steps=max(1, args.steps // 10),
            weight_decay=1e-4, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
        if args.via == "optimizers":
            opt = nsf.NSF(model.parameters(), lr=args.lr, total_steps=args.steps, weight_decay=1e-4, **OPTIONS)
            schedule = get_cosine_schedule_with_warmup(opt, args.steps // 10, args.steps)
            trainer = Trainer(model=model, args=training, train_dataset=Data(), optimizers=(opt, schedule))
        else:
            trainer = NSFTrainer(model=model, args=training, train_dataset=Data())
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {trainer.state.global_step} steps ({args.via}); "
          f"p now {float(trainer.optimizer.param_groups[0]['p']):+.3f}")
    return trainer, losses


if __name__ == "__main__":
    main()

"""NSF in PyTorch Lightning: ``configure_optimizers`` returns the library default for this run, whose p cycle is
stated per run (two cycles in ``trainer.estimated_stepping_batches`` steps), with a torch cosine schedule on the
learning rate stepped every step.

p is NSF's own schedule (stepped by ``opt.step()``, saved in the optimizer's state dict, hence in Lightning
checkpoints), so Lightning steps only the LR scheduler. Tiny synthetic regression, CPU, a few seconds:

    python examples/lightning_recipe.py --steps 200
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import nsf


def data(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] - 2 * x[:, 1:2] + 0.5 * torch.sin(3 * x[:, 2:3]))


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("loss", loss, prog_bar=True)
        self.log("p", float(self.optimizers().optimizer.param_groups[0]["p"]))
        return loss

    def configure_optimizers(self):
        steps = int(self.trainer.estimated_stepping_batches)  # the run's optimizer steps, as Lightning counts them
        opt = nsf.NSF(self.parameters(), lr=self.hparams.lr, total_steps=steps)  # the default: 2 p cycles per run
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main(argv=None) -> tuple[Regressor, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Regressor(lr=args.lr)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        gradient_clip_val=1.0, callbacks=[Record()])
    trainer.fit(model, DataLoader(data(), batch_size=32, shuffle=True))
    k = max(1, len(losses) // 10)
    print(f"loss {sum(losses[:k]) / k:.4f} -> {sum(losses[-k:]) / k:.4f} over {len(losses)} steps; "
          f"p now {float(trainer.optimizers[0].param_groups[0]['p']):+.3f}")
    return model, losses


if __name__ == "__main__":
    main()

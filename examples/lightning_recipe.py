"""NSF in PyTorch Lightning: ``configure_optimizers`` returns NSF with two per-step schedulers, a torch cosine
schedule on the learning rate and an ``nsf.HyperparamScheduler`` cycling p.

Lightning only steps schedulers it recognises as torch LR schedulers, so the module overrides
``lr_scheduler_step`` to step any scheduler; both land in Lightning checkpoints through their ``state_dict``.
Tiny synthetic regression, CPU, a few seconds:

    python examples/lightning_recipe.py --steps 200
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import nsf

P_CYCLE = nsf.schedules.Cyclic(-0.25, 0.5, period=50, shape="cosine")


def data(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] - 2 * x[:, 1:2] + 0.5 * torch.sin(3 * x[:, 2:3]))


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 1e-2, max_steps: int = 200):
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
        opt = nsf.NSF(self.parameters(), lr=self.hparams.lr, scale="adam")
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_steps)
        p_cycle = nsf.HyperparamScheduler(opt, "p", P_CYCLE)  # owns p from now on
        return [opt], [{"scheduler": cosine, "interval": "step"}, {"scheduler": p_cycle, "interval": "step"}]

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step()  # torch schedulers and nsf.HyperparamScheduler alike


def main(argv=None) -> tuple[Regressor, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Regressor(lr=args.lr, max_steps=args.steps)
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

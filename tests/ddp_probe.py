"""A callback the DDP test adds through the CLI: each rank saves what it ended with."""
from pathlib import Path

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.first_batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = batch[0].detach().cpu().clone()

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.G.state_dict().items()}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        torch.save({"G": state, "g_iters": pl_module.g_iters, "first_batch": self.first_batch, "metrics": metrics,
                    "augment": pl_module.augmentation.state_dict()},
                   self.out_dir / f"rank{trainer.global_rank}.pt")

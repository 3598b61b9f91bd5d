"""Callbacks the multi-process tests add through the CLI (`--trainer.callbacks+=ddp_probe.X`)."""
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook


class GradientProbe(pl.Callback):
    """Per rank, into `out_dir/<tag>-rank<r>.pt`: the real batches and latents of the first G
    iteration, each optimiser step's gradients (first G iteration) and the floats each network's
    DistributedDataParallel all-reduced for it (counted by a communication hook), the final state
    of G, D and G_ema, and the validation metrics.

    `replay`: record files of the ranks of a multi-process run; this (single) process then trains
    on their batches and latents, concatenated in rank order, instead of its own -- the one-process
    reference of that run's first G iteration. `freeze_bn`: G's batch norm uses its running
    statistics (eval mode), so a sample's output does not depend on the rest of its batch.
    """

    def __init__(self, out_dir: str, tag: str = "run", replay: Optional[list[str]] = None, freeze_bn: bool = True):
        self.out_dir, self.tag, self.freeze_bn = Path(out_dir), tag, freeze_bn
        self.replay = replay
        self.batches, self.latents, self.steps = [], [], []
        self.floats: dict[str, int] = {}

    def setup(self, trainer, pl_module, stage):
        sample_latents, training_step = pl_module.sample_latents, pl_module.training_step
        if self.replay:
            ranks = [torch.load(path, weights_only=False) for path in self.replay]
            batches = [tuple(torch.cat(parts) for parts in zip(*group)) for group in zip(*(r["batches"] for r in ranks))]
            latents = [tuple(torch.cat(parts) for parts in zip(*group)) for group in zip(*(r["latents"] for r in ranks))]
            pl_module.training_step = lambda batch, batch_idx: training_step(batches.pop(0), batch_idx)
            # Validation at the end draws its own.
            pl_module.sample_latents = lambda batch_size: latents.pop(0) if latents else sample_latents(batch_size)
            return

        def recorded_latents(batch_size):
            z, y = sample_latents(batch_size)
            if pl_module.g_iters == 0:
                self.latents.append((z.clone(), y.clone()))
            return z, y

        pl_module.sample_latents = recorded_latents

    def on_train_start(self, trainer, pl_module):
        for name, replica in pl_module.replicas.items():
            replica.register_comm_hook(name, self.counting_hook)

    def counting_hook(self, name, bucket):
        self.floats[name] = self.floats.get(name, 0) + bucket.buffer().numel()
        return allreduce_hook(None, bucket)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.freeze_bn:
            for m in pl_module.G.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if pl_module.g_iters == 0 and not self.replay:
            self.batches.append(tuple(t.clone() for t in batch))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        network = ("G", "D")[trainer.optimizers.index(optimizer)]
        net = getattr(pl_module, network)
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None} if pl_module.g_iters == 0 else None
        self.steps.append({"network": network, "g_iters": pl_module.g_iters, "floats": dict(self.floats), "grads": grads})
        self.floats = {}

    def on_train_end(self, trainer, pl_module):
        state = {f"{net}.{k}": v.detach().cpu().clone()
                 for net in ("G", "D", "G_ema") for k, v in getattr(pl_module, net).state_dict().items()}
        torch.save({
            "batches": self.batches, "latents": self.latents, "steps": self.steps, "state": state,
            "g_iters": pl_module.g_iters, "augment": pl_module.augmentation.state_dict(), "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "sizes": {net: sum(p.numel() for p in getattr(pl_module, net).parameters()) for net in ("G", "D")},
        }, self.out_dir / f"{self.tag}-rank{trainer.global_rank}.pt")

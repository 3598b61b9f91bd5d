"""Callbacks that work in G iterations: sample grids, run summary, the final checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torchvision.utils import make_grid, save_image


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return (images.float().clamp(-1, 1) + 1) / 2


class SampleGrid(pl.Callback):
    """Every `loop.sample_every` G iterations: G and G_ema on fixed z, with the eval attention.

    Written to TensorBoard (`samples/G_<kind>`, `samples/G_ema_<kind>`) and as PNGs under
    `<run dir>/samples/`, so a run can be watched without TensorBoard.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._last = -1

    def on_train_start(self, trainer, pl_module):
        # A resumed run has written this iteration's grid already (before its checkpoint).
        self._last = pl_module.g_iters

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        g_iters = pl_module.g_iters
        if g_iters == 0 or g_iters == self._last or g_iters % pl_module.loop_cfg.sample_every:
            return
        self._last = g_iters
        self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if pl_module.g_iters != self._last:
            self.write(trainer, pl_module)

    def write(self, trainer, pl_module):
        tag = pl_module.kind_tag(pl_module.schedule.eval)
        nrow = max(1, int(pl_module.loop_cfg.n_samples**0.5))
        for name, use_ema in (("G", False), ("G_ema", True)):
            grid = make_grid(to_unit_range(pl_module.sample_grid_images(use_ema)), nrow=nrow)
            if not trainer.is_global_zero:
                continue
            for logger in trainer.loggers:
                if hasattr(logger.experiment, "add_image"):
                    logger.experiment.add_image(f"samples/{name}_{tag}", grid, pl_module.g_iters)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_image(grid, self.out_dir / f"{name}_{pl_module.g_iters:07d}.png")


def describe_metrics(pl_module) -> str:
    m = pl_module.metrics_cfg
    if not m.enabled:
        return "metrics: off (model.metrics.enabled=false)"
    names = [n for n, on in (("FID", m.fid), ("IS", m.isc), ("KID", m.kid)) if on]
    kinds = [pl_module.kind_tag(cfg) for cfg in pl_module.evaluated_attentions()]
    return (f"metrics: {'/'.join(names)} of {m.n_samples} G_ema samples ({' and '.join(kinds)} attention) "
            f"every {pl_module.loop_cfg.val_every} G iterations")


class RunSummary(pl.Callback):
    """Prints where attention sits, its kinds and sizes, and where outputs go, at the start."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer, pl_module):
        from biggan_smyrf.models import model_summary

        schedule = pl_module.schedule
        lines = [
            model_summary(pl_module.G, pl_module.D),
            f"attention schedule: train={schedule.train.describe() if schedule.train else 'as built'}, "
            f"eval={schedule.eval.describe() if schedule.eval else 'as built'}"
            + (f", compared with {schedule.compare.describe()}" if schedule.compare else ""),
            describe_metrics(pl_module),
            f"run directory: {self.run_dir} (last.ckpt, samples/, TensorBoard logs in tb/)",
        ]
        rank_zero_info("\n".join(lines))
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("run/summary", "\n\n".join(f"    {l}" for l in "\n".join(lines).splitlines()))


    def on_fit_end(self, trainer, pl_module):
        rank_zero_info(
            f"finished at G iteration {pl_module.g_iters}: checkpoint {self.run_dir / 'last.ckpt'}, "
            f"sample grids in {self.run_dir / 'samples'}/, TensorBoard: tensorboard --logdir {self.run_dir / 'tb'}; "
            f"more images: python sample.py --ckpt {self.run_dir / 'last.ckpt'} --out {self.run_dir / 'samples'}"
        )


class FinalCheckpoint(pl.Callback):
    """Writes `last.ckpt` when training ends between two `ckpt_every` marks."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module):
        # A full checkpoint (optimisers, loops, callbacks) for exact resumes; written atomically.
        trainer.save_checkpoint(self.path, weights_only=False)

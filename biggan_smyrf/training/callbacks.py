"""Callbacks that work in G iterations (sample grids, run summary, the final checkpoint) and keep a
run directory clean of failed starts."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info
from torchvision.io import write_png
from torchvision.utils import make_grid

from biggan_smyrf.commands import script_command, tensorboard_command
from biggan_smyrf.inference.sampling import to_uint8
from biggan_smyrf.metrics.registry import METRICS
from biggan_smyrf.models import model_summary


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
        tag = pl_module.kind_tag("eval")
        nrow = max(1, int(pl_module.loop_cfg.n_samples**0.5))
        for name, use_ema in (("G", False), ("G_ema", True)):
            grid = make_grid(to_uint8(pl_module.sample_grid_images(use_ema)).cpu(), nrow=nrow)
            if not trainer.is_global_zero:
                continue
            for logger in trainer.loggers:
                if hasattr(logger.experiment, "add_image"):
                    logger.experiment.add_image(f"samples/{name}_{tag}", grid, pl_module.g_iters)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_png(grid, str(self.out_dir / f"{name}_{pl_module.g_iters:07d}.png"))


def describe_metrics(pl_module) -> str:
    m = pl_module.metrics_cfg
    if not m.enabled:
        return "metrics: off (model.metrics.enabled=false)"
    names = [METRICS[name].label for name in m.names]
    kinds = [pl_module.kind_tag(phase) for phase in pl_module.evaluated_phases()]
    return (f"metrics: {'/'.join(names)} of {m.n_samples} G_ema samples ({' and '.join(kinds)} attention) "
            f"every {pl_module.loop_cfg.val_every} G iterations")


def describe_phase(configs: dict) -> str:
    """One description when every G block uses the same attention, else one per block."""
    described = {name: config.describe() for name, config in configs.items()}
    if len(set(described.values())) <= 1:
        return next(iter(described.values()), "no attention")
    return ", ".join(f"{name}: {text}" for name, text in described.items())


class RunSummary(pl.Callback):
    """Prints where attention sits, its kinds and sizes, and where outputs go, at the start."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer, pl_module):
        lines = [
            model_summary(pl_module.G, pl_module.D),
            "attention schedule: " + "; ".join(
                f"{phase}={describe_phase(pl_module.phase_configs[phase])}" for phase in pl_module.phase_configs),
            describe_metrics(pl_module),
            f"run directory: {self.run_dir} (last.ckpt, samples/, TensorBoard logs in tb/)",
        ]
        rank_zero_info("\n".join(lines))
        for logger in trainer.loggers if trainer.is_global_zero else []:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("run/summary", "\n\n".join(f"    {line}" for line in "\n".join(lines).splitlines()))


    def on_fit_end(self, trainer, pl_module):
        # Spelled with this interpreter's path: after the README's set-up a bare `python` lacks torch.
        more_images = script_command("sample.py", "--ckpt", self.run_dir / "last.ckpt", "--out", self.run_dir / "samples")
        rank_zero_info(
            f"finished at G iteration {pl_module.g_iters}: checkpoint {self.run_dir / 'last.ckpt'}, "
            f"sample grids in {self.run_dir / 'samples'}/, TensorBoard: {tensorboard_command(self.run_dir / 'tb')}; "
            f"more images: {more_images}"
        )


class GIterationProgressBar(TQDMProgressBar):
    """One bar over the whole run in G iterations (`12/300 G it`), the unit of every length here.

    Lightning's bar counts batches per epoch, and a run bounded by G iterations has no epoch count
    (Lightning's rich bar shows "Epoch 14/-2"); one G iteration takes num_d_steps * accumulate batches.
    """

    TRAIN_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} G it [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=pl_module.loop_cfg.max_g_iters)
        bar.bar_format, bar.unit = self.TRAIN_BAR_FORMAT, "G it"
        bar.n = bar.initial = pl_module.g_iters  # a resumed run starts where it stopped
        bar.set_description("training")

    def on_train_epoch_start(self, trainer, *_):
        pass  # one bar for the whole run: epochs are not reset

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        if bar.n != pl_module.g_iters and self._should_update(pl_module.g_iters, bar.total):
            bar.n = pl_module.g_iters
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run directory names the run
        return metrics


class FinalCheckpoint(pl.Callback):
    """Writes `last.ckpt` when training ends between two `ckpt_every` marks."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module):
        # A full checkpoint (optimisers, loops, callbacks) for exact resumes; written atomically.
        trainer.save_checkpoint(self.path, weights_only=False)


class SaveConfigWhenTraining(SaveConfigCallback):
    """LightningCLI's config.yaml, written when training starts rather than at setup: a start that
    fails (data, weights, devices) leaves the config of the run it tried to resume as it was."""

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module):
        super().setup(trainer, pl_module, "fit")


class CleanFailedStart(pl.Callback):
    """Removes what a start that fails before training wrote into the run directory (Lightning makes
    its logger, hence the folder and an event file, before the data and model are set up): the
    folder of a new run, or the new files of a resumed one. Existing files are never touched."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.existed = self.run_dir.exists()
        self.before = set(self.run_dir.rglob("*")) if self.existed else set()
        self.training = False

    def on_train_start(self, trainer, pl_module):
        self.training = True

    def on_exception(self, trainer, pl_module, exception):
        if self.training or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.finalize("failed")  # closes the event file before it goes
        if not self.existed:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        new = sorted(set(self.run_dir.rglob("*")) - self.before, key=lambda p: len(p.parts), reverse=True)
        for path in new:  # deepest first: files, then the folders they emptied
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()

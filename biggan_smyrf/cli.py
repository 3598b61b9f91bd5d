"""`train.py`: LightningCLI over the BigGAN module and the image DataModule.

    python train.py --config configs/demo.yaml                   # `fit` is the default subcommand
    python train.py fit --config configs/celebahq128_smyrf.yaml --data.root /data/celeba_hq
    python train.py fit --config ... --run myrun --ckpt_path last  # resume checkpoints/myrun/last.ckpt
    python train.py validate --config ... --ckpt_path checkpoints/myrun/last.ckpt

Everything a run writes goes to checkpoints/<run>/: last.ckpt, samples/*.png, TensorBoard logs in
tb/, and the resolved config. Intervals are in G iterations (see biggan_smyrf/training/config.py),
translated here into Lightning's optimizer-step and batch counts.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO

from biggan_smyrf.data import ImageDataModule
from biggan_smyrf.training import BigGAN
from biggan_smyrf.training.callbacks import FinalCheckpoint, RunSummary, SampleGrid
from biggan_smyrf.training.checkpoint_io import AtomicCheckpointIO

SUBCOMMANDS = ("fit", "validate")
CHECKPOINT_ROOT = Path("checkpoints")


class BigGANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_argument("--run", default="default", help="run name: outputs go to checkpoints/<run>/")
        # One image size for everything: D and the data follow G's resolution.
        parser.link_arguments("model.generator.resolution", "model.discriminator.resolution")
        parser.link_arguments("model.generator.resolution", "data.resolution")

    def before_instantiate_classes(self):
        """Refuse to overwrite a run's checkpoint unless it is being resumed."""
        if self.subcommand != "fit":
            return
        cfg = self.config[self.subcommand]
        last = CHECKPOINT_ROOT / cfg["run"] / "last.ckpt"
        if last.exists() and cfg.get("ckpt_path") is None:
            raise SystemExit(
                f"error: {last} already exists. Resume it with --ckpt_path last, or start a new run "
                f"with another --run name (nothing was overwritten)."
            )

    def instantiate_trainer(self, **kwargs):
        model = self.model
        run_dir = CHECKPOINT_ROOT / self._get(self.config, "run")
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        steps_per_g = model.optimizer_steps_per_g_iter
        batches_per_g = model.optim_cfg.num_d_steps * model.optim_cfg.accumulate
        kwargs.update(
            default_root_dir=str(run_dir),
            # One training batch per D micro-step: validation every `val_every` G iterations.
            val_check_interval=model.loop_cfg.val_every * batches_per_g,
            check_val_every_n_epoch=None,
        )
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="")
        callbacks = list(trainer_cfg.get("callbacks") or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=run_dir,
                save_last=True,
                save_top_k=0,
                enable_version_counter=False,  # FinalCheckpoint writes last.ckpt too: same file, no last-v1
                every_n_train_steps=model.loop_cfg.ckpt_every * steps_per_g,
            ),
            *best_checkpoint(model, run_dir),
            FinalCheckpoint(run_dir / "last.ckpt"),
            SampleGrid(run_dir / "samples"),
            RunSummary(run_dir),
        ]
        kwargs["callbacks"] = callbacks
        kwargs["plugins"] = with_atomic_checkpoints(trainer_cfg.get("plugins"))
        return super().instantiate_trainer(**kwargs)


def with_atomic_checkpoints(plugins) -> list:
    """The trainer's plugins plus AtomicCheckpointIO, unless a CheckpointIO was chosen already."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def best_checkpoint(model, run_dir: Path) -> list[ModelCheckpoint]:
    """best-fid.ckpt: the lowest FID under the eval attention, when FID is computed."""
    if not (model.metrics_cfg.enabled and model.metrics_cfg.fid):
        return []
    return [
        ModelCheckpoint(
            dirpath=run_dir,
            filename="best-fid",
            monitor=f"val/fid_{model.kind_tag(model.schedule.eval)}",
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    ]


def main(args=None):
    # G_ema is in eval mode on purpose (see training/ema.py); Lightning warns about any eval module.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # Our checkpoints are written after a complete G iteration, weights and counters together,
    # which is exactly what a resume needs; Lightning's suggestion for manual optimisation is not.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "fit")
    if args is None:
        sys.argv[1:] = argv  # LightningCLI warns when given both args and a command line
        argv = None
    BigGANCLI(
        BigGAN,
        ImageDataModule,
        args=argv,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"max_epochs": -1, "log_every_n_steps": 1, "num_sanity_val_steps": 0},
        parser_kwargs={"default_env": False},
    )

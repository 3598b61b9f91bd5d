"""`train.py`: LightningCLI over the BigGAN module and the image DataModule.

    python train.py --config configs/demo.yaml                   # `fit` is the default subcommand
    python train.py fit --config configs/celebahq128_smyrf.yaml --data.root /data/celeba_hq
    python train.py fit --config ... --run myrun --ckpt_path last  # resume checkpoints/myrun/last.ckpt
    python train.py validate --config ... --ckpt_path checkpoints/myrun/last.ckpt

Everything a run writes goes to checkpoints/<run>/: last.ckpt, samples/*.png, TensorBoard logs in
tb/, and the resolved config. Intervals are in G iterations (see biggan_smyrf/training/config.py),
translated here into Lightning's optimizer-step and batch counts.

Bad input stops with one `error:` line saying what to change (biggan_smyrf/errors.py); `--debug`
anywhere on the command line, or BIGGAN_SMYRF_DEBUG=1, shows the traceback instead.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import torch
from lightning_fabric.accelerators import CUDAAccelerator, MPSAccelerator
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO

from biggan_smyrf.commands import script_command
from biggan_smyrf.data import ImageDataModule
from biggan_smyrf.errors import debug_requested, reported_errors
from biggan_smyrf.metrics import MissingWeightsError
from biggan_smyrf.inference.checkpoint import CheckpointError
from biggan_smyrf.parse_errors import command_line_error, one_line, option_strings
from biggan_smyrf.training import BigGAN
from biggan_smyrf.training.callbacks import (
    CleanFailedStart,
    FinalCheckpoint,
    GIterationProgressBar,
    RunSummary,
    SampleGrid,
    SaveConfigWhenTraining,
)
from biggan_smyrf.training.checkpoint_io import AtomicCheckpointIO, check_output_folder, checkpoint_bytes
from biggan_smyrf.training.init_from import check_source
from biggan_smyrf.training.preemption import StopOnSignal, requeued_slurm_job, resume_arguments
from biggan_smyrf.training.resume_options import resume_file, resume_point, resumed_model_options, stated_keys

SUBCOMMANDS = ("fit", "validate")
LIGHTNING_CKPT_KEYWORDS = ("best", "hpc")  # --ckpt_path values that Lightning resolves itself
CHECKPOINT_ROOT = Path("checkpoints")


class BigGANCLI(LightningCLI):
    resumed_g_iters = None  # the G iteration of the checkpoint being resumed

    def parse_arguments(self, parser, args):
        """A parse error becomes one line naming the option or file (see parse_errors.py), not the usage."""
        self.argv = list(sys.argv[1:] if args is None else args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            argv = self.argv
            subcommand = argv[0] if argv and argv[0] in SUBCOMMANDS else None
            hint = f"all options: {script_command('train.py', *filter(None, [subcommand]), '--help')}"
            options = option_strings(parser, subcommand)
            raise command_line_error(str(error), options, argv, hint, SUBCOMMANDS) from error
        check_init_from(self.config)

    def _parse_ckpt_path(self):
        """Resuming: the architecture from the checkpoint, the rest as stated, for a file and for
        `last` alike (training/resume_options.py). Replaces LightningCLI's, whose checkpoint
        hyper-parameters override the whole command line when the path is a file."""
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        cfg = self.config[subcommand]
        run_dir = CHECKPOINT_ROOT / cfg["run"]
        if subcommand == "fit" and cfg.get("ckpt_path") is None and requeued_slurm_job() and (run_dir / "last.ckpt").is_file():
            # The requeued job runs its script's command again: it continues the run it saved.
            cfg["ckpt_path"] = "last"
            print(f"requeued SLURM job: resuming {run_dir / 'last.ckpt'}", file=sys.stderr)
        ckpt_path = cfg.get("ckpt_path")
        if not isinstance(ckpt_path, str) or ckpt_path in LIGHTNING_CKPT_KEYWORDS or is_remote(ckpt_path):
            return  # Lightning resolves and fetches these
        path = resume_file(ckpt_path, run_dir)
        hparams, self.resumed_g_iters = resume_point(path)
        options = resumed_model_options(hparams, cfg, stated_keys(self.argv, subcommand), path)
        try:
            self.config = self.parser.parse_object({subcommand: options}, self.config)
        except ArgumentError as error:  # e.g. an option this version no longer has
            raise CheckpointError(f"{path} was written with options that do not parse here: {one_line(str(error))}") from error
        self.config[subcommand]["ckpt_path"] = str(path)

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--run", default="default", help="run name: outputs go to checkpoints/<run>/")
        parser.add_argument(
            "--tf32", type=bool, default=True,
            help="on CUDA, let float32 matmuls and convolutions use TF32 tensor cores "
                 "(torch.set_float32_matmul_precision('high')); false = full float32 (slower)")
        # One image size for everything: D and the data follow G's resolution.
        parser.link_arguments("model.generator.resolution", "model.discriminator.resolution")
        parser.link_arguments("model.generator.resolution", "data.resolution")

    def before_instantiate_classes(self):
        """Check the accelerator and set the float32 matmul precision; refuse to overwrite a run's
        checkpoint unless it is being resumed."""
        cfg = self.config[self.subcommand]
        check_accelerator(cfg["trainer"].get("accelerator"))
        set_float32_precision(cfg["tf32"], cfg["trainer"].get("accelerator"))
        trainer = cfg["trainer"]
        trainer["benchmark"] = cudnn_benchmark(trainer.get("benchmark"), trainer.get("deterministic"))
        if self.subcommand != "fit":
            return
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
        if self.subcommand == "fit":
            check_output_folder(run_dir, checkpoint_bytes(model))
        if trainer_cfg.get("logger") in (None, True):
            # A resumed run logs each G iteration after its checkpoint's again: TensorBoard drops the
            # interrupted run's points from there on (one point per scalar per G iteration).
            purge = None if self.resumed_g_iters is None else self.resumed_g_iters + 1
            kwargs["logger"] = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", purge_step=purge)
        callbacks = [CleanFailedStart(run_dir), *(trainer_cfg.get("callbacks") or [])]
        if trainer_cfg.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(GIterationProgressBar())
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
            StopOnSignal(run_dir / "last.ckpt", script_command("train.py", *resume_arguments(self.argv))),
        ]
        kwargs["callbacks"] = callbacks
        kwargs["plugins"] = with_atomic_checkpoints(trainer_cfg.get("plugins"))
        return super().instantiate_trainer(**kwargs)


def set_float32_precision(tf32: bool, accelerator) -> None:
    """TF32 on CUDA unless turned off (Lightning warns when nothing was chosen). Left alone on the
    CPU, where the setting could change results that tests pin bit for bit."""
    if accelerator in ("auto", "gpu", "cuda", None) and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32


def cudnn_benchmark(benchmark: bool | None, deterministic) -> bool:
    """Trainer(benchmark=...): cuDNN times each convolution shape once and keeps its fastest
    algorithm (BigGAN-PyTorch trains this way; a run's shapes never change). On unless chosen, and
    off in deterministic mode, whose algorithm choice it would override."""
    if benchmark is not None:
        return benchmark
    return not deterministic  # True, or "warn"


def is_remote(ckpt_path: str) -> bool:
    """A model registry or remote file: Lightning fetches it."""
    return ckpt_path.startswith("registry") or "://" in ckpt_path


def check_init_from(config) -> None:
    """A new run's model.init_from is read at the start of fit, after the data is prepared (which
    can take long the first time): a missing or foreign file is refused right after parsing. A
    resumed run does not read it."""
    if config.get("subcommand") != "fit":
        return
    cfg = config["fit"]
    init_from = cfg["model"].get("init_from") if cfg.get("model") else None
    if init_from and cfg.get("ckpt_path") is None:
        check_source(init_from)


# What each accelerator name needs, checked before Lightning's less direct errors ("No supported gpu
# backend found!", a ModuleNotFoundError for tpu). For tpu only torch_xla is checked: whether its
# devices can be used is for Lightning and torch_xla to say.
ACCELERATOR_NEEDS = {
    "gpu": (lambda: CUDAAccelerator.is_available() or MPSAccelerator.is_available(),
            "a CUDA (or Apple MPS) GPU, and none is available here"),
    "cuda": (CUDAAccelerator.is_available, "a CUDA GPU, and none is available here (torch.cuda.is_available() is False)"),
    "mps": (MPSAccelerator.is_available, "an Apple MPS device, and none is available here"),
    "tpu": (lambda: importlib.util.find_spec("torch_xla") is not None,
            "torch_xla, which is not installed (pip install torch_xla on a TPU VM)"),
}


def check_accelerator(name) -> None:
    if not isinstance(name, str) or name.lower() not in ACCELERATOR_NEEDS:
        return  # auto, cpu, or an Accelerator instance: Lightning checks those
    available, needs = ACCELERATOR_NEEDS[name.lower()]
    if not available():
        raise ValueError(
            f"--trainer.accelerator {name} needs {needs}. Use --trainer.accelerator cpu, "
            f"or auto to use an accelerator only when there is one."
        )


def with_atomic_checkpoints(plugins) -> list:
    """The trainer's plugins plus AtomicCheckpointIO, unless a CheckpointIO was chosen already."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def best_checkpoint(model, run_dir: Path) -> list[ModelCheckpoint]:
    """best-fid.ckpt: the lowest FID under the eval attention, when FID is computed."""
    if not (model.metrics_cfg.enabled and "fid" in model.metrics_cfg.names):
        return []
    return [
        ModelCheckpoint(
            dirpath=run_dir,
            filename="best-fid",
            monitor=f"val/fid_{model.kind_tag('eval')}",
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
    debug, argv = debug_requested(sys.argv[1:] if args is None else args)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "fit")
    if args is None:
        sys.argv[1:] = argv  # LightningCLI warns when given both args and a command line
        argv = None
    # Bad input ends in one `error:` line; --debug or BIGGAN_SMYRF_DEBUG=1 shows the traceback.
    with reported_errors(debug, input_error_types=(MisconfigurationException, MissingWeightsError)):
        BigGANCLI(
            BigGAN,
            ImageDataModule,
            args=argv,
            seed_everything_default=0,
            save_config_callback=SaveConfigWhenTraining,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"max_epochs": -1, "log_every_n_steps": 1, "num_sanity_val_steps": 0},
            # Errors are raised, not printed with the whole usage: parse_arguments words them.
            parser_kwargs={"default_env": False, "exit_on_error": False},
        )

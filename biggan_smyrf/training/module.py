"""The BigGAN LightningModule: hinge loss, several D steps per G step, G_ema, attention schedule,
DiffAugment.

Manual optimisation, because a GAN step is two optimisers with their own cadence. Each
`training_step` receives one real micro-batch and does one D micro-step; after `accumulate`
micro-steps D's optimiser steps, and after `num_d_steps` D steps the same training_step also does
the G update (over `accumulate` micro-batches of fresh z). Real and fake go through D in one
concatenated forward pass, so spectral norm's power iteration runs once per D step and DDP never
sees two forwards before a backward.
"""
from __future__ import annotations

import bisect
import copy
import os
import resource
import time
from contextlib import contextmanager
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.data.report import first_names
from biggan_smyrf.metrics import MetricsConfig
from biggan_smyrf.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    attention_configs,
    orthogonal_regularization,
    planned_attention,
    using_attention,
)
from biggan_smyrf.typed import coerce, plain

from .augment import D_STEP, G_STEP, Augmentation
from .config import AttentionSchedule, AugmentConfig, EMAConfig, LoopConfig, OptimConfig, SpeedConfig
from .ema import make_ema, update_ema
from .evaluation import Evaluator, log_diagnostics
from .init_from import initialise_from
from .losses import gan_loss
from .state import attention_generators, gathered, restore_rank_rng_state, restore_rng_state, rng_state, split_stream
from .strategy import check_strategy


def kinds_of(configs: dict[str, AttentionConfig]) -> str:
    """'dense', 'smyrf', 'dense_smyrf' (a mixed G) or 'none': the kinds in per-block configs."""
    return "_".join(sorted({c.kind for c in configs.values()})) or "none"


def on_host(metrics: dict[str, "float | torch.Tensor"]) -> dict[str, torch.Tensor]:
    """Values to log as CPU tensors (Lightning would put Python numbers on the model's device)."""
    return {name: value if isinstance(value, torch.Tensor) else torch.tensor(float(value)) for name, value in metrics.items()}


class BigGAN(pl.LightningModule):
    """BigGAN G + D + G_ema with dense or SMYRF attention.

    Under data parallelism each rank draws its own z and labels, and the steps run G and D through
    the per-network DistributedDataParallel wrappers of `training/strategy.py` (`trained`).

    Args:
        generator, discriminator: architecture (resolution, width, where attention sits, its kind).
        optim: learning rates, Adam betas, D steps per G step, accumulation, ortho reg, GAN loss.
        ema: G_ema decay and start (in G iterations).
        attention: which attention G uses for training steps and for evaluation.
        loop: run length and intervals, in G iterations.
        metrics: FID / IS / KID at every validation (needs the Inception weights; see README).
        speed: memory format and fused Adam for the training step (see SpeedConfig).
        augment: DiffAugment of every image D sees, with an optional adaptive probability
            (see AugmentConfig); off by default.
        init_from: a train.py checkpoint whose G, D and G_ema weights a new run starts from
            (fine-tuning: fresh optimizers and counters; attention settings free, attention blocks
            may be added). Ignored when resuming. See training/init_from.py.
    """

    trained_networks = ("G", "D")  # what each optimiser steps: GANDDPStrategy wraps each apart

    def __init__(
        self,
        generator: GeneratorConfig = GeneratorConfig(),
        discriminator: DiscriminatorConfig = DiscriminatorConfig(),
        optim: OptimConfig = OptimConfig(),
        ema: EMAConfig = EMAConfig(),
        attention: AttentionSchedule = AttentionSchedule(),
        loop: LoopConfig = LoopConfig(),
        metrics: MetricsConfig = MetricsConfig(),
        speed: SpeedConfig = SpeedConfig(),
        init_from: Optional[str] = None,
        augment: AugmentConfig = AugmentConfig(),
    ):
        super().__init__()
        # From a checkpoint (load_from_checkpoint) these arrive as the plain dicts LightningCLI saved.
        generator, discriminator = coerce(GeneratorConfig, generator), coerce(DiscriminatorConfig, discriminator)
        optim, ema, loop = coerce(OptimConfig, optim), coerce(EMAConfig, ema), coerce(LoopConfig, loop)
        attention, metrics = coerce(AttentionSchedule, attention), coerce(MetricsConfig, metrics)
        speed, augment = coerce(SpeedConfig, speed), coerce(AugmentConfig, augment)
        if generator.resolution != discriminator.resolution:
            raise ValueError(
                f"generator.resolution={generator.resolution} but discriminator.resolution="
                f"{discriminator.resolution}: set both to the training image size"
            )
        self.save_hyperparameters()
        # Built in Python (not by LightningCLI, which stores its parsed config) the configs arrive as
        # dataclasses; stored as plain dicts, the checkpoints load with weights_only=True and resume.
        self.hparams.update(plain(dict(self.hparams)))
        self.automatic_optimization = False
        self.optim_cfg, self.ema_cfg, self.loop_cfg, self.speed_cfg = optim, ema, loop, speed
        self.metrics_cfg, self.evaluator = metrics, Evaluator(metrics)
        self.init_from = init_from
        self.augmentation = Augmentation(augment)

        self.gan_loss = gan_loss(optim.loss)
        self.G = Generator(generator)
        self.D = Discriminator(discriminator)
        self.built_attention = attention_configs(self.G)
        self.set_schedule(attention)
        if speed.channels_last:
            # Before G_ema copies G, so all three networks share the layout.
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = make_ema(self.G, ema.decay)
        self.register_buffer("fixed_z", torch.randn(loop.n_samples, generator.dim_z, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("fixed_y", torch.arange(loop.n_samples) % generator.n_classes)

        self.replicas: dict[str, torch.nn.Module] = {}  # per-network DDP wrappers, set by GANDDPStrategy
        self.g_iters = 0  # completed G updates: the unit of every length and interval
        self._micro_step = 0  # D micro-batches since the last G update
        self._last_log = (time.perf_counter(), 0)

    # --- attention schedule -------------------------------------------------------------------

    def set_schedule(self, schedule: AttentionSchedule) -> None:
        """Use `schedule` from now on. Every phase's per-block configs, at every G iteration where a
        scheduled phase changes, are resolved and checked against G's token counts here, not mid-run."""
        self._plans = {start: self.resolve_phases(schedule, start) for start in schedule.switch_points()}
        self.schedule, self._noted_stages = schedule, None
        kinds = {kinds_of(plan["eval"]) for plan in self._plans.values()}
        if len(kinds) > 1:
            raise ValueError(
                f"model.attention.eval: every entry must evaluate with the same kinds, got {sorted(kinds)}: metrics "
                f"are logged per kind (val/fid_dense, val/fid_smyrf); schedule sizes only, or use attention.compare"
            )

    def resolve_phases(self, schedule: AttentionSchedule, start: int) -> dict[str, dict[str, AttentionConfig]]:
        """Per phase, per block, the attention in force from G iteration `start`; a setting that does
        not fit a block names the schedule entry it came from."""
        now = schedule.at(start)
        phases = ("train", "eval") + (("compare",) if schedule.compare is not None else ())
        configs = {}
        for phase in phases:
            try:
                configs[phase] = planned_attention(
                    self.G, {name: now.config(phase, cfg) for name, cfg in self.built_attention.items()})
            except ValueError as error:
                raise ValueError(f"{schedule.describe_stage(phase, start)}: {error}") from None
        if schedule.compare is not None and kinds_of(configs["compare"]) == kinds_of(configs["eval"]):
            raise ValueError(
                f"attention.compare must be the other kind than the eval attention ({kinds_of(configs['eval'])}): "
                f"metrics are logged per kind, e.g. val/fid_dense and val/fid_smyrf"
            )
        return configs

    @property
    def phase_configs(self) -> dict[str, dict[str, AttentionConfig]]:
        """Per phase, per block, the attention in force at the current G iteration."""
        starts = sorted(self._plans)
        return self._plans[starts[bisect.bisect_right(starts, self.g_iters) - 1]]

    def note_attention_stages(self) -> None:
        """At the first G iteration of a run (or resumed run) and wherever a scheduled phase changes:
        one line and a TensorBoard text `attention/<phase>` naming the entry and what it runs."""
        stages = {phase: self.schedule.stage_index(phase, self.g_iters) for phase in ("train", "eval")}
        changed = [phase for phase in stages if self._noted_stages is None or stages[phase] != self._noted_stages[phase]]
        self._noted_stages = stages
        if not self.schedule.is_scheduled() or not changed or not self.trainer.is_global_zero:
            return
        for phase in changed:
            running = ", ".join(sorted({c.describe() for c in self.phase_configs[phase].values()}))
            text = f"from G iteration {self.g_iters}: {self.schedule.describe_stage(phase, self.g_iters)} -> {running}"
            rank_zero_info(f"attention {phase} {text}")
            for logger in self.loggers:
                if hasattr(logger.experiment, "add_text"):
                    logger.experiment.add_text(f"attention/{phase}", text, self.g_iters)

    @contextmanager
    def attention_phase(self, phase: str):
        """G and G_ema use the schedule's attention for `phase` inside the block, their built one after."""
        configs = self.phase_configs[phase]
        with using_attention(self.G, configs), using_attention(self.G_ema.module, configs):
            yield

    def kind_tag(self, phase: str) -> str:
        """'dense', 'smyrf' (or 'dense_smyrf' for a mixed G) in `phase`: the suffix of every logged metric."""
        return kinds_of(self.phase_configs[phase])

    def smyrf_blocks(self) -> dict[str, AttentionConfig]:
        """The SMYRF settings of every G attention block that runs SMYRF in some phase (for diagnostics)."""
        used = {name for configs in self.phase_configs.values() for name, c in configs.items() if c.kind == "smyrf"}
        now = self.schedule.at(self.g_iters)
        return {name: now.smyrf_settings(self.built_attention[name]) for name in sorted(used)}

    # --- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self):
        o = self.optim_cfg
        # Lightning has moved the model to its device by now; fused Adam needs CUDA parameters.
        fused = self.speed_cfg.fused_adam and self.device.type == "cuda"
        adam = dict(betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=o.lr_g, **adam)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=o.lr_d, **adam)
        return [opt_g, opt_d]

    @property
    def optimizer_steps_per_g_iter(self) -> int:
        """How far Lightning's global_step advances per G iteration."""
        return self.optim_cfg.num_d_steps + 1

    def in_layout(self, images: torch.Tensor) -> torch.Tensor:
        """Real images in the networks' memory format (NHWC with speed.channels_last)."""
        return images.contiguous(memory_format=torch.channels_last) if self.speed_cfg.channels_last else images

    def sample_latents(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(batch_size, self.G.config.dim_z, device=self.device)
        y = torch.randint(self.G.config.n_classes, (batch_size,), device=self.device)
        return z, y

    def trained(self, name: str, sync: bool = True) -> torch.nn.Module:
        """G or D, to run in a step that updates it: its DistributedDataParallel under GANDDPStrategy,
        whose backward all-reduces this network's gradients -- unless `sync` is False (DDP's no_sync,
        for accumulation micro-steps before the last) -- and the network itself elsewhere."""
        replica = self.replicas.get(name)
        if replica is None:
            return getattr(self, name)
        replica.require_backward_grad_sync = sync
        return replica

    def training_step(self, batch, batch_idx):
        real, y_real = batch
        real = self.in_layout(real)
        opt_g, opt_d = self.optimizers()
        o = self.optim_cfg
        if self._micro_step == 0:
            self.note_attention_stages()
        with self.attention_phase("train"):
            d_loss, d_real, d_fake = self.d_micro_step(real, y_real, opt_d)
            self._micro_step += 1
            g_loss = None
            if self._micro_step == o.num_d_steps * o.accumulate:
                self._micro_step = 0
                g_loss = self.g_step(real.shape[0], opt_g)
                update_ema(self.G_ema, self.G, copy=self.g_iters < self.ema_cfg.start)
                self.g_iters += 1
                self.augmentation.end_g_iteration(
                    self.g_iters, self.real_images_per_g_iter(real.shape[0]), self.all_ranks_sum)
        self.log_progress(d_loss, d_real, d_fake, g_loss, real.shape[0])
        if self.g_iters >= self.loop_cfg.max_g_iters:
            self.trainer.should_stop = True

    def d_micro_step(self, real, y_real, opt_d):
        o = self.optim_cfg
        with torch.no_grad():
            z, y_fake = self.sample_latents(real.shape[0])
            fake = self.G(z, y_fake)
        last = self._micro_step % o.accumulate == o.accumulate - 1
        self.toggle_optimizer(opt_d)
        images = self.augmented(torch.cat([real, fake]), D_STEP, self._micro_step)
        scores = self.trained("D", sync=last)(images, torch.cat([y_real, y_fake]))
        d_real, d_fake = scores.split(real.shape[0])
        self.augmentation.observe(d_real)
        loss = self.gan_loss.discriminator(d_real, d_fake)
        if o.ortho_reg > 0:
            loss = loss + o.ortho_reg * orthogonal_regularization(self.D)
        # Taken before the optimizer step: on XLA they are then outputs of the step's graph, and
        # logging them later starts no graph of its own.
        stats = loss.detach(), d_real.detach().mean(), d_fake.detach().mean()
        self.manual_backward(loss / o.accumulate)
        if last:
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_d)
        return stats

    def augmented(self, images: torch.Tensor, step: int, index: int) -> torch.Tensor:
        """Images as D sees them in training: DiffAugment'ed when model.augment.policy is set."""
        if not self.augmentation.enabled:
            return images
        return self.in_layout(self.augmentation(images, self.g_iters, step, index))

    def real_images_per_g_iter(self, batch_size: int) -> int:
        """Real images D sees in one G iteration, all ranks together."""
        o = self.optim_cfg
        return batch_size * o.num_d_steps * o.accumulate * self.trainer.world_size

    def all_ranks_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def g_step(self, batch_size, opt_g):
        o = self.optim_cfg
        self.toggle_optimizer(opt_g)
        for micro_step in range(o.accumulate):
            z, y = self.sample_latents(batch_size)
            fake = self.trained("G", sync=micro_step == o.accumulate - 1)(z, y)
            # D frozen: no gradients, no communication
            loss = self.gan_loss.generator(self.D(self.augmented(fake, G_STEP, micro_step), y))
            if o.ortho_reg > 0:
                loss = loss + o.ortho_reg * orthogonal_regularization(self.G)
            self.manual_backward(loss / o.accumulate)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_g)
        return loss.detach()

    # --- logging ------------------------------------------------------------------------------

    def log_progress(self, d_loss, d_real, d_fake, g_loss, batch_size):
        """Everything at `log_every` G iterations only, as CPU tensors: Lightning turns logged values
        (the last logged ones too) into Python numbers after every batch, which on a GPU stalls the
        step and on an XLA device (TPU) is a device->host sync in every step."""
        if g_loss is None or self.g_iters % self.loop_cfg.log_every:
            return
        d_loss, d_real, d_fake, g_loss = (value.cpu() for value in (d_loss, d_real, d_fake, g_loss))
        tag = self.kind_tag("train")
        now = time.perf_counter()
        images = self.g_iters * self.real_images_per_g_iter(batch_size)
        last_time, last_images = self._last_log
        self._last_log = (now, images)
        opt_g, opt_d = self.optimizers()
        metrics = {
            f"train/loss_d_{tag}": d_loss,
            f"train/loss_g_{tag}": g_loss,
            f"train/d_real_{tag}": d_real,
            f"train/d_fake_{tag}": d_fake,
            "train/lr_g": opt_g.param_groups[0]["lr"],
            "train/lr_d": opt_d.param_groups[0]["lr"],
            "train/real_images_per_s": (images - last_images) / max(now - last_time, 1e-9),
            **self.augmentation.metrics(),
        }
        if self.schedule.is_scheduled():  # the stage that trained the G iteration just logged
            metrics["train/attention_stage"] = self.schedule.stage_index("train", self.g_iters - 1)
        if self.device.type == "cuda":
            metrics["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        elif self.device.type == "cpu":  # the process's peak resident memory (Linux: KiB)
            metrics["train/peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.log_dict(on_host({"loss_d": d_loss, "loss_g": g_loss}), prog_bar=True, logger=False)
        # Written to the loggers here, once, at the G iteration: Lightning's own step logging would
        # write a value again at every later D micro-step until the next G update (2-5 points per
        # step in TensorBoard). `self.log` keeps them in callback_metrics for callbacks.
        self.log_dict(on_host(metrics), logger=False)
        if self.trainer.is_global_zero:
            values = {name: float(value) for name, value in metrics.items()}
            for logger in self.loggers:
                logger.log_metrics(values, step=self.g_iters)

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_grid_images(self, use_ema: bool = True) -> torch.Tensor:
        """G(fixed z) in [-1, 1] with the eval attention; G_ema by default."""
        net = self.G_ema.module if use_ema else self.G
        was_training = net.training
        net.eval()
        with self.attention_phase("eval"):
            images = net(self.fixed_z, self.fixed_y)
        net.train(was_training)
        return images

    def validation_step(self, batch, batch_idx):
        """D's view of real images and of G_ema samples under the eval attention (cheap sanity metrics)."""
        real, y_real = batch
        real = self.in_layout(real)
        tag = self.kind_tag("eval")
        with self.attention_phase("eval"):
            z, y = self.sample_latents(real.shape[0])
            fake = self.G_ema.module(z, y)
        scores = self.D(torch.cat([real, fake]), torch.cat([y_real, y]))
        d_real, d_fake = scores.split(real.shape[0])
        self.log_dict({f"val/d_real_{tag}": d_real.mean(), f"val/d_fake_{tag}": d_fake.mean()}, sync_dist=True)
        self.log("step", float(self.g_iters))

    def evaluated_phases(self) -> list[str]:
        """The eval attention and, when set, the one compared side by side."""
        return [phase for phase in ("eval", "compare") if phase in self.phase_configs]

    def setup(self, stage: str) -> None:
        warning = check_strategy(self.trainer.strategy) if stage == "fit" else None
        if warning:
            rank_zero_warn(warning)
        if self.metrics_cfg.enabled and stage in ("fit", "validate"):
            self.evaluator.check_weights()  # at start-up, not after hours of training
        self.check_classes(getattr(self.trainer, "datamodule", None))

    def check_classes(self, data) -> None:
        """Class-conditional data needs G and D with as many classes (Lightning sets the data up
        first); unconditional data trains any model, on class 0."""
        names = getattr(data, "class_names", None)
        if not names:
            return
        ours = {self.G.config.n_classes, self.D.config.n_classes}
        if ours != {len(names)}:
            raise ValueError(
                f"the data has {len(names)} classes (folders {first_names(names)}) but model.generator.n_classes="
                f"{self.G.config.n_classes} and model.discriminator.n_classes={self.D.config.n_classes}: set both "
                f"to {len(names)}"
            )

    def on_validation_epoch_end(self):
        if self.metrics_cfg.enabled:
            self.evaluator.prepare(self)
            for phase in self.evaluated_phases():
                with self.attention_phase(phase):
                    scores = self.evaluator.evaluate(self, self.G_ema.module)
                tag = self.kind_tag(phase)
                self.log_dict({f"val/{name}_{tag}": value for name, value in scores.items()})
        if self.schedule.diagnostics and self.trainer.is_global_zero:
            log_diagnostics(self, self.logger.experiment if self.logger is not None else None)
        self.log("step", float(self.g_iters))

    # --- checkpoint state ---------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint):
        rng = rng_state(attention_generators(self))
        checkpoint["biggan_smyrf"] = {
            "g_iters": self.g_iters,
            "micro_step": self._micro_step,
            "attention_stages": {phase: self.schedule.stage_index(phase, self.g_iters) for phase in ("train", "eval")},
            "rng": rng,
            "augment": self.augmentation.state_dict(),
        }
        per_rank = gathered(rng)  # every rank's own z stream, for an exact resume of all of them
        if per_rank is not None:
            checkpoint["biggan_smyrf"]["rng_ranks"] = per_rank

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("biggan_smyrf")
        if state is None:
            raise ValueError("this checkpoint was not written by biggan_smyrf's BigGAN module")
        self.g_iters = state["g_iters"]
        self._micro_step = state["micro_step"]
        self._pending_rng = state["rng"], state.get("rng_ranks")
        if "augment" in state:
            self.augmentation.load_state_dict(state["augment"])

    def on_fit_start(self):
        # A new run from another run's weights; a resumed run has its own in its checkpoint.
        if self.init_from is not None and self.trainer.ckpt_path is None:
            fresh = initialise_from(self, self.init_from)
            added = f"; new attention blocks, identity at start (gamma = 0): {', '.join(fresh)}" if fresh else ""
            rank_zero_info(f"G, D and G_ema initialised from {self.init_from}{added}")

    def on_train_start(self):
        # Lightning's seed_everything leaves the run's seed here for every DDP process.
        self.augmentation.bind(int(os.environ.get("PL_GLOBAL_SEED", 0)), self.global_rank)
        # RNG states are restored here, after Lightning's own seeding and restore, so a resumed run
        # continues the exact random stream of the interrupted one.
        pending = getattr(self, "_pending_rng", None)
        if pending is not None:
            restore_rank_rng_state(*pending, self.global_rank, attention_generators(self))
            self._pending_rng = None
        else:
            split_stream(self.global_rank)
        # A finished run resumed with the same length: training_step would run one more step
        # before it checks the length, so stop before the first one.
        if self.g_iters >= self.loop_cfg.max_g_iters:
            self.trainer.should_stop = True

    def on_validation_start(self):
        # Validation draws latents too, and it runs at G iterations that differ between an
        # interrupted run and an uninterrupted one (Lightning validates whenever a run stops), so
        # it works on a copy of the random streams and training continues as if it had not run.
        self._training_rng = rng_state(attention_generators(self))

    def on_validation_end(self):
        restore_rng_state(self._training_rng, attention_generators(self))

    # --- pickling -----------------------------------------------------------------------------

    def __reduce__(self):
        """Pickled as its hyperparameters, state dict (spectral norm's u and v included), SMYRF hash
        generators, train/eval modes and plain attributes (counters, schedule, configs); unpickled by
        building the module anew from the hyperparameters and loading the rest into it.

        PyTorch's parametrizations (spectral norm) refuse to be pickled, and process launchers pickle
        the LightningModule (Lightning's XLA launcher: torch_xla's spawn). Hooks added to the module
        after construction are not carried; DDP wrappers (`replicas`) neither: a strategy sets them
        in each process."""
        return _pickled(self)

    def __deepcopy__(self, memo):
        # Python's default deep copy (copy.deepcopy would otherwise go through __reduce__): it keeps
        # hooks and anything set after construction, and parametrized layers copy themselves.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new


# --- pickling ---------------------------------------------------------------------------------

# nn.Module's own bookkeeping (submodules, parameters, buffers, hooks, train mode): rebuilt by the
# constructor, so a pickle does not carry it.
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__)


def _pickled(module: BigGAN) -> tuple:
    """`BigGAN.__reduce__`: (rebuild, args, state, ..., set state)."""
    attributes = {k: v for k, v in module.__getstate__().items() if k not in _MODULE_INTERNALS}
    attributes["replicas"] = {}  # DDP wrappers belong to one process group; a strategy sets new ones
    state = {
        "state_dict": {name: value.detach().cpu() for name, value in module.state_dict().items()},
        "attributes": attributes,
        "modes": {name: m.training for name, m in module.named_modules()},
        "generators": {name: g.get_state() for name, g in attention_generators(module).items()},
        "device": module.device,
    }
    return _rebuilt, (type(module), dict(module.hparams)), state, None, None, _restored


def _rebuilt(cls: type, hparams: dict) -> BigGAN:
    # The constructor draws initial weights (overwritten at once): the unpickling process keeps its
    # random stream, and they are drawn on one thread, because a process forked after its parent used
    # OpenMP threads (Lightning's XLA launcher forks) spins forever in its first parallel region.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return cls(**hparams)
    finally:
        torch.set_num_threads(threads)


def _restored(module: BigGAN, state: dict) -> BigGAN:
    module.load_state_dict(state["state_dict"], strict=True)
    module.__dict__.update(state["attributes"])
    for name, m in module.named_modules():
        m.training = state["modes"][name]
    for name, generator in attention_generators(module).items():
        generator.set_state(state["generators"][name])
    if state["device"].type != "cpu":
        module.to(state["device"])
    return module

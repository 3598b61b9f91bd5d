"""Typed training options. LightningCLI reads these dataclasses straight from the YAML configs.

Every length and interval here counts **G iterations**: one G iteration is `num_d_steps` D updates
(each over `accumulate` micro-batches) followed by one G update. Lightning's `global_step` counts
optimizer steps of both networks, `num_d_steps + 1` per G iteration, so it is never used for
lengths directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from biggan_smyrf.attention import AttentionSchedule

from .diffaugment import AUGMENT_OPS, AugmentOp
from .losses import LossName, gan_loss

__all__ = ["AttentionSchedule", "AugmentConfig", "EMAConfig", "LoopConfig", "OptimConfig", "SpeedConfig"]


@dataclass
class OptimConfig:
    """Adam and the GAN loss for both networks. Defaults: the SMYRF paper's CelebA-HQ run (BigGAN settings)."""

    lr_g: float = 5e-5
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-6
    num_d_steps: int = 2
    accumulate: int = 1  # micro-batches per optimizer step, for both G and D
    ortho_reg: float = 0.0  # BigGAN's orthogonal regularisation strength (1e-4 in the paper); 0 = off
    loss: LossName = "hinge"  # hinge (BigGAN, the paper) or logistic (non-saturating); see training/losses.py

    def __post_init__(self):
        # Adam would refuse these too, but only once the data is prepared and the model built.
        for name in ("lr_g", "lr_d", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.num_d_steps < 1 or self.accumulate < 1:
            raise ValueError(f"num_d_steps and accumulate must be >= 1, got {self.num_d_steps}, {self.accumulate}")
        gan_loss(self.loss)  # fails with the valid names


@dataclass
class EMAConfig:
    """Exponential moving average of G (G_ema), used for samples and metrics.

    Until `start` G iterations G_ema is a plain copy of G; afterwards
    G_ema <- decay * G_ema + (1 - decay) * G after every G update (buffers included).
    """

    decay: float = 0.9999
    start: int = 1000

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass
class LoopConfig:
    """Run length and intervals, all in G iterations."""

    max_g_iters: int = 100_000
    log_every: int = 50
    sample_every: int = 1000  # fixed-z sample grids of G and G_ema in TensorBoard
    ckpt_every: int = 1000  # checkpoints/<run>/last.ckpt
    val_every: int = 1000  # validation loop (metrics, best checkpoint)
    n_samples: int = 16  # images in each sample grid

    def __post_init__(self):
        for name in ("max_g_iters", "log_every", "sample_every", "ckpt_every", "val_every", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"loop.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SpeedConfig:
    """How the training step runs on the device; none of these changes the model's maths beyond
    rounding, and checkpoints are the same either way (they can be switched on a resumed run).

    channels_last: G, D, G_ema and the real images in NHWC memory format, the layout cuDNN's
        tensor-core convolutions work in (in NCHW, half-precision convolutions may be wrapped in
        layout transposes). Weights are still saved as ordinary tensors.
    fused_adam: Adam's fused CUDA kernel (one launch for all of a network's parameters instead of
        a few per parameter group and op); only where the parameters are on CUDA.
    """

    channels_last: bool = False
    fused_adam: bool = True


@dataclass
class AugmentConfig:
    """Differentiable augmentation (DiffAugment) of every image D sees, real and fake, in D and G
    steps, with an optional adaptive probability (stylegan2-ada). Off by default (empty policy).

    policy: the augmentations, applied in this order: translation (shifts up to 1/8 of the side),
        cutout (a zeroed box of half the side), color (brightness, saturation, contrast).
        DiffAugment's BigGAN (CIFAR) scripts use [translation, cutout], with all the data and 10% of it.
    p: the probability that each augmentation (each of color's three) applies to an image;
        null = 1 (DiffAugment), or 0 with adaptive (where stylegan2-ada starts).
    adaptive: tune p during training: every `interval` G iterations, r_t = the mean of
        sign(D(real)) over them (all ranks) and p += sign(r_t - target) * images / (speed_kimg * 1000),
        images = the real images D saw in them; p stays in [0, 1].
    target: the r_t that adaptive p aims at (stylegan2-ada: 0.6); above it D is overfitting.
    speed_kimg: thousands of real images over which p can move by 1 (stylegan2-ada: 500).
    interval: G iterations between adjustments of p (stylegan2-ada: 4).
    """

    policy: list[AugmentOp] = field(default_factory=list)
    p: Optional[float] = None
    adaptive: bool = False
    target: float = 0.6
    speed_kimg: float = 500.0
    interval: int = 4

    def __post_init__(self):
        self.policy = list(self.policy)
        unknown = [op for op in self.policy if op not in AUGMENT_OPS]
        if unknown or len(set(self.policy)) != len(self.policy):
            raise ValueError(f"model.augment.policy must list distinct ops of {list(AUGMENT_OPS)}, got {self.policy}")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ValueError(f"model.augment.p must be in [0, 1], got {self.p}")
        if self.adaptive and not self.policy:
            raise ValueError("model.augment.adaptive needs model.augment.policy, e.g. [translation, cutout, color]")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"model.augment.target must be in (0, 1) (a mean of signs of D(real)), got {self.target}")
        if self.speed_kimg <= 0 or self.interval < 1:
            raise ValueError(f"model.augment.speed_kimg must be > 0 and interval >= 1, got {self.speed_kimg}, {self.interval}")

    @property
    def initial_p(self) -> float:
        return self.p if self.p is not None else 0.0 if self.adaptive else 1.0

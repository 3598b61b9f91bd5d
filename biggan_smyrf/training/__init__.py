"""Training: the BigGAN LightningModule, its typed options, losses, G_ema and callbacks."""
from .config import AttentionSchedule, AugmentConfig, EMAConfig, LoopConfig, OptimConfig, SpeedConfig
from .losses import LOSSES, gan_loss
from .module import BigGAN

__all__ = ["LOSSES", "AttentionSchedule", "AugmentConfig", "BigGAN", "EMAConfig", "LoopConfig", "OptimConfig", "SpeedConfig", "gan_loss"]

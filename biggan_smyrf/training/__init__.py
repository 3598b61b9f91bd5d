"""Training: the BigGAN LightningModule, its typed options, losses, G_ema and callbacks."""
from .config import AttentionSchedule, EMAConfig, LoopConfig, OptimConfig, SpeedConfig
from .losses import LOSSES, gan_loss
from .module import BigGAN

__all__ = ["LOSSES", "AttentionSchedule", "BigGAN", "EMAConfig", "LoopConfig", "OptimConfig", "SpeedConfig", "gan_loss"]

"""Training: the BigGAN LightningModule, its typed options, losses, G_ema and callbacks."""
from .config import AttentionSchedule, AugmentConfig, EMAConfig, LoopConfig, OptimConfig, SpeedConfig
from .losses import LOSSES, gan_loss
from .module import BigGAN
from .strategy import GANDDPStrategy, GANXLAStrategy, register

register()  # `gan_ddp`, and `ddp` for --trainer.strategy ddp and for several devices with strategy auto

__all__ = ["LOSSES", "AttentionSchedule", "AugmentConfig", "BigGAN", "GANDDPStrategy", "GANXLAStrategy", "EMAConfig",
           "LoopConfig", "OptimConfig", "SpeedConfig", "gan_loss"]

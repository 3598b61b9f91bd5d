"""Training: the BigGAN LightningModule, its typed options, G_ema and callbacks."""
from .config import AttentionSchedule, EMAConfig, LoopConfig, OptimConfig
from .module import BigGAN, d_hinge_loss, g_hinge_loss

__all__ = ["AttentionSchedule", "BigGAN", "EMAConfig", "LoopConfig", "OptimConfig", "d_hinge_loss", "g_hinge_loss"]

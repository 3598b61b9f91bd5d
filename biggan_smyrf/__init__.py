"""biggan-smyrf: BigGAN with dense or SMYRF attention, interchangeable on the same weights."""
from biggan_smyrf.attention import AttentionChange, AttentionConfig
from biggan_smyrf.inference import accumulate_standing_stats, export_generator, generate, interpolate, load_generator

__all__ = ["AttentionChange", "AttentionConfig", "accumulate_standing_stats", "export_generator", "generate", "interpolate",
           "load_generator"]

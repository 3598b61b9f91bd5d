"""BigGAN G and D with self-attention blocks that swap between dense and SMYRF on the same weights."""
from .attention_block import SelfAttention
from .capture import capture_qkv
from .config import DiscriminatorConfig, GeneratorConfig, NetworkConfig
from .discriminator import Discriminator
from .generator import Generator
from .regularization import orthogonal_regularization
from .specs import RESOLUTIONS, discriminator_stages, generator_stages
from .summary import count_parameters, model_summary
from .swap import attention_blocks, attention_configs, planned_attention, restore, set_attention, using_attention

__all__ = [
    "RESOLUTIONS",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "NetworkConfig",
    "SelfAttention",
    "attention_blocks",
    "attention_configs",
    "capture_qkv",
    "count_parameters",
    "discriminator_stages",
    "generator_stages",
    "model_summary",
    "orthogonal_regularization",
    "planned_attention",
    "restore",
    "set_attention",
    "using_attention",
]

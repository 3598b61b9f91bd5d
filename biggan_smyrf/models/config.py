"""Typed architecture options for G and D, read by LightningCLI straight from the YAML configs.

G and D share everything that describes "a BigGAN network with attention somewhere"
(`NetworkConfig`); each adds only what is its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from biggan_smyrf.attention import AttentionConfig


@dataclass
class NetworkConfig:
    """Fields common to G and D.

    resolution: image size (32, 64, 128, 256 or 512).
    ch: base width; every stage is a multiple of it (96 in the SMYRF paper's CelebA-HQ run).
    n_classes: 1 for unconditional data such as CelebA-HQ.
    attention_resolutions: output resolutions of the blocks followed by self-attention,
        e.g. [128]; [] for none. Checked against the network's stages at construction.
    attention: kind and SMYRF parameters of every attention block ...
    attention_overrides: ... except those listed here by resolution, e.g. {256: {kind: smyrf, ...}}.
    sn_eps: epsilon of spectral norm's power iteration (BigGAN: 1e-6).
    """

    resolution: int = 128
    ch: int = 96
    n_classes: int = 1
    attention_resolutions: list[int] = field(default_factory=lambda: [64])
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    attention_overrides: dict[int, AttentionConfig] = field(default_factory=dict)
    sn_eps: float = 1e-6

    def __post_init__(self):
        if self.ch < 1 or self.n_classes < 1:
            raise ValueError(f"ch and n_classes must be >= 1, got ch={self.ch}, n_classes={self.n_classes}")
        unknown = set(self.attention_overrides) - set(self.attention_resolutions)
        if unknown:
            raise ValueError(
                f"attention_overrides for resolutions {sorted(unknown)} which are not in "
                f"attention_resolutions={self.attention_resolutions}"
            )

    def attention_at(self, resolution: int) -> AttentionConfig:
        return self.attention_overrides.get(resolution, self.attention)


@dataclass
class GeneratorConfig(NetworkConfig):
    """G: NetworkConfig plus the latent and conditioning options.

    dim_z: latent size. With hierarchical z it is cut into one chunk per G block plus one for the
        4x4 input, so it must be divisible by (number of blocks + 1): 120 for 32/64/128 px, 140 at 256.
    hier: hierarchical z (a chunk of z conditions each block's batch norms).
    shared_dim: size of the class embedding shared by all conditional batch norms; 0 uses a
        one-hot class vector instead (equivalent to separate per-block class embeddings).
    bn_eps: batch-norm epsilon.
    """

    dim_z: int = 120
    hier: bool = True
    shared_dim: int = 128
    bn_eps: float = 1e-5


@dataclass
class DiscriminatorConfig(NetworkConfig):
    """D: NetworkConfig as is. Class conditioning uses the projection discriminator."""

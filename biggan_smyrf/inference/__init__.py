"""Sampling from trained generators, in a few lines:

    from biggan_smyrf import load_generator, generate
    G = load_generator("checkpoints/celeba128/last.ckpt", attention="dense")
    images = generate(G, n=16, seed=0, truncation=0.7)     # uint8 (16, 3, 128, 128)
"""
from .checkpoint import CheckpointError, export_generator, load_generator, read_checkpoint
from .sampling import generate, interpolate, latents, render, slerp, to_uint8
from .standing_stats import accumulate_standing_stats

__all__ = ["CheckpointError", "accumulate_standing_stats", "export_generator", "generate", "interpolate", "latents",
           "load_generator", "read_checkpoint", "render", "slerp", "to_uint8"]

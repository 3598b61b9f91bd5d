"""Standing statistics: G's batch-norm statistics re-estimated for the latents it will be sampled with.

BigGAN samples in eval mode with running batch statistics that training accumulated at untruncated
z. Truncating z shifts every layer's activations, so those statistics no longer fit; BigGAN
(Brock et al. 2019, and BigGAN-PyTorch's `--accumulate_stats`) re-estimates them from a few
thousand samples of the latents actually used -- the standard way to sample a BigGAN with
truncation, and needed for TF-Hub ports, which ship no statistics for truncated z.

Only the batch norms run as in training, with a cumulative average (momentum None), so every
batch counts equally; spectral norm keeps its vectors (no power iteration), attention stays in
eval mode (SMYRF's hashes seeded as when sampling), no weight changes. (torch.optim.swa_utils'
`update_bn` averages the same way but puts the whole model in training mode, where our spectral
norm would run power iterations and SMYRF draw fresh hashes; and it reads a data loader, not G's
own samples.) Cost: n_batches forwards of
G without gradients.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .sampling import labels, latents

# Latents for the statistics come from indices far past any sample's, so they never repeat
# the images being drawn (see sampling.sample_rng).
STATS_INDEX = 2**61


@torch.no_grad()
def accumulate_standing_stats(generator: nn.Module, n_batches: int, batch_size: int = 64, seed: int = 0,
                              truncation: Optional[float] = None, class_id: Optional[int] = None,
                              dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Replace every batch norm's running mean and variance of `generator` (in place) by their
    averages over `n_batches` batches of its own samples: latents of `seed` (truncated to
    `truncation`), uniform classes or all `class_id`. Returns the generator, in eval mode."""
    if n_batches < 1 or batch_size < 2:
        raise ValueError(f"standing statistics need n_batches >= 1 and batch_size >= 2, got {n_batches}, {batch_size}")
    config = generator.config
    device = next(generator.parameters()).device
    n = n_batches * batch_size
    z = latents(n, config.dim_z, seed, truncation, start=STATS_INDEX)
    y = labels(n, config.n_classes, seed, class_id, start=STATS_INDEX)
    generator.eval()
    with batch_norms_averaging(generator):
        for start in range(0, n, batch_size):
            zb, yb = z[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                generator(zb, yb)
    return generator


@contextmanager
def batch_norms_averaging(network: nn.Module) -> Iterator[None]:
    """Within: the batch norms in training mode, statistics reset and averaged cumulatively; after:
    back in eval mode with their momentum, keeping the new statistics."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the generator has no batch norms: there are no statistics to re-estimate")
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()

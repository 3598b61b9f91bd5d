"""Latents, images and interpolations from a generator.

Every latent is drawn up front from one generator seeded with `seed`, and G runs in eval mode
(running BN statistics, fixed SMYRF hashes per call), so an image depends only on (seed, index,
truncation, attention) — never on the batch size or on what was sampled before.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def sample_rng(seed: int, index: int) -> torch.Generator:
    """The random stream of sample `index` under `seed` (independent of how many are drawn)."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def latents(n: int, dim_z: int, seed: int, truncation: Optional[float] = None, start: int = 0) -> torch.Tensor:
    """Latents of samples start..start+n-1; with `truncation` t, a normal truncated to [-t, t]
    (BigGAN's truncation trick)."""
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation must be > 0 (or None for no truncation), got {truncation}")
    rows = []
    for index in range(start, start + n):
        rng = sample_rng(seed, index)
        if truncation is None:
            rows.append(torch.randn(dim_z, generator=rng))
        else:
            rows.append(nn.init.trunc_normal_(torch.empty(dim_z), a=-truncation, b=truncation, generator=rng))
    return torch.stack(rows)


def labels(n: int, n_classes: int, seed: int, class_id: Optional[int] = None, start: int = 0) -> torch.Tensor:
    """Class labels of samples start..start+n-1 (uniform), or all `class_id`."""
    if class_id is not None:
        if not 0 <= class_id < n_classes:
            raise ValueError(f"class {class_id} is out of range: the model has {n_classes} classes")
        return torch.full((n,), class_id, dtype=torch.long)
    # A stream separate from the latents' (index offset by 2**62), so labels never shift z.
    draws = [torch.randint(n_classes, (1,), generator=sample_rng(seed, 2**62 + i)) for i in range(start, start + n)]
    return torch.cat(draws)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8 (the format FID tools and image files want)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def render(generator: nn.Module, z: torch.Tensor, y: torch.Tensor, batch_size: int = 32,
           progress: bool = False, dtype: Optional[torch.dtype] = None, to_cpu: bool = True) -> Iterator[torch.Tensor]:
    """G(z, y) in batches, as uint8 (B, 3, H, W); `dtype` runs under autocast. On the CPU for files,
    or (to_cpu=False) left on G's device for a feature extractor there, without a round trip."""
    device = next(generator.parameters()).device
    starts = range(0, len(z), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        zb, yb = z[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            images = to_uint8(generator(zb, yb))
        yield images.cpu() if to_cpu else images


def generate(generator: nn.Module, n: int, seed: int = 0, truncation: Optional[float] = None,
             class_id: Optional[int] = None, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """n images as a uint8 tensor (n, 3, H, W)."""
    config = generator.config
    z = latents(n, config.dim_z, seed, truncation)
    y = labels(n, config.n_classes, seed, class_id)
    return torch.cat(list(render(generator, z, y, batch_size, progress)))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation along the great circle between a and b (per row of t)."""
    a_unit, b_unit = a / a.norm(), b / b.norm()
    omega = torch.arccos((a_unit * b_unit).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def interpolate(generator: nn.Module, seed_a: int, seed_b: int, steps: int = 8, spherical: bool = False,
                truncation: Optional[float] = None, class_id: Optional[int] = None, batch_size: int = 32) -> torch.Tensor:
    """`steps` images from seed_a's sample to seed_b's (both ends included), uint8."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    config = generator.config
    a = latents(1, config.dim_z, seed_a, truncation)[0]
    b = latents(1, config.dim_z, seed_b, truncation)[0]
    t = torch.linspace(0, 1, steps)
    z = slerp(a, b, t) if spherical else torch.lerp(a[None], b[None], t[:, None])
    z[0], z[-1] = a, b  # exact endpoints, whatever the rounding of the path
    y = labels(1, config.n_classes, seed_a, class_id).expand(steps)
    return torch.cat(list(render(generator, z, y, batch_size)))

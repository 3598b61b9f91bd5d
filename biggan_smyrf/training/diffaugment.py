"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", 2020):
differentiable augmentations applied to every image D sees, real and fake, in D and G steps.

    images = diff_augment(images, ["color", "translation", "cutout"], p=1.0, generator=g)

The definitions are the reference implementation's (mit-han-lab/data-efficient-gans,
DiffAugment_pytorch.py), per image:
    color        brightness x + (u - 1/2); saturation m_c + (x - m_c) * 2u, m_c the mean over channels;
                 contrast m + (x - m) * (u + 1/2), m the image's mean; a fresh u ~ U[0, 1) for each
    translation  an integer shift in [-H/8, H/8] x [-W/8, W/8], zeros shifted in
    cutout       a zeroed H/2 x W/2 box, centred anywhere in the image (clipped at its edges)
`p` is stylegan2-ada's probability that each of these five applies to an image (1 = DiffAugment);
a skipped one is the identity (shift 0, factor 1, no box), so the batch is never split.

Every op is one batched tensor expression over the whole batch on the images' device (no
per-image loop): O(B*C*H*W) time and memory, a few element-wise passes of the images. Random
parameters come from `generator` only, so a run decides them from its seed (see augment.py).
"""
from __future__ import annotations

import typing
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

AugmentOp = Literal["translation", "cutout", "color"]
AUGMENT_OPS: tuple[str, ...] = typing.get_args(AugmentOp)
TRANSLATION_RATIO = 1 / 8  # of the side: the largest shift
CUTOUT_RATIO = 1 / 2  # of the side: the box


def translate(x: torch.Tensor, shift_h: torch.Tensor, shift_w: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i + shift_h[b], j + shift_w[b]], zero outside the image."""
    b, _, h, w = x.shape
    padded = F.pad(x, [1, 1, 1, 1])  # a zero border that out-of-image reads are clamped onto
    rows = (torch.arange(h, device=x.device) + shift_h[:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + shift_w[:, None] + 1).clamp(0, w + 1)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout_mask(shape: torch.Size, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int],
                dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, H, W): 0 inside the box of `size` at (top, left) per image (clipped to the image), 1 elsewhere."""
    _, _, h, w = shape
    rows = torch.arange(h, device=top.device)[None, :] - top[:, None]
    cols = torch.arange(w, device=top.device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[:, None, :]
    return (~inside).to(dtype)[:, None]


def brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x + (u - 0.5).view(-1, 1, 1, 1)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * factor.view(-1, 1, 1, 1) + mean


def half_up(side: int, ratio: float) -> int:
    return int(side * ratio + 0.5)


class _Draws:
    """Per-image random parameters from one generator, on the images' device."""

    def __init__(self, x: torch.Tensor, p: float, generator: torch.Generator):
        self.n, self.device, self.p, self.generator = x.shape[0], x.device, p, generator

    def applied(self) -> torch.Tensor:
        """Which images the next op applies to (all when p = 1: nothing drawn)."""
        if self.p >= 1:
            return torch.ones(self.n, dtype=torch.bool, device=self.device)
        return self.uniform() < self.p

    # Drawn where the generator lives: the images' device, or the CPU for a device without
    # generators of its own (XLA), then moved (B numbers).
    def uniform(self) -> torch.Tensor:
        return torch.rand(self.n, device=self.generator.device, generator=self.generator).to(self.device)

    def integers(self, low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high, (self.n,), device=self.generator.device, generator=self.generator).to(self.device)


def _color(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    on = draw.applied()
    x = brightness(x, torch.where(on, draw.uniform(), 0.5).to(x.dtype))
    on = draw.applied()
    x = saturation(x, torch.where(on, draw.uniform() * 2, 1.0).to(x.dtype))
    on = draw.applied()
    return contrast(x, torch.where(on, draw.uniform() + 0.5, 1.0).to(x.dtype))


def _translation(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    on = draw.applied()
    max_h, max_w = half_up(x.shape[2], TRANSLATION_RATIO), half_up(x.shape[3], TRANSLATION_RATIO)
    shift_h, shift_w = draw.integers(-max_h, max_h + 1), draw.integers(-max_w, max_w + 1)
    return translate(x, shift_h * on, shift_w * on)


def _cutout(x: torch.Tensor, draw: _Draws) -> torch.Tensor:
    on = draw.applied()
    size = half_up(x.shape[2], CUTOUT_RATIO), half_up(x.shape[3], CUTOUT_RATIO)
    # The reference's centre range: [0, H] for an even box, [0, H - 1] for an odd one.
    centre_h = draw.integers(0, x.shape[2] + 1 - size[0] % 2)
    centre_w = draw.integers(0, x.shape[3] + 1 - size[1] % 2)
    mask = cutout_mask(x.shape, centre_h - size[0] // 2, centre_w - size[1] // 2, size, x.dtype)
    return x * torch.where(on.view(-1, 1, 1, 1), mask, 1.0).to(x.dtype)


OPS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: Sequence[str], p: float, generator: torch.Generator) -> torch.Tensor:
    """x (B, C, H, W) with the ops of `policy` applied in order, each per image with probability `p`."""
    if not policy or p <= 0:
        return x
    draw = _Draws(x, p, generator)
    for name in policy:
        x = OPS[name](x, draw)
    return x

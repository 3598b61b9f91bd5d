"""GAN losses, by name (`model.loss`). D's loss takes D's scores on real and fake images, G's its
scores on fake ones; all are means over the batch.

- "hinge" (BigGAN, SAGAN and the SMYRF paper): D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],
  G: -E[D(G(z))].
- "logistic" (the non-saturating loss of Goodfellow et al. 2014, StyleGAN's default):
  D: E[softplus(-D(x))] + E[softplus(D(G(z)))], G: E[softplus(-D(G(z)))].
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

LossName = Literal["hinge", "logistic"]


def d_hinge_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def g_hinge_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


def d_logistic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def g_nonsaturating_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_fake).mean()


class GANLoss(NamedTuple):
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]


LOSSES: dict[str, GANLoss] = {
    "hinge": GANLoss(d_hinge_loss, g_hinge_loss),
    "logistic": GANLoss(d_logistic_loss, g_nonsaturating_loss),
}


def gan_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]

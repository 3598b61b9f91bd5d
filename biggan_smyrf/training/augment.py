"""DiffAugment in a training run: random streams decided by the run's seed, and the adaptive p.

Each call augments with a generator seeded from (run seed, rank, G iteration, step): no stream
state to save, a resumed run augments exactly as the uninterrupted one, and every DDP rank draws
its own parameters for its own shard. The adaptive probability follows stylegan2-ada's heuristic
(`AugmentConfig`); it and its running sign statistic are saved in the checkpoint.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .config import AugmentConfig
from .diffaugment import diff_augment

D_STEP, G_STEP = 0, 1  # which step a call augments for, part of its seed


class Augmentation:
    """The run's DiffAugment: `augmentation(images, g_iter, step, index)` -> augmented images."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.p = config.initial_p
        self.seed, self.rank = 0, 0
        self.r_t: Optional[float] = None  # the last adjustment's mean sign of D(real)
        self._signs = torch.zeros(2)  # since the last adjustment: sum of sign(D(real)), count (all ranks)
        self._iteration_signs: Optional[torch.Tensor] = None  # this G iteration's, on the device

    @property
    def enabled(self) -> bool:
        return bool(self.config.policy)

    def bind(self, seed: int, rank: int) -> None:
        """The run's seed and this process's rank: together they decide every augmentation."""
        self.seed, self.rank = seed % 2**32, rank

    def __call__(self, images: torch.Tensor, g_iter: int, step: int, index: int) -> torch.Tensor:
        if not self.enabled or self.p <= 0:
            return images
        return diff_augment(images, self.config.policy, self.p, self.generator(images.device, g_iter, step, index))

    def generator(self, device: torch.device, g_iter: int, step: int, index: int) -> torch.Generator:
        """A generator on `device` (CPU where the device has none of its own, e.g. XLA) seeded from
        the run seed, rank, G iteration, step kind and micro-step by NumPy's SeedSequence mixing."""
        key = np.random.SeedSequence([self.seed, self.rank, g_iter, step, index]).generate_state(1, np.uint64)[0]
        own = device.type in ("cpu", "cuda", "mps")
        return torch.Generator(device=device if own else "cpu").manual_seed(int(key))

    # --- adaptive p ----------------------------------------------------------------------------

    def observe(self, d_real: torch.Tensor) -> None:
        """D's scores of the (augmented) real images of one D micro-step; no host sync."""
        if not self.config.adaptive:
            return
        d_real = d_real.detach().float()
        signs = torch.stack([d_real.sign().sum(), torch.full((), float(d_real.numel()), device=d_real.device)])
        self._iteration_signs = signs if self._iteration_signs is None else self._iteration_signs + signs

    def end_g_iteration(self, g_iters: int, real_images: int, all_ranks_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After G iteration `g_iters` (completed count): add its signs summed over ranks (so every
        rank, and the checkpoint, holds the same statistic) and every `interval` iterations move p by
        sign(r_t - target) * real images in the interval / (speed_kimg * 1000)."""
        if not self.config.adaptive or self._iteration_signs is None:
            return
        self._signs = self._signs + all_ranks_sum(self._iteration_signs).cpu()
        self._iteration_signs = None
        if g_iters % self.config.interval:
            return
        c = self.config
        self.r_t = float(self._signs[0] / self._signs[1])
        step = float(np.sign(self.r_t - c.target)) * real_images * c.interval / (c.speed_kimg * 1000)
        self.p = min(max(self.p + step, 0.0), 1.0)
        self._signs = torch.zeros(2)

    def metrics(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        return {"train/augment_p": self.p, **({"train/augment_r_t": self.r_t} if self.r_t is not None else {})}

    # --- checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"p": self.p, "r_t": self.r_t, "signs": self._signs.clone()}

    def load_state_dict(self, state: dict) -> None:
        """A fixed p follows the config (it may change on resume); an adaptive one continues."""
        if self.config.adaptive:
            self.p, self.r_t, self._signs = state["p"], state["r_t"], state["signs"].clone()

"""The training sampler: a data order that depends only on (seed, epoch), resumable at any batch.

A stopped or killed run must see, after resuming, exactly the batches the uninterrupted run would
have seen. PyTorch's RandomSampler cannot promise that: it draws each epoch's permutation from the
global RNG when the epoch's iterator is created, and Lightning starts a fresh epoch when a run that
stopped mid-epoch is resumed. Here every epoch is a permutation (and one flip coin per draw) from
a generator seeded with `seed + epoch`, and each iteration starts at the run's position.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffled `(index, flip)` draws for `ImageArrayDataset`, from the run's current position on.

    Each epoch permutes the whole dataset with `torch.Generator().manual_seed(seed + epoch)`, drops
    the tail that does not divide among the ranks, and gives rank r every `num_replicas`-th draw
    from r, as DistributedSampler does; a rank's last partial batch is dropped. It is a
    DistributedSampler so that Lightning keeps it under DDP instead of wrapping it in its own.

    `position` is the number of batches of the run this rank has consumed; whoever consumes them
    advances it (`ImageDataModule` does, once per training step). An iteration yields the rest of
    the epoch that `position` is in, so one started at a resume continues mid-epoch, and one
    started at an epoch boundary yields that whole epoch. The iterators themselves do not count:
    a DataLoader draws indices ahead of the batches it delivers, and Lightning drops some iterators
    before they finish.

    Args:
        dataset: what is sampled (only its length is used).
        batch_size: images per batch on this rank; the position is counted in these batches.
        position: batches of the run consumed already (a resumed run's starting point).
        flip: draw a horizontal-flip coin per draw (else every flip is False).
    """

    def __init__(self, dataset: Dataset, batch_size: int, position: int = 0, flip: bool = False,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        if not 1 <= batch_size <= self.num_samples:
            raise ValueError(f"batch_size must be between 1 and {self.num_samples} images per rank, got {batch_size}")
        if position < 0:
            raise ValueError(f"position must be 0 or more batches, got {position}")
        self.batch_size = batch_size
        self.batches_per_epoch = self.num_samples // batch_size
        self.position = position
        self.flip = flip

    def set_epoch(self, epoch: int) -> None:
        """Ignored: Lightning counts a stop mid-epoch as a finished epoch, the data order does not.
        The epoch follows from `position`."""

    def draws(self, epoch: int) -> list[tuple[int, bool]]:
        """This rank's `(index, flip)` draws of `epoch`, in order, full batches only."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.dataset), generator=g)[: self.total_size]
        flips = torch.rand(self.total_size, generator=g) < 0.5
        flips &= self.flip
        mine = slice(self.rank, self.total_size, self.num_replicas)
        return list(zip(order[mine].tolist(), flips[mine].tolist()))[: self.batches_per_epoch * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        epoch, offset = divmod(self.position, self.batches_per_epoch)
        return iter(self.draws(epoch)[offset * self.batch_size :])

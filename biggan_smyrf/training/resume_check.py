"""What an exact resume reproduces, and a comparison of two checkpoints by it.

A run stopped or killed and resumed ends with the same training state as the uninterrupted run:
every tensor (weights, G_ema and its sample count, both optimisers, the RNG states), the step
counters and the data position. Lightning's own bookkeeping is not part of it: it counts a stop
mid-epoch as the end of an epoch (`epoch`, `loops`), and callbacks record their run directories.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

TRAINING_STATE = ("state_dict", "optimizer_states", "global_step", "biggan_smyrf", "ImageDataModule")


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every tensor, number or string inside nested dicts, lists and tuples."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from leaves(item, f"{prefix}/{i}")
    else:
        yield prefix, value


def training_state(checkpoint: dict) -> dict[str, Any]:
    return dict(leaves({key: checkpoint.get(key) for key in TRAINING_STATE}))


def same_leaf(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return a == b


def training_state_differences(a: dict, b: dict) -> list[str]:
    """Paths (e.g. `/state_dict/G.blocks.0.conv1.weight`) whose values are not bit-identical."""
    left, right = training_state(a), training_state(b)
    return sorted(path for path in left.keys() | right.keys()
                  if path not in left or path not in right or not same_leaf(left[path], right[path]))

"""Random-number state that a checkpoint must carry for an exact resume.

Lightning checkpoints weights, optimisers and loop counters but not the RNG streams; a GAN run
draws z, labels and SMYRF hash projections from them, so they are saved here too (the data order
and flips do not use them: see `biggan_smyrf/data/sampler.py`).
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def attention_generators(module: nn.Module) -> dict[str, torch.Generator]:
    """The CPU generators that SMYRF attention blocks draw hash projections from, by module name."""
    return {
        name: m.generator
        for name, m in module.named_modules()
        if isinstance(getattr(m, "generator", None), torch.Generator)
    }


def numpy_state() -> dict:
    """NumPy's global RNG state as tensors and ints, so checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_state(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state(),
        "python": random.getstate(),
        "attention": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        if name in state["attention"]:
            g.set_state(state["attention"][name])


def split_stream(rank: int) -> None:
    """Rank `rank`'s own z and label stream: every rank starts from the same seed, so rank r > 0
    reseeds torch from a draw of that stream plus r (deterministic; rank 0 keeps the stream as it
    is, so one process draws what rank 0 of several draws). Attention generators stay shared: one
    process over all ranks' batches would hash them with the same projections."""
    if rank > 0:
        torch.manual_seed(int(torch.randint(2**62, ())) + rank)


def gathered(state: dict) -> Optional[list[dict]]:
    """Every rank's `state`, in rank order, where several processes run (gloo or NCCL); else None.
    Called on every rank (as Lightning builds each checkpoint on every rank)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if dist.get_backend() not in ("gloo", "nccl"):
        return None
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rank_rng_state(saved: dict, per_rank: Optional[list[dict]], rank: int,
                           generators: dict[str, torch.Generator]) -> None:
    """This rank's streams from a checkpoint: its own state when the checkpoint has one (same number
    of processes: an exact resume); else rank 0's, split for this rank (`split_stream`)."""
    if per_rank is not None and rank < len(per_rank):
        restore_rng_state(per_rank[rank], generators)
        return
    restore_rng_state(saved, generators)
    split_stream(rank)

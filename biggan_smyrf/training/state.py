"""Random-number state that a checkpoint must carry for an exact resume.

Lightning checkpoints weights, optimisers and loop counters but not the RNG streams; a GAN run
draws z, labels and SMYRF hash projections from them, so they are saved here too (the data order
and flips do not use them: see `biggan_smyrf/data/sampler.py`).
"""
from __future__ import annotations

import random

import numpy as np
import torch
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

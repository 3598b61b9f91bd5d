"""`model.init_from`: a new run that starts from another run's weights (fine-tuning).

Resuming (`--ckpt_path`) continues a run: optimizer states, counters, data position, random
streams. `init_from` starts a new one -- fresh optimizers, G iteration 0, its own run directory and
schedule -- with G, D and G_ema taken from a train.py checkpoint, or from a BigGAN-PyTorch run
folder (G.pth, D.pth, G_ema.pth; see inference/biggan_pytorch.py). The attention kind and SMYRF
settings are free (they are not weights), and attention blocks the source lacks may be added:
a block's output is `x + gamma * o(...)` with gamma starting at 0, so a new block is the identity
when the run starts and the network draws exactly what the source drew (tested). Every other
tensor must be in the source with the same shape; anything else is an error that names it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from biggan_smyrf.inference.biggan_pytorch import biggan_pytorch_run, check_run_folder
from biggan_smyrf.inference.checkpoint import CheckpointError, check_checkpoint_file, read_checkpoint
from biggan_smyrf.models.attention_block import SelfAttention

WHAT_TO_PASS = ("model.init_from takes a train.py checkpoint (last.ckpt, best-fid.ckpt) or a BigGAN-PyTorch run folder, "
                "of a run with the same architecture")
NETWORKS = {"G": "G.", "D": "D.", "G_ema": "G_ema.module."}  # network attribute: its prefix in the checkpoint


def initialise_from(module: nn.Module, path: Union[str, Path]) -> list[str]:
    """Load G, D and G_ema of `module` (a BigGAN LightningModule) from the checkpoint or BigGAN-PyTorch
    run folder at `path`; returns the names of the attention blocks that start fresh (not in the source)."""
    if Path(path).is_dir():
        sources = biggan_pytorch_run(path, module.G.config.sn_eps, module.G.config.bn_eps)
    else:
        sources = checkpoint_weights(path)
    fresh = []
    for attribute in NETWORKS:
        network = getattr(module, attribute)
        network = network.module if attribute == "G_ema" else network
        fresh += [f"{attribute}.{name}" for name in load_matching(network, sources[attribute], attribute, path)]
    return fresh


def check_source(path: Union[str, Path]) -> None:
    """Refuse a missing or foreign source without loading it (train.py, right after parsing)."""
    if Path(path).is_dir():
        check_run_folder(path)
    else:
        check_checkpoint_file(path, WHAT_TO_PASS)


def checkpoint_weights(path: Union[str, Path]) -> dict[str, dict[str, torch.Tensor]]:
    """G, D and G_ema state dicts of a train.py checkpoint."""
    checkpoint = read_checkpoint(path, WHAT_TO_PASS)
    if "biggan_smyrf" not in checkpoint or "state_dict" not in checkpoint:
        what = "an exported generator (no D)" if "format" in checkpoint else "not a train.py checkpoint"
        raise CheckpointError(f"{path} is {what}; {WHAT_TO_PASS}")
    state = checkpoint["state_dict"]
    return {name: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} for name, prefix in NETWORKS.items()}


def load_matching(network: nn.Module, source: dict[str, torch.Tensor], label: str, path) -> list[str]:
    """Copy `source` into `network`: every source tensor must fit by name and shape, and every
    tensor of the network must come from it, except whole attention blocks (their names returned)."""
    target = network.state_dict()
    left = sorted(set(source) - set(target))
    if left:
        raise CheckpointError(
            f"{path}: its {label} has tensors this run's {label} lacks, e.g. {left[:3]}: the architecture differs "
            f"(model.generator / model.discriminator must match the source run's, except attention settings "
            f"and added attention blocks); {WHAT_TO_PASS}"
        )
    for name, tensor in source.items():
        if tensor.shape != target[name].shape:
            raise CheckpointError(
                f"{path}: {label}.{name} is {tuple(tensor.shape)} there but {tuple(target[name].shape)} in this run "
                f"(a different width, resolution, class count or z size?); {WHAT_TO_PASS}"
            )
    blocks = [name for name, m in network.named_modules() if isinstance(m, SelfAttention)]
    new_blocks = [b for b in blocks if not any(k.startswith(b + ".") for k in source)]
    missing = [k for k in set(target) - set(source) if not any(k.startswith(b + ".") for b in new_blocks)]
    if missing:
        raise CheckpointError(f"{path}: its {label} lacks {sorted(missing)[:3]}; {WHAT_TO_PASS}")
    network.load_state_dict({**target, **source}, strict=True)
    return new_blocks

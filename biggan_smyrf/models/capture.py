"""Record the q, k, v an attention block sees, for measuring SMYRF's error on real activations."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .swap import attention_blocks


@contextmanager
def capture_qkv(model: nn.Module):
    """Inside the block, every forward of an attention block appends (q, k, v) to the yielded
    dict under the block's module name (detached copies; the forward itself is unchanged)."""
    captured: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    handles = []
    for name, block in attention_blocks(model).items():
        def hook(module, args, name=name):
            with torch.no_grad():
                captured.setdefault(name, []).append(tuple(t.detach().clone() for t in module.qkv(args[0])))
        handles.append(block.register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()

"""A readable description of G and D: sizes, and where attention runs, of which kind, on how many tokens."""
from __future__ import annotations

from torch import nn

from .swap import attention_blocks


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_network(name: str, model: nn.Module) -> str:
    c = model.config
    lines = [f"{name}{c.resolution} (ch={c.ch}, classes={c.n_classes}): {count_parameters(model) / 1e6:.2f} M parameters"]
    blocks = attention_blocks(model)
    if not blocks:
        lines.append("  attention: none")
    for block in blocks.values():
        lines.append(
            f"  attention at {block.resolution}x{block.resolution}: {block.n_queries} queries x "
            f"{block.n_keys} keys, {block.config.describe()}"
        )
    return "\n".join(lines)


def model_summary(generator: nn.Module, discriminator: nn.Module) -> str:
    return describe_network("G", generator) + "\n" + describe_network("D", discriminator)

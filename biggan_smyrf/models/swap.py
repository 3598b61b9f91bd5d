"""The swap API: switch attention blocks between dense and SMYRF on a live model.

    set_attention(G, "smyrf", n_hashes=4, q_cluster_size=2048)   # every block of G
    set_attention(G, n_hashes=8, resolutions=[128])              # change SMYRF parameters only
    with using_attention(G, "dense"):                             # temporarily exact
        images = G(z)

A setting is a name ("dense", "smyrf": the block's other fields kept; "paper": the published
recipe, cluster sizes kept), an `AttentionChange`
(only its set fields change), a full `AttentionConfig` (replaces the block's), or a dict of
configs by block name (what `attention_configs` returns). Only each block's `config` attribute
changes; no parameter, buffer or state-dict key does, so weights trained with one kind load into
the other with strict=True. Every requested config is validated against its block's token counts
before any block is changed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional, Union

from torch import nn

from biggan_smyrf.attention import AttentionChange, AttentionConfig

from .attention_block import SelfAttention

Setting = Union[str, AttentionConfig, AttentionChange, dict, None]


def attention_blocks(model: nn.Module, resolutions: Optional[Iterable[int]] = None) -> dict[str, SelfAttention]:
    """The model's attention blocks by module name, optionally only those at `resolutions`."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, SelfAttention)}
    if resolutions is None:
        return blocks
    wanted = set(resolutions)
    selected = {name: b for name, b in blocks.items() if b.resolution in wanted}
    if not selected:
        have = sorted({b.resolution for b in blocks.values()})
        raise ValueError(f"no attention block at resolutions {sorted(wanted)}; this model has attention at {have}")
    return selected


def attention_configs(model: nn.Module) -> dict[str, AttentionConfig]:
    return {name: block.config for name, block in attention_blocks(model).items()}


def planned_attention(
    model: nn.Module, *settings: Setting, resolutions: Optional[Iterable[int]] = None, **params
) -> dict[str, AttentionConfig]:
    """Each selected block's config after `settings` (in order) and then `params` (AttentionConfig
    fields), validated against the block's tokens. Changes nothing."""
    blocks = attention_blocks(model, resolutions)
    planned = {}
    for name, block in blocks.items():
        config = block.config
        for setting in (*settings, params):
            config = _applied(config, setting, name)
        config.validate_for(block.n_queries, block.n_keys, where=block.describe_place())
        planned[name] = config
    return planned


def set_attention(
    model: nn.Module, *settings: Setting, resolutions: Optional[Iterable[int]] = None, **params
) -> dict[str, AttentionConfig]:
    """Apply `settings` and `params` to the model's blocks (see `planned_attention`); returns their
    previous configs (for `restore`)."""
    new = planned_attention(model, *settings, resolutions=resolutions, **params)
    blocks = attention_blocks(model)
    previous = {name: blocks[name].config for name in new}
    for name, config in new.items():
        blocks[name].config = config  # validated above, all-or-nothing
    return previous


def restore(model: nn.Module, configs: dict[str, AttentionConfig]) -> None:
    set_attention(model, configs)


@contextmanager
def using_attention(model: nn.Module, *settings: Setting, resolutions: Optional[Iterable[int]] = None, **params):
    """`set_attention` for the duration of a `with` block; the previous configs come back after."""
    previous = set_attention(model, *settings, resolutions=resolutions, **params)
    try:
        yield model
    finally:
        restore(model, previous)


def _applied(config: AttentionConfig, setting: Setting, block: str) -> AttentionConfig:
    if setting is None:
        return config
    if isinstance(setting, AttentionConfig):
        return setting
    if isinstance(setting, AttentionChange):
        return setting.apply(config)
    if isinstance(setting, str):
        return AttentionChange.named(setting).apply(config)
    if isinstance(setting, dict) and all(isinstance(c, AttentionConfig) for c in setting.values()):
        return setting.get(block, config)  # per-block configs; blocks not named keep theirs
    if isinstance(setting, dict):
        return config.with_(**setting)  # AttentionConfig fields
    raise TypeError(f"an attention setting is a kind, AttentionChange, AttentionConfig or dict; got {setting!r}")

"""The swap API: switch attention blocks between dense and SMYRF on a live model.

    set_attention(G, "smyrf", n_hashes=4, q_cluster_size=2048)   # every block of G
    set_attention(G, n_hashes=8, resolutions=[128])              # change SMYRF parameters only
    with attention(G, "dense"):                                   # temporarily exact
        images = G(z)

Only each block's `config` attribute changes; no parameter, buffer or state-dict key does, so
weights trained with one kind load into the other with strict=True. All requested configs are
validated against their blocks' token counts before any block is changed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional, Union

from torch import nn

from biggan_smyrf.attention import AttentionConfig

from .attention_block import SelfAttention

KindOrConfig = Union[str, AttentionConfig, None]


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


def set_attention(
    model: nn.Module,
    kind: KindOrConfig = None,
    *,
    resolutions: Optional[Iterable[int]] = None,
    **params,
) -> dict[str, AttentionConfig]:
    """Set the attention of the model's blocks; returns their previous configs (for `restore`).

    kind: "dense" or "smyrf" (other fields kept from each block's current config), a full
        AttentionConfig, or None to keep each block's kind and only change `params`.
    params: AttentionConfig fields, e.g. n_hashes=4, q_cluster_size=2048, hashing="xbox".
    """
    blocks = attention_blocks(model, resolutions)
    new = {name: _updated(block.config, kind, params) for name, block in blocks.items()}
    for name, block in blocks.items():  # validate everything before changing anything
        new[name].validate_for(block.n_queries, block.n_keys, where=block.describe_place())
    previous = {}
    for name, block in blocks.items():
        previous[name] = block.config
        block.set_config(new[name])
    return previous


def restore(model: nn.Module, configs: dict[str, AttentionConfig]) -> None:
    blocks = attention_blocks(model)
    for name, config in configs.items():
        blocks[name].set_config(config)


@contextmanager
def attention(model: nn.Module, kind: KindOrConfig = None, *, resolutions: Optional[Iterable[int]] = None, **params):
    """`set_attention` for the duration of a `with` block; the previous configs come back after."""
    previous = set_attention(model, kind, resolutions=resolutions, **params)
    try:
        yield model
    finally:
        restore(model, previous)


def _updated(current: AttentionConfig, kind: KindOrConfig, params: dict) -> AttentionConfig:
    if isinstance(kind, AttentionConfig):
        return kind.with_(**params) if params else kind
    if kind is not None:
        params = {"kind": kind, **params}
    unknown = set(params) - set(AttentionConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown attention parameters {sorted(unknown)}; valid: {sorted(AttentionConfig.__dataclass_fields__)}")
    return current.with_(**params)

"""Rebuild the typed config dataclasses from the plain dicts that YAML files and checkpoints hold.

LightningCLI stores a run's hyperparameters as its parsed config (plain dicts), and
`load_from_checkpoint` hands those dicts back to the constructors; `coerce` turns them into the
dataclasses again, recursing through nested configs, Optional[...] and dict[..., Config].
`plain` is the way back, for modules built in Python rather than by the CLI.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Union


def coerce(tp: Any, value: Any) -> Any:
    """`value` as type `tp` when `tp` is (or contains) a config dataclass; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin is Union:
        if value is None:
            return None
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        return coerce(options[0], value) if len(options) == 1 else value
    if origin is dict and isinstance(value, dict):
        key_type, value_type = typing.get_args(tp)
        return {coerce(key_type, k): coerce(value_type, v) for k, v in value.items()}
    if tp is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)  # YAML/JSON round trips may stringify dict keys such as resolutions
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - known
        if unknown:
            raise TypeError(f"{tp.__name__}: unknown options {sorted(unknown)}; valid: {sorted(known)}")
        return tp(**{k: coerce(hints[k], v) for k, v in value.items()})
    return value


def plain(value: Any) -> Any:
    """`value` with every config dataclass turned into a plain dict (recursively): what YAML files
    and train.py's checkpoints hold, and what `torch.load(weights_only=True)` accepts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value

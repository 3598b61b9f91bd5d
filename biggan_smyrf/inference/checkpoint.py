"""Load a generator from a training checkpoint or an exported weights file; export one.

Both are read with `torch.load(weights_only=True)`: no code from the file is ever executed. The
architecture comes from the file itself, so users never repeat the model options.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.models import Generator, GeneratorConfig, attention_configs, restore, set_attention
from biggan_smyrf.typed import coerce

EXPORT_FORMAT = "biggan_smyrf.generator/1"
# Per-block configs (exported files), one config for all blocks (a run's eval attention), or none.
SavedAttention = Union[dict, AttentionConfig, None]
WHAT_TO_PASS = "pass a train.py checkpoint (last.ckpt, best-fid.ckpt) or a file written by export_generator"


class CheckpointError(ValueError):
    """The file is missing, unreadable, or not a biggan_smyrf checkpoint."""


def check_checkpoint_file(path: Union[str, Path]) -> Path:
    """`path`, checked to exist and to look like a file written by torch.save, without loading it.

    torch.save writes a zip archive (a pickle stream, starting with the PROTO opcode, before torch 1.6).
    Anything else, e.g. a text file, fails inside torch.load with errors that name nothing useful
    (`IndexError: pop from empty list`), so it is refused here first.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {WHAT_TO_PASS}")
    with path.open("rb") as file:
        first_byte = file.read(1)
        is_zip = zipfile.is_zipfile(file)
        if not is_zip and first_byte != pickle.PROTO:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (not written by torch.save); {WHAT_TO_PASS}")
    return path


def read_checkpoint(path: Union[str, Path]) -> dict:
    path = check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # Whatever torch.load raises on a damaged or foreign file (UnpicklingError, RuntimeError, but also
    # IndexError or KeyError from its unpickler) says the file is unusable, not that our code is wrong.
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that loads safely with weights_only=True "
            f"({type(err).__name__}); {WHAT_TO_PASS}"
        ) from err


def generator_state(checkpoint: dict, path: Path, ema: bool) -> tuple[GeneratorConfig, dict, SavedAttention]:
    """(architecture, G weights, the attention to sample with) from either file format."""
    if checkpoint.get("format") == EXPORT_FORMAT:
        config = coerce(GeneratorConfig, checkpoint["config"])
        return config, checkpoint["state_dict"], coerce(dict[str, AttentionConfig], checkpoint["attention"])
    if "biggan_smyrf" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a biggan_smyrf checkpoint (expected a train.py last.ckpt/best checkpoint "
            f"or a file written by export_generator)"
        )
    hparams = checkpoint["hyper_parameters"]
    config = coerce(GeneratorConfig, hparams["generator"])
    eval_attention = coerce(Optional[AttentionConfig], (hparams.get("attention") or {}).get("eval"))
    prefix = "G_ema.module." if ema else "G."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return config, state, eval_attention


def load_generator(
    path: Union[str, Path],
    *,
    ema: bool = True,
    device: Union[str, torch.device] = "cpu",
    attention: Union[str, AttentionConfig, None] = None,
) -> Generator:
    """A generator in eval mode, ready to sample.

    ema: G_ema (default) or the raw G of a training checkpoint.
    attention: "dense", "smyrf" or an AttentionConfig for every attention block (validated against
        the model's token counts); default: the attention the run evaluated with
        (`model.attention.eval`), else as trained; for an exported file, as it was exported.
    """
    path = Path(path)
    config, state, saved_attention = generator_state(read_checkpoint(path), path, ema)
    generator = Generator(config)
    generator.load_state_dict(state, strict=True)
    if attention is not None:
        set_attention(generator, attention)
    elif isinstance(saved_attention, dict):
        restore(generator, saved_attention)
    elif saved_attention is not None:
        set_attention(generator, saved_attention)
    return generator.to(device).eval()


def export_generator(generator: Generator, path: Union[str, Path]) -> Path:
    """Write G's architecture, weights and current attention (no optimiser or D): a small file for
    sharing and sampling."""
    path = Path(path)
    payload = {
        "format": EXPORT_FORMAT,
        "config": asdict(generator.config),
        "attention": {name: asdict(cfg) for name, cfg in attention_configs(generator).items()},
        "state_dict": generator.state_dict(),
    }
    torch.save(payload, path)
    return path

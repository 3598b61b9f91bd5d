"""Load a generator from a training checkpoint or an exported weights file; export one.

Both are read with `torch.load(weights_only=True)`: no code from the file is ever executed. The
architecture comes from the file itself, so users never repeat the model options.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import torch

from biggan_smyrf.attention import AttentionConfig, AttentionSchedule
from biggan_smyrf.models import Generator, GeneratorConfig, attention_configs, set_attention
from biggan_smyrf.models.swap import Setting
from biggan_smyrf.typed import coerce

EXPORT_FORMAT = "biggan_smyrf.generator/1"
UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch.load(weights_only=True) names what it refused
WHAT_TO_PASS = "pass a train.py checkpoint (last.ckpt, best-fid.ckpt) or a file written by export_generator"


class CheckpointError(ValueError):
    """The file is missing, unreadable, or not a biggan_smyrf checkpoint."""


def check_checkpoint_file(path: Union[str, Path], what_to_pass: str = WHAT_TO_PASS) -> Path:
    """`path`, checked to exist and to look like a file written by torch.save, without loading it.

    torch.save writes a zip archive (a pickle stream, starting with the PROTO opcode, before torch 1.6).
    Anything else, e.g. a text file, fails inside torch.load with errors that name nothing useful
    (`IndexError: pop from empty list`), so it is refused here first.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {what_to_pass}")
    with path.open("rb") as file:
        first_byte = file.read(1)
        is_zip = zipfile.is_zipfile(file)
        if not is_zip and first_byte != pickle.PROTO:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (not written by torch.save); {what_to_pass}")
    return path


def read_checkpoint(path: Union[str, Path], what_to_pass: str = WHAT_TO_PASS) -> dict:
    """The object torch.save wrote to `path`; errors end with `what_to_pass` (which file to give)."""
    path = check_checkpoint_file(path, what_to_pass)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # Whatever torch.load raises on a damaged or foreign file (UnpicklingError, RuntimeError, but also
    # IndexError or KeyError from its unpickler) says the file is unusable, not that our code is wrong.
    except Exception as err:
        unsafe = UNSAFE_GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if unsafe:  # torch's own message advises weights_only=False, which would run that code
            raise CheckpointError(
                f"{path} is refused: loading it could run code (its pickle calls {unsafe[1]}; a checkpoint holds "
                f"only tensors and plain data); {what_to_pass}"
            ) from None
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint that loads safely with weights_only=True "
            f"({type(err).__name__}); {what_to_pass}"
        ) from err


def generator_state(checkpoint: dict, path: Path, ema: bool) -> tuple[GeneratorConfig, dict, Optional[AttentionSchedule]]:
    """(architecture, G weights, the run's attention schedule) from either file format; an
    exported file has per-block configs of its own, returned in the architecture."""
    if checkpoint.get("format") == EXPORT_FORMAT:
        config = coerce(GeneratorConfig, checkpoint["config"])
        blocks = coerce(dict[str, AttentionConfig], checkpoint["attention"])
        return config, checkpoint["state_dict"], blocks
    if "biggan_smyrf" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a biggan_smyrf checkpoint (expected a train.py last.ckpt/best checkpoint "
            f"or a file written by export_generator)"
        )
    hparams = checkpoint["hyper_parameters"]
    config = coerce(GeneratorConfig, hparams["generator"])
    # A scheduled eval attention: the entry in force when the checkpoint was written.
    schedule = coerce(AttentionSchedule, hparams.get("attention") or {}).at(checkpoint["biggan_smyrf"].get("g_iters", 0))
    prefix = "G_ema.module." if ema else "G."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return config, state, schedule


def load_generator(
    path: Union[str, Path],
    *,
    ema: bool = True,
    device: Union[str, torch.device] = "cpu",
    attention: Setting = None,
) -> Generator:
    """A generator in eval mode, ready to sample.

    ema: G_ema (default) or the raw G of a training checkpoint.
    attention: by default the attention the run evaluated with (`model.attention.eval`; for an
        exported file, as exported). Every block keeps the run's own SMYRF settings (as trained),
        even when it evaluated dense, so "smyrf" -- or an `AttentionChange` such as
        `AttentionChange(kind="smyrf", n_hashes=8)` -- starts from them and changes only what it
        names; "paper" is `AttentionChange.named("paper")`; a full AttentionConfig replaces them. Checked
        against every block's token counts.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    config, state, saved = generator_state(checkpoint, path, ema)
    generator = Generator(config)
    generator.load_state_dict(state, strict=True)
    generator.class_names = class_names(checkpoint)
    set_attention(generator, evaluated_attention(generator, saved))
    set_attention(generator, attention)
    return generator.to(device).eval()


def class_names(checkpoint: dict) -> list[str]:
    """The names of a class-conditional run's classes (its data's class folders), else []."""
    if checkpoint.get("format") == EXPORT_FORMAT:
        return list(checkpoint.get("class_names", []))
    return list((checkpoint.get("ImageDataModule") or {}).get("class_names", []))


def class_index(generator: Generator, name_or_index: Union[str, int, None]) -> Optional[int]:
    """A class given by index or, for a run on class folders, by folder name."""
    if name_or_index is None or isinstance(name_or_index, int) or str(name_or_index).isdigit():
        return None if name_or_index is None else int(name_or_index)
    names = getattr(generator, "class_names", [])
    if name_or_index not in names:
        known = f"its classes: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}" if names else \
            "it has no class names (pass a class index)"
        raise ValueError(f"unknown class {name_or_index!r}; {known}")
    return names.index(name_or_index)


def evaluated_attention(generator: Generator, saved: Union[AttentionSchedule, dict]) -> dict[str, AttentionConfig]:
    """Per block, the attention the run evaluated with, carrying the SMYRF settings it used."""
    if isinstance(saved, dict):  # an exported file's own per-block configs
        return saved
    return {name: saved.config("eval", built) for name, built in attention_configs(generator).items()}


def export_generator(generator: Generator, path: Union[str, Path]) -> Path:
    """Write G's architecture, weights and current attention (no optimiser or D): a small file for
    sharing and sampling. Weights are saved as CPU tensors, so the file loads on any machine."""
    path = Path(path)
    payload = {
        "format": EXPORT_FORMAT,
        "config": asdict(generator.config),
        "attention": {name: asdict(cfg) for name, cfg in attention_configs(generator).items()},
        "state_dict": {name: value.cpu() for name, value in generator.state_dict().items()},
        "class_names": list(getattr(generator, "class_names", [])),
    }
    torch.save(payload, path)
    return path

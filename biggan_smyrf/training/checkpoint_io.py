"""Checkpoint writes that a kill cannot tear: a checkpoint file is always the old one or the new one.

Lightning's TorchCheckpointIO writes through an fsspec transaction, which for local files writes a
temporary file in the system temp directory and then moves it: an atomic rename only when that
directory is on the same filesystem as the checkpoint, otherwise a copy over the old file (a kill
during the copy leaves a torn checkpoint), never an fsync, and a kill leaves the temporary file
behind in /tmp. Here the new checkpoint is written next to the old one as `<name>.partial`,
flushed to disk, and renamed over it with `os.replace` (atomic on POSIX and Windows); a killed
write leaves only that `.partial` file, which the next write overwrites (biggan_smyrf/atomic.py).
Whether a run's folder can take a checkpoint at all is checked before training (`check_output_folder`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from biggan_smyrf.atomic import replacing

PARTIAL_SUFFIX = ".partial"


def partial_path(path: _PATH) -> Path:
    """Where a checkpoint is written before it replaces `path`."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def save_atomically(checkpoint: dict[str, Any], path: _PATH) -> None:
    """torch.save to `path` such that `path` is at every moment either its old or its new content."""
    path = Path(path)
    try:
        with replacing(path, temp=partial_path(path), durable=True) as partial, open(partial, "wb") as f:
            torch.save(checkpoint, f)
    except (OSError, RuntimeError) as err:  # a full disk fails inside torch.save as a RuntimeError
        previous = "is unchanged" if path.exists() else "was not written"
        raise OSError(f"could not write {path} ({err}); {path} {previous}: free some space or check the disk") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local writes are atomic (see the module docstring); remote paths
    (s3://, gs://, ...) are left to Lightning, whose fsspec upload replaces the object whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, path)


def checkpoint_bytes(model) -> int:
    """About the size of a checkpoint: weights and buffers, and Adam's two moments of G's and D's weights."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights + 2 * sum(p.numel() * p.element_size() for p in (*model.G.parameters(), *model.D.parameters()))


def check_output_folder(run_dir: Path, needed: int) -> None:
    """Refuse, before the data and model are set up, a run directory that cannot be written or
    whose disk has no room for a checkpoint (written beside the previous one, then renamed)."""
    folder = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise OSError(f"cannot write to {run_dir} ({err.strerror or err}): run train.py from a folder you can "
                      f"write to, or make checkpoints/ a link to one") from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(f"only {free / 2**20:.1f} MiB free on the disk of {run_dir}, and a checkpoint needs "
                      f"{needed / 2**20:.1f} MiB: free some space, or run train.py from another disk")

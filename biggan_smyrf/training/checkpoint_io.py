"""Checkpoint writes that a kill cannot tear: a checkpoint file is always the old one or the new one.

Lightning's TorchCheckpointIO writes through an fsspec transaction, which for local files writes a
temporary file in the system temp directory and then moves it: an atomic rename only when that
directory is on the same filesystem as the checkpoint, otherwise a copy over the old file (a kill
during the copy leaves a torn checkpoint), never an fsync, and a kill leaves the temporary file
behind in /tmp. Here the new checkpoint is written next to the old one as `<name>.partial`,
flushed to disk, and renamed over it with `os.replace` (atomic on POSIX and Windows); a killed
write leaves only that `.partial` file, which the next write overwrites (biggan_smyrf/atomic.py).
"""
from __future__ import annotations

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

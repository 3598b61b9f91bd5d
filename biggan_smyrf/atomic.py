"""Files that appear complete or not at all.

Everything we write that a later run reads (checkpoints, downloaded weights, real statistics, the
image cache) is written to a temporary file in the destination's own directory and moved into place
with `os.replace`, a rename on one filesystem and so atomic: a killed process leaves no partial file
under the final name, and processes racing to write the same file each publish a complete one.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


def temp_beside(final: Path) -> Path:
    """A new empty temporary file in `final`'s directory (created if missing), hidden by a dot, with
    the permissions of any new file (mkstemp's are 0600: a shared cache would be the builder's alone)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}")
    os.close(handle)
    os.chmod(name, 0o666 & ~current_umask())
    return Path(name)


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def replacing(final: Path, temp: Optional[Path] = None, durable: bool = False) -> Iterator[Path]:
    """Yields a temporary path to write; it replaces `final` when the block succeeds and is
    removed when it raises.

    temp: a fixed side file instead of a fresh unique one. Checkpoints use `<name>.partial`: a
        SIGKILL leaves one bounded leftover that the next write reuses, where unique names would
        pile up a checkpoint-sized file per kill (unique names are for files that several processes
        may write at once, such as the image cache).
    durable: fsync the data before the rename and the directory after it, so that a power loss
        too leaves the old or the new file (checkpoints).
    """
    if temp is None:
        temp = temp_beside(final)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temp
        if durable:
            _fsync(temp)
        os.replace(temp, final)
        if durable:
            _fsync(final.parent)
    finally:
        temp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk; a no-op where that is unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    with replacing(path) as temp:
        temp.write_text(text)

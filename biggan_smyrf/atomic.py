"""Files that appear complete or not at all.

Everything we write that a later run reads (downloaded weights, real statistics, the image cache)
is written to a temporary file in the destination's own directory and moved into place with
`os.replace`, a rename on one filesystem and so atomic: a killed process leaves no partial file
under the final name, and processes racing to write the same file each publish a complete one.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_beside(final: Path) -> Path:
    """A new empty temporary file in `final`'s directory (created if missing), hidden by a dot."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}")
    os.close(handle)
    return Path(name)


@contextmanager
def replacing(final: Path) -> Iterator[Path]:
    """Yields a temporary path to write; it replaces `final` when the block succeeds and is
    removed when it raises."""
    temp = temp_beside(final)
    try:
        yield temp
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with replacing(path) as temp:
        temp.write_text(text)

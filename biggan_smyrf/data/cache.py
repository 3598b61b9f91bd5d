"""A one-time preprocessed cache: every image decoded, center-cropped and resized once, stored as uint8.

Training then reads a memory-mapped (N, H, W, 3) `.npy` instead of decoding JPEGs every epoch, which
on a few CPU cores would otherwise starve the GPU. The file name carries the source's fingerprint and
the resolution (`<name>-<fingerprint>-<res>px-v<N>.npy`), so editing the dataset or changing the
resolution builds a new cache instead of silently reusing a stale one.

The cache is written to a temporary file in the cache directory and moved into place atomically
(biggan_smyrf/atomic.py): a killed build leaves no half-written file under the final name, and
processes racing to build the same cache (nodes sharing a filesystem) each publish a complete one.
Nothing is ever written into the dataset itself.

The sidecar records the store's size in bytes and a checksum of its shape and of up to
`CHECKED_ROWS` rows spread over it; both are checked whenever the cache is reused (a stat and
a read of those rows: about 3 MiB at 128 px, whatever the dataset's size). A truncated, empty or
swapped store, or a missing or corrupt sidecar, is reported in one line and rebuilt from the
source, so training never reads a damaged cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from pytorch_lightning.utilities import rank_zero_info

from biggan_smyrf.atomic import temp_beside, write_text_atomically

from .report import CacheReport
from .sources import ImageSource, PathLike

DEFAULT_CACHE_DIR = "data/cache"
# Decoding and resizing run in PIL's C code, which releases the GIL, so threads scale across cores.
DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Images decoded per round trip to the pool: bounds memory to a few dozen decoded images.
CHUNK = 64
SKIPPED_NAMES_SHOWN = 5
CHECKED_ROWS = 64  # rows the checksum covers
# Failures that mean "this file is not a usable image", as opposed to bugs in this module.
# zipfile.BadZipFile: a damaged zip member (bad CRC) is one unusable image, not a broken archive.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, zipfile.BadZipFile)


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """The largest centered square of `image`, resized to `resolution` px with antialiased LANCZOS."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # `box` crops and resizes in one pass, without materialising the cropped full-size image.
    box = (left, top, left + side, top + side)
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)


# Bump when the preprocessing (crop, resize filter, conversion) changes: old caches are then ignored.
PREPROCESSING_VERSION = 1


def cache_path(source: ImageSource, resolution: int, cache_dir: PathLike = DEFAULT_CACHE_DIR) -> Path:
    """Where the cache of `source` at `resolution` lives:
    `<cache_dir>/<name>-<fingerprint>-<res>px-v<preprocessing version>.npy`."""
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name) or "images"
    return Path(cache_dir).expanduser() / f"{safe_name}-{source.fingerprint()}-{resolution}px-v{PREPROCESSING_VERSION}.npy"


def sidecar_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


def _check_outside_dataset(source: ImageSource, cache_dir: Path) -> None:
    if source.is_zip:
        return
    dataset, cache = source.path.resolve(), cache_dir.resolve()
    if cache == dataset or dataset in cache.parents:
        raise ValueError(
            f"the cache directory {cache_dir} is inside the dataset folder {source.path}; the dataset is "
            f"never written to. Pass another --data.cache_dir."
        )


def _decode(source: ImageSource, name: str, resolution: int) -> Union[tuple[np.ndarray, str, tuple[int, int]], str]:
    """One cached image as (uint8 (R, R, 3) array, original mode, original size), or the reason it
    could not be read."""
    try:
        decoded = source.decode_rgb(name, min_size=2 * resolution)
        return np.asarray(center_crop_resize(decoded.image, resolution), dtype=np.uint8), decoded.mode, decoded.size
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"


def _chunks(items, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fill(out: np.ndarray, source: ImageSource, resolution: int, progress: bool) -> tuple[int, CacheReport]:
    """Decode every image of `source` into `out`, packed from index 0. Returns (kept, what was changed)."""
    kept, report = 0, CacheReport(resolution)
    bar = tqdm(total=len(source), desc=f"caching {source.name} at {resolution}px", unit="img", disable=not progress)
    with bar, ThreadPoolExecutor(DECODE_WORKERS) as pool:
        for names in _chunks(source.names, CHUNK):
            for name, result in zip(names, pool.map(lambda n: _decode(source, n, resolution), names)):
                if isinstance(result, str):
                    report.skip(name, result)
                else:
                    out[kept], mode, size = result
                    report.note(name, mode, size)
                    kept += 1
            bar.update(len(names))
    return kept, report


def _first_skipped(skipped: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} ({reason})" for name, reason in skipped[:SKIPPED_NAMES_SHOWN])
    more = f" and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if len(skipped) > SKIPPED_NAMES_SHOWN else ""
    return shown + more


def _copy_prefix(src: np.ndarray, dst: np.ndarray, block: int = 1024) -> None:
    """dst[:] = src[:len(dst)], a block at a time so no more than one block is paged in at once."""
    for start in range(0, len(dst), block):
        stop = min(start + block, len(dst))
        dst[start:stop] = src[start:stop]


def build_cache(
    root: PathLike, resolution: int, cache_dir: PathLike = DEFAULT_CACHE_DIR, progress: bool = True
) -> Path:
    """The path of the cache of `root` at `resolution`, built first if it does not exist yet.

    Unreadable files are skipped with a warning naming the first few; if none is usable, ValueError.
    Images converted to RGB, upscaled or cropped are reported with one line per kind (see report.py).
    A JSON sidecar beside the `.npy` records the source, counts, and the skipped and changed names.
    """
    with ImageSource(root) as source:
        final = cache_path(source, resolution, cache_dir)
        if final.exists():
            problem = cache_problem(final)
            if problem is None:
                return final
            warnings.warn(f"the cache {final} is unusable ({problem}); rebuilding it from {source.path}", stacklevel=2)
        _check_outside_dataset(source, final.parent)
        final.parent.mkdir(parents=True, exist_ok=True)
        temps = [temp_beside(final)]
        try:
            shape = (len(source), resolution, resolution, 3)
            # Written straight to disk: a 30k-image cache never has to fit in RAM.
            images = np.lib.format.open_memmap(temps[0], mode="w+", dtype=np.uint8, shape=shape)
            kept, report = _fill(images, source, resolution, progress)
            skipped = report.skipped
            if kept == 0:
                raise ValueError(
                    f"none of the {len(source)} files in {source.path} could be read as an image: "
                    f"{_first_skipped(skipped)}"
                )
            if skipped:
                warnings.warn(
                    f"skipped {len(skipped)} of {len(source)} files in {source.path} that could not be read as "
                    f"images: {_first_skipped(skipped)}",
                    stacklevel=2,
                )
                # The .npy header fixes N, so a cache with skipped files is copied to one of the right length.
                temps.append(temp_beside(final))
                packed = np.lib.format.open_memmap(temps[1], mode="w+", dtype=np.uint8, shape=(kept,) + shape[1:])
                _copy_prefix(images, packed)
                images = packed
            images.flush()
            checksum = sampled_checksum(images)
            del images  # unmap before the rename
            write_text_atomically(
                sidecar_path(final),
                json.dumps({
                    "source": str(source.path.resolve()),
                    "fingerprint": source.fingerprint(),
                    "resolution": resolution,
                    "count": kept,
                    "bytes": temps[-1].stat().st_size,
                    "checksum": checksum,
                    **report.record(),
                }, indent=2) + "\n",
            )
            os.replace(temps[-1], final)
            for line in report.lines():
                rank_zero_info(f"data: {line}")
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
    return final


def read_sidecar(path: PathLike) -> dict:
    """The JSON record written beside the cache `path` (empty if it is missing or unreadable)."""
    try:
        record = json.loads(sidecar_path(Path(path)).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def sampled_checksum(images: np.ndarray) -> str:
    """BLAKE2 of the array's shape and dtype and of `CHECKED_ROWS` rows spread evenly over it."""
    digest = hashlib.blake2b(repr((images.shape, images.dtype.str)).encode(), digest_size=16)
    rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), CHECKED_ROWS)).round().astype(np.int64))
    for row in rows:
        digest.update(np.ascontiguousarray(images[row]).tobytes())
    return digest.hexdigest()


def cache_problem(path: Path) -> Optional[str]:
    """What is wrong with the cache at `path` by its sidecar's record, or None if nothing is."""
    record = read_sidecar(path)
    if not {"bytes", "checksum", "count"} <= record.keys():
        return f"its record {sidecar_path(path).name} is missing, corrupt or from an older version"
    size = path.stat().st_size
    if size != record["bytes"]:
        return "the file is empty" if size == 0 else f"the file has {size} bytes of {record['bytes']}"
    try:
        images = load_cache(path)
    except (OSError, ValueError) as error:
        return f"unreadable: {error}"
    if len(images) != record["count"] or sampled_checksum(images) != record["checksum"]:
        return "its images differ from its record's checksum"
    return None


def load_cache(path: PathLike) -> np.ndarray:
    """A built cache as a read-only memory-mapped uint8 (N, H, W, 3) array."""
    return np.load(path, mmap_mode="r")

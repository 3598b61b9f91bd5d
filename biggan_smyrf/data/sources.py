"""Where training images come from: a folder (searched recursively) or a `.zip` of images.

An `ImageSource` lists its images once, in sorted order, so the same dataset always yields the same
index -> image mapping, and a folder and a zip of that folder yield the same images in the same order.
`fingerprint()` identifies the listing cheaply (names, sizes and mtimes or CRCs, never pixels) so a
preprocessed cache can be keyed by it and rebuilt when the dataset changes.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Optional, Union

from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
FINGERPRINT_CHARS = 12

PathLike = Union[str, os.PathLike]


def is_image_name(name: str) -> bool:
    """True for names with an accepted image extension, in any case (`FACE.JPG` counts)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(relative_name: str) -> bool:
    # Editor/OS droppings (`.ipynb_checkpoints/`, macOS `._x.jpg` and `__MACOSX/` in zips) would
    # otherwise enter the dataset as duplicate or undecodable "images".
    parts = PurePosixPath(relative_name).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def resolve_source(root: PathLike) -> Path:
    """The dataset path, checked to exist and to be a folder or a `.zip` file."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"dataset not found: {path}. Pass a folder or .zip of images with --data.root "
            f"(leave it unset to train on the built-in LFW demo faces)."
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is a file but not a readable .zip archive (another format, or truncated): "
            f"pass a folder or .zip of images as --data.root"
        )
    return path


def _list_folder(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk order is filesystem-dependent; the final sort makes it irrelevant anyway
        for filename in filenames:
            name = (Path(dirpath) / filename).relative_to(root).as_posix()
            if is_image_name(name) and not _is_hidden(name):
                names.append(name)
    return sorted(names)


def _list_zip(archive: zipfile.ZipFile) -> list[str]:
    return sorted(
        info.filename
        for info in archive.infolist()
        if not info.is_dir() and is_image_name(info.filename) and not _is_hidden(info.filename)
    )


def _no_images_error(path: Path) -> ValueError:
    return ValueError(f"no images found in {path}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} (any case)")


def list_images(root: PathLike) -> list[str]:
    """Sorted image names relative to `root` (a folder, searched recursively, or a `.zip`)."""
    with ImageSource(root) as source:
        return list(source.names)


def fingerprint(root: PathLike) -> str:
    """A short hex digest of the listing of `root`: changes when an image is added, removed or edited."""
    with ImageSource(root) as source:
        return source.fingerprint()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    Images with transparency (RGBA, LA, palette with a transparent index) are composited on white:
    a plain `convert("RGB")` drops alpha and exposes whatever colour the transparent pixels happen to
    hold, often black or junk. Grayscale, CMYK and palette images go through PIL's conversions.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


class Decoded(NamedTuple):
    image: Image.Image  # 8-bit RGB, upright
    mode: str  # the file's pixel mode before conversion: "RGB", "L", "CMYK", "RGBA", "P", ...
    size: tuple[int, int]  # the file's (width, height), before any reduced-scale decoding


def decode_rgb(file: Union[PathLike, io.BytesIO], min_size: int = 0) -> Decoded:
    """Decode one image file (path or file object) as RGB, honouring its EXIF orientation, and say
    what it was before (mode, size), so callers can report conversions.

    `min_size` > 0 lets JPEGs decode at a reduced scale (DCT scaling) while keeping both sides at least
    `min_size`: a 1024 px CelebA-HQ JPEG cached at 128 px then decodes several times faster.
    """
    with Image.open(file) as image:
        mode, size = image.mode, image.size
        if min_size > 0:
            image.draft(None, (min_size, min_size))
        image = ImageOps.exif_transpose(image)
        image.load()
        return Decoded(to_rgb(image), mode, size)


def open_rgb(file: Union[PathLike, io.BytesIO], min_size: int = 0) -> Image.Image:
    """Decode one image file as RGB; see `decode_rgb`."""
    return decode_rgb(file, min_size).image


class ImageSource:
    """A folder or `.zip` of images, listed once at construction.

    `read_bytes` is safe to call from several threads: a zip's reads are serialised by a lock (the
    shared archive handle is not ours to interleave), folder reads need none. Use as a context
    manager, or call `close()`, to release the zip handle.
    """

    def __init__(self, root: PathLike):
        self.path = resolve_source(root)
        self.is_zip = self.path.is_file()
        self._archive = zipfile.ZipFile(self.path) if self.is_zip else None
        self._lock = threading.Lock()
        self._fingerprint: Optional[str] = None
        self.names = tuple(_list_zip(self._archive) if self._archive else _list_folder(self.path))
        if not self.names:
            self.close()
            raise _no_images_error(self.path)

    @property
    def name(self) -> str:
        """A short label for cache filenames: the folder name or the zip's stem."""
        return self.path.resolve().stem if self.is_zip else self.path.resolve().name

    def __len__(self) -> int:
        return len(self.names)

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def read_bytes(self, name: str) -> bytes:
        if not self.is_zip:
            return (self.path / name).read_bytes()
        if self._archive is None:
            raise ValueError(f"{self.path} is closed")
        with self._lock:
            return self._archive.read(name)

    def open_rgb(self, name: str, min_size: int = 0) -> Image.Image:
        """Decode image `name` (one of `self.names`) as RGB; see `open_rgb`."""
        return self.decode_rgb(name, min_size).image

    def decode_rgb(self, name: str, min_size: int = 0) -> Decoded:
        """Decode image `name` as RGB, with its original mode and size; see `decode_rgb`."""
        return decode_rgb(io.BytesIO(self.read_bytes(name)), min_size=min_size)

    def fingerprint(self) -> str:
        """sha256 over (name, size, mtime) for a folder or (name, size, CRC) for a zip, shortened.

        Computed once per `ImageSource`, like the listing it describes.
        """
        if self._fingerprint is None:
            self._fingerprint = self._hash_listing()
        return self._fingerprint

    def _hash_listing(self) -> str:
        digest = hashlib.sha256()
        for name in self.names:
            if self._archive is not None:
                info = self._archive.getinfo(name)
                entry = f"{name}\0{info.file_size}\0{info.CRC:08x}\n"
            else:
                stat = (self.path / name).stat()
                entry = f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            digest.update(entry.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:FINGERPRINT_CHARS]

"""Class labels from folders, for class-conditional BigGAN: `root/<class>/.../<image>`, ImageNet's layout.

A class is a folder directly under the dataset root (a zip holding one top folder is looked into:
its subfolders are the classes); classes sorted by name get labels 0, 1, ..., as torchvision's
ImageFolder numbers them (whose listing cannot be used here: it reads folders only, not zips); everything
below a class folder belongs to it. The labels follow the cache's image order: the sorted listing
less the files caching skipped as unreadable (all of them named in the cache's sidecar).
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Sequence

import numpy as np

from .report import first_names

CLASS_OPTIONS = ("none", "folders")


def class_folders(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(class names, int64 label per name) of image names relative to the dataset root."""
    parts = [PurePosixPath(name).parts for name in names]
    # A zip of a dataset folder (or a folder holding only that folder) has one top folder to look into.
    while parts and all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    loose = [name for name, p in zip(names, parts) if len(p) < 2]
    if loose:
        raise ValueError(
            f"data.classes=folders takes each image's class from its folder (root/<class>/<image>), but "
            f"{len(loose)} images are not in a class folder: {first_names(loose)}. Move them into class "
            f"folders, or use data.classes=none (unconditional)"
        )
    classes = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[p[0]] for p in parts], dtype=np.int64)


def cached_names(names: Sequence[str], sidecar: dict, cache: str) -> list[str]:
    """The names of the images in a cache, in its order: the listing less the skipped files."""
    skipped = set(sidecar.get("skipped", []))
    if sidecar.get("skipped_count", 0) != len(skipped):
        raise ValueError(
            f"the cache {cache} does not record which of its files it skipped (it predates class labels); "
            f"delete it to rebuild it"
        )
    kept = [name for name in names if name not in skipped]
    if len(kept) != sidecar.get("count", len(kept)):
        raise ValueError(f"the cache {cache} does not match its dataset's listing; delete it to rebuild it")
    return kept

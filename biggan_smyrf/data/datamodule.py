"""The Lightning DataModule: square RGB images in [-1, 1] from CelebA-HQ (any image folder or zip) or the demo.

Real datasets go through the one-time uint8 cache (see `cache.py`): `prepare_data` builds it, which
Lightning runs on local rank 0 only and follows with a barrier, so a DDP job decodes the dataset once;
`setup` memory-maps it on every rank, so workers share the OS page cache instead of holding copies.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from .cache import DEFAULT_CACHE_DIR, PREPROCESSING_VERSION, build_cache, load_cache, read_sidecar, sidecar_path
from .demo import DEMO_NAME, lfw_demo_images
from .classes import CLASS_OPTIONS, cached_names, class_folders
from .report import first_names, summary
from .sampler import ResumableSampler
from .sources import ImageSource, fingerprint, resolve_source

MIN_RESOLUTION = 16


class ImageArrayDataset(Dataset):
    """(image, label) pairs from a uint8 (N, H, W, 3) array: a float32 (3, H, W) image in [-1, 1] and
    its class label (int64 (N,) `labels`), or 0 for unconditional data such as CelebA-HQ.

    A key is an index, or `(index, flip)` as `ResumableSampler` draws them: the flip is decided with
    the data order, not by a random stream in the worker that happens to load the image, so a
    resumed run flips exactly as the uninterrupted one.
    """

    def __init__(self, images: np.ndarray, limit: Optional[int] = None, labels: Optional[np.ndarray] = None):
        self.images, self.labels = images, labels
        self.length = len(images) if limit is None else min(limit, len(images))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Union[int, tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        pixels = torch.from_numpy(np.array(self.images[index]))  # a copy: memmapped pages are read-only
        image = pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        if flip:
            image = image.flip(-1)
        return image, torch.tensor(0 if self.labels is None else int(self.labels[index]))

    def __getstate__(self) -> dict:
        # Workers started by spawn/forkserver receive the dataset pickled; a memmapped cache travels as
        # its path and is re-mapped there, instead of being pickled whole into every worker.
        state = self.__dict__.copy()
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = Path(self.images.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if isinstance(self.images, Path):
            self.images = load_cache(self.images)


def check_image_size(resolution: int) -> None:
    """Any power of two from 16 px: the data can feed any model (models/specs.py's
    `check_resolution` is stricter: G and D have width tables for 32-512 px only)."""
    if not isinstance(resolution, int) or resolution < MIN_RESOLUTION or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= {MIN_RESOLUTION} (16, 32, 64, ...), got {resolution!r}")


class ImageDataModule(pl.LightningDataModule):
    """Square RGB images for GAN training: CelebA-HQ or any folder/zip of images, else the LFW demo.

    Images are center-cropped to a square and resized once into a cached uint8 array; batches are
    float32 (B, 3, resolution, resolution) in [-1, 1] with their class labels (all 0 unless
    `classes` is folders).

    Args:
        root: Folder (searched recursively) or .zip of jpg/jpeg/png/webp/bmp images, e.g. CelebA-HQ.
            Unset: the built-in LFW demo faces (100 images shipped with scikit-image, no download).
        resolution: Side in pixels that images are center-cropped and resized to; a power of two >= 16.
        batch_size: Images per training batch, per device under DDP.
        num_workers: DataLoader worker processes per device; 0 loads in the main process.
        cache_dir: Where the one-time preprocessed cache of `root` is written (relative paths are
            relative to the working directory). The dataset itself is never written to.
        flip: Randomly flip training images horizontally.
        val_images: Validation uses the first this-many images, unflipped (capped at the dataset size);
            with class folders, this many spread evenly over the sorted listing (every class).
        classes: none (unconditional: every label 0, e.g. CelebA-HQ) or folders (class-conditional:
            an image's class is its folder under `root`, root/<class>/<image> as ImageNet; classes
            sorted by name are labels 0, 1, ...; model.generator/discriminator.n_classes must match).

    The training order and flips follow from the seed (`seed_everything`) and the position in the
    run alone (`ResumableSampler`); the position, in batches consumed by training steps, is saved in
    checkpoints (`state_dict`), so a resumed run continues with the very batch the interrupted one
    would have trained on next, even mid-epoch.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        resolution: int = 64,
        batch_size: int = 32,
        num_workers: int = 2,
        cache_dir: str = DEFAULT_CACHE_DIR,
        flip: bool = True,
        val_images: int = 256,
        classes: str = "none",
    ):
        super().__init__()
        check_image_size(resolution)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        if val_images < 1:
            raise ValueError(f"val_images must be at least 1, got {val_images}")
        if classes not in CLASS_OPTIONS:
            raise ValueError(f"data.classes must be one of {CLASS_OPTIONS}, got {classes!r}")
        if classes == "folders" and root is None:
            raise ValueError(f"data.classes=folders reads classes from --data.root's folders; the built-in "
                             f"{DEMO_NAME} have none (use data.classes=none)")
        # Checked now rather than in prepare_data, so a typo fails before any model is built.
        self.root = None if root is None else resolve_source(root)
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.flip = flip
        self.val_images = val_images
        self.classes = classes
        self.class_names: list[str] = []  # with classes=folders, label i is class_names[i]
        self._labels: Optional[np.ndarray] = None
        self._images: Optional[np.ndarray] = None
        self._sampler: Optional[ResumableSampler] = None  # the training data's order and position
        self._resume_state: Optional[dict[str, int]] = None

    def prepare_data(self) -> None:
        if self.root is not None:
            build_cache(self.root, self.resolution, self.cache_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._images is None:
            self._images = self._load_images()
        self._check_batch_fits()

    def _load_images(self) -> np.ndarray:
        if self.root is None:
            rank_zero_info(
                f"data: no --data.root given, using the built-in {DEMO_NAME} at {self.resolution}px; "
                f"for CelebA-HQ pass --data.root /path/to/celeba_hq (a folder or .zip of images)"
            )
            return lfw_demo_images(self.resolution)
        # Builds the cache if prepare_data did not run here (e.g. nodes that do not share a filesystem
        # under prepare_data_per_node=False, or direct use outside a Trainer).
        path = build_cache(self.root, self.resolution, self.cache_dir)
        images = load_cache(path)
        # What caching changed is reported in detail once, when the cache is built; a reused cache
        # repeats it in brief here, with the sidecar that names the files.
        changes = summary(read_sidecar(path))
        when_cached = f"; when cached: {changes} (names in {sidecar_path(path)})" if changes else ""
        rank_zero_info(f"data: {len(images)} images from {self.root} at {self.resolution}px (cache {path}){when_cached}")
        if self.classes == "folders":
            with ImageSource(self.root) as source:
                names = cached_names(source.names, read_sidecar(path), str(path))
            self.class_names, self._labels = class_folders(names)
            rank_zero_info(f"data: {len(self.class_names)} classes from folders: {first_names(self.class_names)}")
        return images

    @property
    def n_classes(self) -> int:
        """Classes in the data (1 for unconditional data); known once the data is set up."""
        return max(1, len(self.class_names))

    def _check_batch_fits(self) -> None:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_device = math.ceil(len(self._images) / world_size)
        if self.batch_size > per_device:
            where = f" per device across {world_size} devices" if world_size > 1 else ""
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the dataset ({per_device} images{where} from "
                f"{self.root or DEMO_NAME}): no full batch can be drawn. Lower --data.batch_size."
            )

    @property
    def fingerprint(self) -> str:
        """Identifies the real images (source listing and preprocessing), e.g. for metric caches."""
        source = "lfw-demo" if self.root is None else fingerprint(self.root)
        return f"{source}-v{PREPROCESSING_VERSION}"

    @property
    def images(self) -> np.ndarray:
        """The real images as a uint8 (N, H, W, 3) array, loaded (and cached if needed) on first use."""
        if self._images is None:
            self.setup()
        return self._images

    def uint8_batches(self, batch_size: int = 64, limit: Optional[int] = None) -> Iterator[torch.Tensor]:
        """The real images in order as uint8 (B, 3, H, W) tensors, e.g. for FID statistics."""
        images = self.images
        end = len(images) if limit is None else min(limit, len(images))
        for start in range(0, end, batch_size):
            chunk = images[start : min(start + batch_size, end)]
            yield torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2)))

    def train_dataloader(self) -> DataLoader:
        dataset = ImageArrayDataset(self.images, labels=self._labels)
        trainer = self.trainer
        sampler = ResumableSampler(
            dataset,
            self.batch_size,
            flip=self.flip,
            # The seed Lightning itself gives its distributed samplers: seed_everything's.
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        sampler.position = self._resume_position(sampler)
        self._sampler = sampler
        return self._loader(dataset, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self._labels is None:
            dataset = ImageArrayDataset(self.images, limit=self.val_images)
        else:  # images are sorted by class: spread the picks so that every class is validated
            picks = np.unique(np.linspace(0, len(self.images) - 1, min(self.val_images, len(self.images))).round().astype(int))
            dataset = ImageArrayDataset(np.asarray(self.images[picks]), labels=self._labels[picks])
        return self._loader(dataset, sampler=None, drop_last=False)

    def _loader(self, dataset: Dataset, sampler: Optional[ResumableSampler], drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            # Worker seeds are drawn from this generator, not from the global RNG that training
            # draws latents from, so starting an epoch's iterator never shifts the training stream.
            generator=torch.Generator(),
        )

    # --- position in the run, for exact resumes -------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning calls this once per batch, just before the step that uses it (unlike the
        # DataLoader's iterator, which runs ahead), which makes it the count of batches consumed.
        if self.trainer is not None and self.trainer.training and self._sampler is not None:
            self._sampler.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        if self._sampler is None:  # not training (e.g. `validate`): nothing to resume
            return {}
        state = {"batches_consumed": self._sampler.position, "batches_per_epoch": self._sampler.batches_per_epoch}
        if self.class_names:  # for sample.py --class <name>
            state["class_names"] = list(self.class_names)
        return state

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_state = dict(state_dict) or None

    def _resume_position(self, sampler: ResumableSampler) -> int:
        """Where a resumed run's data continues: the saved position, or with another batch size or
        number of devices (other epoch lengths) the start of the next epoch."""
        state, self._resume_state = self._resume_state, None
        if state is None:  # a new run, or the loader rebuilt mid-run (reload_dataloaders_every_n_epochs)
            return self._sampler.position if self._sampler is not None else 0
        if state["batches_per_epoch"] == sampler.batches_per_epoch:
            return state["batches_consumed"]
        epoch = state["batches_consumed"] // state["batches_per_epoch"] + 1
        rank_zero_info(
            f"data: the checkpoint was written with {state['batches_per_epoch']} batches per epoch, this run has "
            f"{sampler.batches_per_epoch} (another batch size or number of devices); the data order continues "
            f"at the start of epoch {epoch}"
        )
        return epoch * sampler.batches_per_epoch

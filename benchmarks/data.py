"""Data loader throughput: the preprocessed uint8 cache vs decoding JPEGs every epoch.

    python -m benchmarks.data                       # 256 synthetic 1024x1024 JPEGs -> 128 px
    python -m benchmarks.data --root /data/CelebA-HQ-img --limit 1000

"decode" reads each JPEG, center-crops and resizes it (what training would do without the cache,
using the same functions the cache builder uses); "cache" reads the memory-mapped uint8 array
built once by ImageDataModule. Images/s at batch 32 for 0, 1 and 2 DataLoader workers, after one
warm-up batch. Compare with a training step's consumption: batch x (num_d_steps) / step time.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import benchmark_parser, markdown_table, parse_device_args, write_results  # noqa: E402

from biggan_smyrf.data import ImageDataModule  # noqa: E402
from biggan_smyrf.data.cache import center_crop_resize  # noqa: E402
from biggan_smyrf.data.sources import list_images, open_rgb  # noqa: E402


class DecodingDataset(Dataset):
    """Decode + crop + resize per access: the loader without the cache."""

    def __init__(self, root: Path, names: list[str], resolution: int):
        self.root, self.names, self.resolution = root, names, resolution

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        image = center_crop_resize(open_rgb(self.root / self.names[i], min_size=2 * self.resolution), self.resolution)
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 127.5 - 1, torch.tensor(0)


def synthetic_jpegs(folder: Path, n: int, size: int = 1024) -> Path:
    """Smooth random colour fields saved as quality-95 JPEGs, CelebA-HQ's size and format."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def images_per_second(dataset: Dataset, workers: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: worker start, first decode
    start, count = time.perf_counter(), 0
    for images, _ in it:
        count += len(images)
    return count / (time.perf_counter() - start)


def build_parser():
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--root", help="a folder of JPEGs (default: synthetic 1024x1024 JPEGs)")
    parser.add_argument("--n", type=int, default=256, help="synthetic images to make")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images of --root")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser


def main():
    args = parse_device_args(build_parser())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else synthetic_jpegs(Path(tmp, "images"), args.n)
        names = list_images(root)[: args.limit]
        data = ImageDataModule(root=str(root), resolution=args.resolution, batch_size=args.batch_size,
                               cache_dir=str(Path(tmp) / "cache") if not args.root else "data/cache")
        start = time.perf_counter()
        data.prepare_data()
        data.setup()
        build_s = time.perf_counter() - start
        cached = data.train_dataloader().dataset
        rows = []
        for workers in (0, 1, 2):
            for source, dataset in (("decode JPEG", DecodingDataset(root, names, args.resolution)), ("cache", cached)):
                ips = images_per_second(dataset, workers, args.batch_size)
                rows.append({"source": source, "workers": workers, "images_per_s": ips})
                print(rows[-1], flush=True)
    table = markdown_table(rows, [("source", "source"), ("workers", "workers"), ("images_per_s", "images/s")])
    table += f"\n\nOne-time cache build: {build_s:.1f} s for {len(names)} images ({len(names) / build_s:.0f} images/s)."
    print(table)
    meta = {"images": len(names), "resolution": args.resolution, "batch_size": args.batch_size,
            "cache_build_s": build_s, "source": args.root or f"{args.n} synthetic 1024x1024 JPEGs"}
    stem = write_results("data", torch.device("cpu"), rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()

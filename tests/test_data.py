"""The image pipeline: folder/zip listing, RGB conversion, center crop, the on-disk cache, the DataModule."""
from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biggan_smyrf.data import (
    ImageArrayDataset,
    ImageDataModule,
    build_cache,
    fingerprint,
    list_images,
    load_cache,
)
from biggan_smyrf.data import cache as cache_module
from biggan_smyrf.data import report

RES = 16
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def red_blue_between_green(width: int = 40, height: int = 20) -> Image.Image:
    """Green | red | blue | green in four vertical bands: a center crop keeps only red | blue."""
    image = Image.new("RGB", (width, height), GREEN)
    quarter = width // 4
    image.paste(RED, (quarter, 0, 2 * quarter, height))
    image.paste(BLUE, (2 * quarter, 0, 3 * quarter, height))
    return image


def make_dataset(root: Path) -> dict[str, tuple[int, int, int]]:
    """A small folder of images in assorted formats and modes; returns name -> expected uniform colour."""
    save(Image.new("RGB", (32, 32), RED), root / "a_red.jpg", quality=95)
    save(Image.new("RGB", (32, 32), BLUE), root / "nested" / "b_blue.png")
    save(Image.new("RGB", (32, 32), GREEN), root / "nested" / "deeper" / "c_green.webp", lossless=True)
    save(Image.new("RGB", (32, 32), BLUE), root / "d_upper.PNG")
    save(Image.new("L", (32, 32), 128), root / "e_gray.png")
    save(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), root / "f_rgba_clear.png")
    save(Image.new("RGBA", (32, 32), (255, 0, 0, 128)), root / "g_rgba_half.png")
    save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), root / "h_cmyk.jpg", quality=95)
    save(Image.new("RGB", (32, 32), GREEN).convert("P"), root / "i_palette.png")
    save(Image.new("RGB", (32, 32), RED), root / "j_red.bmp")
    save(red_blue_between_green(), root / "wide.png")
    (root / "notes.txt").write_text("not an image")
    return {
        "a_red.jpg": RED,
        "nested/b_blue.png": BLUE,
        "nested/deeper/c_green.webp": GREEN,
        "d_upper.PNG": BLUE,
        "e_gray.png": (128, 128, 128),
        "f_rgba_clear.png": WHITE,
        "g_rgba_half.png": (255, 127, 127),  # half-transparent red over white
        "h_cmyk.jpg": RED,
        "i_palette.png": GREEN,
        "j_red.bmp": RED,
    }


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "faces"
    colours = make_dataset(root)
    return root, colours


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def cached_images(root: Path, cache_dir: Path, resolution: int = RES) -> dict[str, np.ndarray]:
    images = load_cache(build_cache(root, resolution, cache_dir, progress=False))
    names = list_images(root)
    assert images.shape == (len(names), resolution, resolution, 3) and images.dtype == np.uint8
    return dict(zip(names, images))


def test_folder_listing_is_recursive_sorted_and_filtered(dataset):
    root, colours = dataset
    (root / ".ipynb_checkpoints").mkdir()
    save(Image.new("RGB", (8, 8)), root / ".ipynb_checkpoints" / "copy.png")
    names = list_images(root)
    assert names == sorted(list(colours) + ["wide.png"])
    assert "notes.txt" not in names and not any("ipynb" in name for name in names)


def test_every_mode_becomes_rgb_with_the_right_colour(dataset, cache_dir):
    root, colours = dataset
    images = cached_images(root, cache_dir)
    for name, colour in colours.items():
        mean = images[name].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - colour).max() <= 4, (name, mean, colour)


def test_non_square_images_are_center_cropped(dataset, cache_dir, tmp_path):
    root, _ = dataset
    save(red_blue_between_green().rotate(90, expand=True), root / "tall.png")
    images = cached_images(root, cache_dir)
    wide = images["wide.png"].astype(int)
    # The green outer bands fall outside the centered square; red fills the left, blue the right.
    assert wide[..., 1].max() <= 8
    assert np.abs(wide[:, : RES // 2 - 2] - RED).max() <= 8
    assert np.abs(wide[:, RES // 2 + 2 :] - BLUE).max() <= 8
    tall = images["tall.png"].astype(int)  # rotated 90 degrees counter-clockwise: blue on top
    assert tall[..., 1].max() <= 8
    assert np.abs(tall[: RES // 2 - 2] - BLUE).max() <= 8
    assert np.abs(tall[RES // 2 + 2 :] - RED).max() <= 8


def test_unreadable_files_are_skipped_with_a_warning_naming_them(dataset, cache_dir):
    root, colours = dataset
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated garbage")
    (root / "nested" / "text_in_disguise.png").write_text("hello")
    with pytest.warns(UserWarning, match=r"skipped 2 of .*broken\.jpg.*text_in_disguise\.png"):
        path = build_cache(root, RES, cache_dir, progress=False)
    assert len(load_cache(path)) == len(colours) + 1  # + wide.png; notes.txt was never an image candidate
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["count"] == len(colours) + 1 and sidecar["skipped_count"] == 2
    assert sidecar["skipped"] == ["broken.jpg", "nested/text_in_disguise.png"]
    assert sidecar["source"] == str(root.resolve())


def test_nothing_readable_raises_and_leaves_no_cache(tmp_path, cache_dir):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match=str(root)):
        build_cache(root, RES, cache_dir, progress=False)
    assert list(cache_dir.iterdir()) == []


def test_empty_folder_and_missing_path_raise_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError) as error:
        ImageDataModule(root=str(empty), resolution=RES).prepare_data()
    assert str(empty) in str(error.value) and ".jpg" in str(error.value) and ".webp" in str(error.value)

    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError) as error:
        ImageDataModule(root=str(missing))
    assert str(missing) in str(error.value) and "--data.root" in str(error.value)


def test_zip_gives_the_same_images_as_the_folder(dataset, tmp_path, cache_dir):
    root, _ = dataset
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    assert list_images(archive) == list_images(root)
    from_folder = load_cache(build_cache(root, RES, cache_dir, progress=False))
    from_zip = load_cache(build_cache(archive, RES, cache_dir, progress=False))
    np.testing.assert_array_equal(from_zip, from_folder)


def test_cache_is_built_once_then_reused(dataset, cache_dir, monkeypatch):
    root, _ = dataset
    first = ImageDataModule(root=str(root), resolution=RES, batch_size=2, cache_dir=str(cache_dir))
    first.prepare_data()
    [npy] = cache_dir.glob("*.npy")
    mtime = npy.stat().st_mtime_ns

    def must_not_decode(*args):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache_module, "_decode", must_not_decode)
    second = ImageDataModule(root=str(root), resolution=RES, batch_size=2, cache_dir=str(cache_dir))
    second.prepare_data()
    second.setup("fit")
    assert npy.stat().st_mtime_ns == mtime and list(cache_dir.glob("*.npy")) == [npy]
    np.testing.assert_array_equal(second.images, load_cache(npy))
    assert isinstance(second.images, np.memmap)


def damage(path: Path, how: str) -> None:
    sidecar = path.with_suffix(".json")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other images":  # same shape and size, other pixels: only the checksum tells
        np.save(path, np.zeros_like(load_cache(path)))
    elif how == "corrupt record":
        sidecar.write_text(sidecar.read_text()[:20])
    elif how == "no record":
        sidecar.unlink()


@pytest.mark.parametrize("how", ["truncated", "empty", "other images", "corrupt record", "no record"])
def test_a_damaged_cache_is_reported_in_one_line_and_rebuilt(dataset, cache_dir, how):
    root, _ = dataset
    path = build_cache(root, RES, cache_dir, progress=False)
    good = np.array(load_cache(path))
    damage(path, how)
    with pytest.warns(UserWarning, match=r"the cache .* is unusable \(.+\); rebuilding it from") as warned:
        assert build_cache(root, RES, cache_dir, progress=False) == path
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    np.testing.assert_array_equal(load_cache(path), good)
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]


def test_cache_files_follow_the_umask(dataset, cache_dir):
    root, _ = dataset
    previous = os.umask(0o022)
    try:
        path = build_cache(root, RES, cache_dir, progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(path.with_suffix(".json").stat().st_mode) == 0o644


def test_cache_key_follows_the_dataset_and_resolution(dataset, cache_dir):
    root, colours = dataset
    before = build_cache(root, RES, cache_dir, progress=False)
    key = fingerprint(root)
    assert before.name == f"faces-{key}-{RES}px-v{cache_module.PREPROCESSING_VERSION}.npy"
    save(Image.new("RGB", (32, 32), RED), root / "nested" / "new.jpg")
    assert fingerprint(root) != key
    after = build_cache(root, RES, cache_dir, progress=False)
    assert after != before and len(load_cache(after)) == len(load_cache(before)) + 1
    assert build_cache(root, 32, cache_dir, progress=False).name.endswith(f"-32px-v{cache_module.PREPROCESSING_VERSION}.npy")


def test_dataset_folder_is_never_written(dataset, cache_dir):
    root, _ = dataset
    before = snapshot(root)
    module = ImageDataModule(root=str(root), resolution=RES, batch_size=2, cache_dir=str(cache_dir))
    module.prepare_data()
    module.setup("fit")
    next(iter(module.train_dataloader()))
    assert snapshot(root) == before
    # Only the published cache and its sidecar remain: no temporary files.
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]
    with pytest.raises(ValueError, match="inside the dataset"):
        build_cache(root, RES, root / "cache", progress=False)


def test_interrupted_build_leaves_no_cache(dataset, cache_dir, monkeypatch):
    root, _ = dataset

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, RES, cache_dir, progress=False)
    assert list(cache_dir.iterdir()) == []


def test_batches_are_float_images_in_unit_range_with_zero_labels(dataset, cache_dir):
    root, colours = dataset
    module = ImageDataModule(
        root=str(root), resolution=RES, batch_size=4, num_workers=0, cache_dir=str(cache_dir), val_images=6
    )
    module.prepare_data()
    module.setup("fit")
    n = len(colours) + 1
    train = list(module.train_dataloader())
    assert len(train) == n // 4  # drop_last
    images, labels = train[0]
    assert images.shape == (4, 3, RES, RES) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.min() == -1 and images.max() == 1
    assert labels.dtype == torch.long and labels.tolist() == [0, 0, 0, 0]
    val = torch.cat([x for x, _ in module.val_dataloader()])
    assert len(val) == 6
    expected = torch.from_numpy(np.array(module.images[:6])).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(val, expected)


def test_uint8_batches_cover_the_images_in_order(dataset, cache_dir):
    root, colours = dataset
    module = ImageDataModule(root=str(root), resolution=RES, batch_size=2, cache_dir=str(cache_dir))
    batches = list(module.uint8_batches(batch_size=4))
    assert [b.shape for b in batches] == [(4, 3, RES, RES), (4, 3, RES, RES), (3, 3, RES, RES)]
    assert all(b.dtype == torch.uint8 for b in batches)
    np.testing.assert_array_equal(torch.cat(batches).permute(0, 2, 3, 1).numpy(), module.images)


def test_flip_flips_training_images_only_when_enabled(dataset, cache_dir):
    root, _ = dataset
    images = load_cache(build_cache(root, RES, cache_dir, progress=False))
    wide = list_images(root).index("wide.png")
    original = torch.from_numpy(np.array(images[wide])).permute(2, 0, 1).float() / 127.5 - 1
    data = ImageArrayDataset(images)
    assert torch.equal(data[(wide, True)][0], original.flip(-1))
    assert torch.equal(data[(wide, False)][0], original) and torch.equal(data[wide][0], original)
    for flip in (True, False):
        module = ImageDataModule(root=str(root), resolution=RES, batch_size=2, num_workers=0, cache_dir=str(cache_dir), flip=flip)
        coins = [f for _, f in module.train_dataloader().sampler.draws(epoch=0)]
        assert (True in coins and False in coins) if flip else not any(coins)


def test_dataset_pickles_a_memmap_by_path(dataset, cache_dir):
    root, _ = dataset
    images = load_cache(build_cache(root, RES, cache_dir, progress=False))
    data = ImageArrayDataset(images)
    payload = pickle.dumps(data)
    assert len(payload) < images.nbytes // 2
    restored = pickle.loads(payload)
    assert torch.equal(restored[3][0], data[3][0]) and len(restored) == len(data)


def test_demo_data_is_the_lfw_faces_at_the_requested_resolution():
    module = ImageDataModule(root=None, resolution=32, batch_size=16, num_workers=0, val_images=256)
    module.prepare_data()
    module.setup("fit")
    assert module.images.shape == (100, 32, 32, 3) and module.images.dtype == np.uint8
    assert module.images.std() > 20  # real faces, not a constant fill
    np.testing.assert_array_equal(module.images[..., 0], module.images[..., 2])  # grayscale as RGB
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert len(module.train_dataloader()) == 100 // 16
    assert sum(len(x) for x, _ in module.val_dataloader()) == 100


@pytest.mark.parametrize("resolution", [8, 24, 100])
def test_resolution_must_be_a_power_of_two_of_at_least_16(resolution):
    with pytest.raises(ValueError, match="power of two"):
        ImageDataModule(resolution=resolution)


def test_batch_size_is_checked(dataset, cache_dir):
    with pytest.raises(ValueError, match="batch_size"):
        ImageDataModule(batch_size=0)
    root, colours = dataset
    module = ImageDataModule(root=str(root), resolution=RES, batch_size=64, cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match=r"batch_size 64 is larger than the dataset \(11 images"):
        module.setup("fit")


def odd_images(root: Path) -> None:
    """Readable files that caching at 32 px must change beyond resizing, and one plain RGB image."""
    save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), root / "cmyk.jpg")
    save(Image.new("L", (40, 40), 128), root / "gray.png")
    save(Image.new("RGBA", (40, 40), (255, 0, 0, 128)), root / "rgba.png")
    save(Image.new("RGB", (40, 40), GREEN).convert("P"), root / "palette.png")
    save(Image.new("RGB", (16, 16), RED), root / "tiny.png")
    save(Image.new("RGB", (1024, 768), BLUE), root / "photo.JPG", quality=90)
    save(Image.new("RGB", (40, 40), RED), root / "plain.png")
    (root / "broken.png").write_text("not an image")


def data_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]


def test_caching_reports_each_kind_of_change_once(tmp_path, cache_dir, caplog):
    odd_images(tmp_path / "odd")
    caplog.set_level(logging.INFO)
    with pytest.warns(UserWarning, match=r"skipped 1 of 8 .*broken\.png"):
        path = build_cache(tmp_path / "odd", 32, cache_dir, progress=False)
    assert data_lines(caplog) == [
        "data: converted 4 images to RGB (CMYK 1: cmyk.jpg; grayscale 1: gray.png; palette 1: palette.png; RGBA 1: rgba.png)",
        "data: upscaled 1 image smaller than 32 px, which will look blurry: tiny.png",
        "data: cropped 1 non-square image to its centre square: photo.JPG",
    ]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["converted"] == {mode: {"count": 1, "names": [name]} for mode, name in
                                    (("CMYK", "cmyk.jpg"), ("L", "gray.png"), ("P", "palette.png"), ("RGBA", "rgba.png"))}
    assert sidecar["upscaled"] == {"count": 1, "names": ["tiny.png"]}
    assert sidecar["cropped"] == {"count": 1, "names": ["photo.JPG"]}
    assert sidecar["skipped"] == ["broken.png"] and sidecar["count"] == 7


def test_reused_cache_summarises_the_changes_in_one_line(tmp_path, cache_dir, caplog):
    odd_images(tmp_path / "odd")
    with pytest.warns(UserWarning, match="skipped 1"):
        build_cache(tmp_path / "odd", 32, cache_dir, progress=False)
    caplog.set_level(logging.INFO)
    caplog.clear()
    module = ImageDataModule(root=str(tmp_path / "odd"), resolution=32, batch_size=2, cache_dir=str(cache_dir))
    module.prepare_data()
    module.setup("fit")
    [line] = data_lines(caplog)
    assert line.startswith("data: 7 images from ") and line.endswith(
        "; when cached: 1 unreadable file skipped (broken.png); 4 images converted to RGB (CMYK, grayscale, "
        f"palette, RGBA); 1 image upscaled from below 32 px; 1 non-square image cropped (names in "
        f"{next(cache_dir.glob('*.json'))})"
    )


def test_caches_recorded_before_the_report_existed_are_summarised_too():
    old_sidecar = {"resolution": 64, "count": 9, "skipped_count": 7, "skipped": [f"{i}.jpg" for i in range(7)]}
    assert report.summary(old_sidecar) == "7 unreadable files skipped (0.jpg, 1.jpg, 2.jpg, 3.jpg, 4.jpg and 2 more)"
    assert report.summary({"resolution": 64, "count": 9, "skipped_count": 0, "skipped": []}) is None

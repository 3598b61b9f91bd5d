"""Class-conditional data: labels from class folders, through the cache, into batches and the model check."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from biggan_smyrf.data import ImageDataModule
from biggan_smyrf.data.classes import class_folders
from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig
from biggan_smyrf.training.module import BigGAN

RES = 16
# Class folders (sorted: labels 0, 1, 2) with the grey level of their images, to read the class back from pixels.
GREYS = {"cats": 40, "dogs": 130, "zebras": 220}


def class_dataset(root: Path, per_class: int = 4) -> Path:
    for name, grey in GREYS.items():
        for i in range(per_class):
            folder = root / name / ("more" if i % 2 else "")  # everything below a class folder is that class
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (grey,) * 3).save(folder / f"{i}.png")
    return root


def module_for(root, tmp_path, **kwargs) -> ImageDataModule:
    data = ImageDataModule(root=str(root), resolution=RES, batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache"),
                           classes="folders", val_images=6, **kwargs)
    data.prepare_data()
    data.setup("fit")
    return data


def grey_of(images: torch.Tensor) -> list[int]:
    return [round((float(x.mean()) + 1) * 127.5) for x in images]


def assert_labels_match_pixels(data: ImageDataModule):
    for images, labels in data.train_dataloader():
        assert [list(GREYS.values())[label] for label in labels.tolist()] == grey_of(images)


def test_labels_come_from_class_folders_and_follow_the_images(tmp_path):
    data = module_for(class_dataset(tmp_path / "animals"), tmp_path)
    assert data.class_names == ["cats", "dogs", "zebras"] and data.n_classes == 3
    assert_labels_match_pixels(data)
    val = [batch for batch in data.val_dataloader()]
    labels = torch.cat([y for _, y in val])
    assert labels.dtype == torch.long and labels.tolist() == [0, 0, 1, 1, 2, 2]  # spread over the classes
    assert grey_of(torch.cat([x for x, _ in val])) == [40, 40, 130, 130, 220, 220]


def test_a_zip_of_the_folder_and_skipped_files_keep_labels_aligned(tmp_path):
    root = class_dataset(tmp_path / "animals")
    (root / "cats" / "broken.png").write_bytes(b"not a png")  # skipped by the cache: labels must not shift
    archive = tmp_path / "animals.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.png")):
            zf.write(path, Path("animals") / path.relative_to(root))  # one top folder, as zipping a folder does
    with pytest.warns(UserWarning, match="skipped 1"):
        data = module_for(archive, tmp_path)
    assert data.class_names == ["cats", "dogs", "zebras"] and len(data.images) == 12
    assert_labels_match_pixels(data)


def test_images_outside_class_folders_and_the_demo_are_refused(tmp_path):
    root = class_dataset(tmp_path / "animals")
    Image.new("RGB", (20, 20)).save(root / "loose.png")
    with pytest.raises(ValueError, match="1 images are not in a class folder: loose.png"):
        module_for(root, tmp_path)
    with pytest.raises(ValueError, match="built-in LFW"):
        ImageDataModule(root=None, classes="folders")
    with pytest.raises(ValueError, match="data.classes must be one of"):
        ImageDataModule(root=str(root), classes="subfolders")
    assert class_folders(["a/x.png", "b/y/z.png"])[1].tolist() == [0, 1]


def test_the_model_must_have_as_many_classes_as_the_data(tmp_path):
    data = module_for(class_dataset(tmp_path / "animals"), tmp_path)

    def model(n_classes):
        return BigGAN(generator=GeneratorConfig(resolution=32, ch=4, n_classes=n_classes, attention_resolutions=[]),
                      discriminator=DiscriminatorConfig(resolution=32, ch=4, n_classes=n_classes, attention_resolutions=[]))

    model(3).check_classes(data)
    with pytest.raises(ValueError, match="the data has 3 classes .* set both to 3"):
        model(1).check_classes(data)
    unconditional = ImageDataModule(root=str(tmp_path / "animals"), resolution=RES, cache_dir=str(tmp_path / "cache"))
    model(1000).check_classes(unconditional)  # unconditional data trains any model, on class 0


@pytest.mark.slow
def test_train_py_on_class_folders(tmp_path, monkeypatch, capsys):
    from biggan_smyrf.cli import main as train_main
    from conftest import DEMO, FAST, load, train

    root = class_dataset(tmp_path / "animals")
    args = ["--run=c", f"--data.root={root}", "--data.classes=folders", "--model.loop.max_g_iters=2"]
    proc = train(tmp_path, *args, "--model.generator.n_classes=3", "--model.discriminator.n_classes=3")
    assert "3 classes from folders: cats, dogs, zebras" in proc.stdout + proc.stderr
    assert load(tmp_path / "checkpoints" / "c" / "last.ckpt")["state_dict"]["G.shared.weight"].shape[0] == 3
    # A model of 1 class on that data: refused at start-up (train.py's entry point, in-process).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as wrong:
        train_main(["--config", str(DEMO), *FAST, *args[1:], "--run=wrong"])
    assert wrong.value.code not in (0, None)
    assert "the data has 3 classes" in f"{wrong.value.code if isinstance(wrong.value.code, str) else ''}{capsys.readouterr().err}"

    # The run's class names travel with its checkpoint and its exported generator: --class <folder name>.
    from biggan_smyrf.inference import export_generator, load_generator
    from biggan_smyrf.inference.cli import main as sample_main

    ckpt = tmp_path / "checkpoints" / "c" / "last.ckpt"
    exported = export_generator(load_generator(ckpt), tmp_path / "g.pt")
    assert load_generator(exported).class_names == ["cats", "dogs", "zebras"]
    sample_main(["--ckpt", str(exported), "--out", str(tmp_path / "dogs"), "--n", "2", "--class", "dogs"])
    assert (tmp_path / "dogs" / "grid.png").is_file()
    with pytest.raises(SystemExit, match="unknown class 'horses'; its classes: cats, dogs, zebras"):
        sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "h"), "--class", "horses"])

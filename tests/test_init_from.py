"""model.init_from: a new run from another run's weights (train.py or BigGAN-PyTorch), attention blocks added or not."""
import copy
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO, FAST, load

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.cli import main as train_main
from biggan_smyrf.inference import export_generator, load_generator
from biggan_smyrf.inference.checkpoint import CheckpointError
from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig
from biggan_smyrf.training.init_from import check_source, initialise_from
from biggan_smyrf.training.module import BigGAN


def source_checkpoint(demo_run):
    return demo_run / "checkpoints" / "demo" / "last.ckpt"


def module_like(ckpt, **generator_changes) -> BigGAN:
    hparams = copy.deepcopy(load(ckpt)["hyper_parameters"])
    hparams["generator"].update(generator_changes)
    return BigGAN(**{k: v for k, v in hparams.items() if not k.startswith("_")})  # not LightningCLI's _instantiator


def test_added_attention_block_starts_as_identity(demo_run):
    """The demo has G attention at 32x32; a run adding 16x16 draws exactly the source's images."""
    ckpt = source_checkpoint(demo_run)
    module = module_like(ckpt, attention_resolutions=[16, 32])
    assert initialise_from(module, ckpt) == ["G.blocks.1.1", "G_ema.blocks.1.1"]
    source = load_generator(ckpt, attention="dense")
    z, y = torch.randn(4, source.config.dim_z, generator=torch.Generator().manual_seed(0)), torch.zeros(4, dtype=torch.long)
    G_ema = module.G_ema.module.eval()
    with torch.no_grad():
        G_ema.blocks[2][1].set_config(source.blocks[2][1].config)
        assert torch.equal(G_ema(z, y), source(z, y))
    state = load(ckpt)["state_dict"]
    assert torch.equal(module.D.linear.parametrizations.weight.original, state["D.linear.parametrizations.weight.original"])
    assert module.G.blocks[1][1].gamma.item() == 0.0


@pytest.mark.parametrize("change, message", [
    (dict(ch=16), r"G.linear.bias is \(512,\) there but \(1024,\) in this run"),
    (dict(attention_resolutions=[]), "has tensors this run's G lacks"),
])
def test_another_architecture_is_refused_by_name(demo_run, change, message):
    ckpt = source_checkpoint(demo_run)
    with pytest.raises(CheckpointError, match=message):
        initialise_from(module_like(ckpt, **change), ckpt)


def test_an_exported_generator_is_refused(demo_run, tmp_path):
    ckpt = source_checkpoint(demo_run)
    exported = export_generator(load_generator(ckpt), tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="exported generator .no D."):
        initialise_from(module_like(ckpt), exported)


@pytest.mark.slow
def test_train_py_fine_tunes_into_a_new_run_and_resumes_without_the_source(demo_run, run_dir, caplog):
    """Both runs through train.py's entry point in this process (a process start is seconds of imports)."""
    caplog.set_level(logging.INFO)
    source = run_dir / "source.ckpt"
    source.write_bytes(source_checkpoint(demo_run).read_bytes())
    args = ["--run=ft", f"--model.init_from={source}", "--model.loop.max_g_iters=2", "--model.attention.train.kind=dense",
            "--model.generator.attention_resolutions=[16,32]"]
    train_main(["--config", str(DEMO), *FAST, *args])
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "initialised from" in logged and "G.blocks.1.1" in logged
    assert load(run_dir / "checkpoints" / "ft" / "last.ckpt")["biggan_smyrf"]["g_iters"] == 2  # a new run's count
    source.unlink()  # a resume takes its weights from its own checkpoint
    train_main(["--config", str(DEMO), *FAST, *args[:2], "--ckpt_path=last", "--model.loop.max_g_iters=3", *args[3:]])
    assert load(run_dir / "checkpoints" / "ft" / "last.ckpt")["biggan_smyrf"]["g_iters"] == 3


def test_train_py_refuses_a_missing_source_before_preparing_anything(tmp_path, monkeypatch, capsys):
    """train.py's own entry point, in-process: it stops at parsing, so no run is started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit:
        train_main(["--config", str(DEMO), *FAST, "--run=ft", f"--model.init_from={tmp_path / 'nowhere.ckpt'}"])
    assert exit.value.code not in (0, None)
    message = f"{exit.value.code if isinstance(exit.value.code, str) else ''}{capsys.readouterr().err}"
    assert "checkpoint not found" in message and "model.init_from takes a train.py checkpoint" in message
    assert not (tmp_path / "checkpoints" / "ft").exists()


def biggan_pytorch_folder(tmp_path):
    """A BigGAN-PyTorch run folder of the reference G and D (tests/data/biggan_pytorch), no G_ema."""
    data = Path(__file__).resolve().parent / "data" / "biggan_pytorch"
    folder = tmp_path / "weights" / "BigGAN_tiny"
    folder.mkdir(parents=True)
    shutil.copy(data / "g64_flat.pth", folder / "G.pth")
    shutil.copy(data / "d64.pth", folder / "D.pth")
    return folder, torch.load(data / "g64_flat_expected.pt"), torch.load(data / "d64_expected.pt")


def test_a_biggan_pytorch_run_folder_with_an_attention_block_added(tmp_path):
    folder, g_ref, d_ref = biggan_pytorch_folder(tmp_path)
    dense = AttentionConfig(kind="dense")
    module = BigGAN(
        generator=GeneratorConfig(resolution=64, ch=2, n_classes=2, shared_dim=4, dim_z=8, hier=False,
                                  attention_resolutions=[16, 32], attention=dense),
        discriminator=DiscriminatorConfig(resolution=64, ch=2, n_classes=2, attention_resolutions=[]),
    )
    assert initialise_from(module, folder) == ["G.blocks.1.1", "G_ema.blocks.1.1"]
    with torch.no_grad():
        assert (module.G_ema.module.eval()(g_ref["z"], g_ref["y"]) - g_ref["images"]).abs().max() < 1e-5
        torch.testing.assert_close(module.D.eval()(d_ref["x"], d_ref["y"]), d_ref["scores"].flatten(), rtol=1e-5, atol=1e-5)
    (folder / "D.pth").unlink()
    with pytest.raises(CheckpointError, match="has no D.pth"):
        check_source(folder)

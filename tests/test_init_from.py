"""model.init_from: a new run from another run's weights, with attention blocks added or not."""
import copy

import pytest
import torch
from conftest import load, train

from biggan_smyrf.inference import export_generator, load_generator
from biggan_smyrf.inference.checkpoint import CheckpointError
from biggan_smyrf.training.init_from import initialise_from
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
def test_train_py_fine_tunes_into_a_new_run_and_resumes_without_the_source(demo_run, tmp_path):
    source = tmp_path / "source.ckpt"
    source.write_bytes(source_checkpoint(demo_run).read_bytes())
    args = ["--run=ft", f"--model.init_from={source}", "--model.loop.max_g_iters=2", "--model.attention.train.kind=dense",
            "--model.generator.attention_resolutions=[16,32]"]
    proc = train(tmp_path, *args)
    assert "initialised from" in proc.stdout + proc.stderr and "G.blocks.1.1" in proc.stdout + proc.stderr
    assert load(tmp_path / "checkpoints" / "ft" / "last.ckpt")["biggan_smyrf"]["g_iters"] == 2  # a new run's count
    source.unlink()  # a resume takes its weights from its own checkpoint
    train(tmp_path, *args[:2], "--ckpt_path=last", "--model.loop.max_g_iters=3", *args[3:])
    assert load(tmp_path / "checkpoints" / "ft" / "last.ckpt")["biggan_smyrf"]["g_iters"] == 3


def test_train_py_refuses_a_missing_source_before_preparing_anything(tmp_path):
    proc = train(tmp_path, "--run=ft", f"--model.init_from={tmp_path / 'nowhere.ckpt'}", check=False)
    assert proc.returncode != 0
    assert "checkpoint not found" in proc.stderr and "model.init_from takes a train.py checkpoint" in proc.stderr
    assert not (tmp_path / "checkpoints" / "ft").exists()

"""SpeedConfig: channels_last trains the same model as the plain step; fused Adam only on CUDA."""
from __future__ import annotations

import torch

from biggan_smyrf.training import BigGAN, SpeedConfig

from helpers import fit, tiny_module


def trained(tmp_path, speed: SpeedConfig, **trainer_kwargs) -> BigGAN:
    torch.manual_seed(0)
    module = tiny_module(speed=speed)
    fit(module, tmp_path, **trainer_kwargs)
    return module


def assert_same_training(module: BigGAN, reference: BigGAN, rtol: float) -> None:
    """The two runs made the same update, up to other kernels' rounding: |theta - theta_ref| is
    small against |theta_ref - theta_0| over all parameters together. (Per tensor it need not be:
    Adam's first steps are about lr * sign(grad), and a near-zero gradient's sign is rounding.)
    The state dicts also have the same keys, so checkpoints are interchangeable."""
    torch.manual_seed(0)
    initial = tiny_module().state_dict()
    state, want = module.state_dict(), reference.state_dict()
    assert state.keys() == want.keys()
    floats = [name for name, value in want.items() if value.is_floating_point()]
    difference = sum((state[n].float() - want[n].float()).square().sum() for n in floats).sqrt()
    update = sum((want[n].float() - initial[n].float()).square().sum() for n in floats).sqrt()
    assert update > 0 and difference / update < rtol, f"{difference / update:.1e}"


def test_channels_last_trains_the_same_model_in_nhwc(tmp_path):
    layouts = set()
    module = tiny_module(speed=SpeedConfig(channels_last=True))
    conv = next(m for m in module.D.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: layouts.add((i[0].is_contiguous(memory_format=torch.channels_last),
                                                            m.weight.is_contiguous(memory_format=torch.channels_last))))
    conv_ema = next(m for m in module.G_ema.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_ema.parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
    fit(module, tmp_path / "nhwc")
    assert layouts == {(True, True)}, layouts  # D's first conv saw NHWC images and an NHWC weight
    assert_same_training(trained(tmp_path / "nhwc2", SpeedConfig(channels_last=True)),
                         trained(tmp_path / "nchw", SpeedConfig()), rtol=1e-4)


def test_fused_adam_only_where_the_parameters_are_on_cuda(tmp_path):
    module = trained(tmp_path, SpeedConfig(fused_adam=True))
    assert all(not opt.defaults["fused"] for opt in module.trainer.optimizers)  # CPU: the default Adam


def test_a_run_switches_layout_when_resumed(tmp_path):
    """Checkpoints do not depend on the layout: an NHWC run resumes in NCHW and the other way round,
    weights and Adam's moments included, and trains on."""
    from biggan_smyrf.training import LoopConfig

    loop = dict(log_every=1, sample_every=100, ckpt_every=100, val_every=100, n_samples=4)
    for first, then in ((True, False), (False, True)):
        torch.manual_seed(0)
        module = tiny_module(speed=SpeedConfig(channels_last=first), loop=LoopConfig(max_g_iters=2, **loop))
        trainer = fit(module, tmp_path)
        ckpt = tmp_path / f"layout_{first}.ckpt"
        trainer.save_checkpoint(ckpt)
        resumed = tiny_module(speed=SpeedConfig(channels_last=then), loop=LoopConfig(max_g_iters=4, **loop))
        fit(resumed, tmp_path, ckpt_path=str(ckpt))
        assert resumed.g_iters == 4
        conv = next(m for m in resumed.G.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.parametrizations.weight.original.is_contiguous(
            memory_format=torch.channels_last if then else torch.contiguous_format)
        assert all(torch.isfinite(p).all() for p in resumed.G.parameters())


def test_cudnn_autotuning_is_on_unless_chosen_or_deterministic():
    from biggan_smyrf.cli import cudnn_benchmark

    assert cudnn_benchmark(None, None) is True and cudnn_benchmark(None, False) is True
    assert cudnn_benchmark(None, True) is False and cudnn_benchmark(None, "warn") is False
    assert cudnn_benchmark(False, None) is False and cudnn_benchmark(True, True) is True  # the user's choice

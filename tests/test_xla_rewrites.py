"""What was rewritten so the training step has no host fallbacks or host reads on XLA (see
tests/test_xla.py) equals what it replaced, bit for bit on the CPU: nearest x2 upsampling and
spectral norm (models/spectral.py; per-layer path), and the G_ema update (training/ema.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from biggan_smyrf.models import Generator, GeneratorConfig
from biggan_smyrf.models.layers import upsample2x, upsample2x_expand
from biggan_smyrf.models.spectral import spectral
from biggan_smyrf.training.ema import make_ema, update_ema


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_upsample2x_expand_equals_interpolate_nearest_forward_and_backward(dtype):
    """The formulation XLA runs (`upsample2x` uses it on XLA devices, PyTorch's kernel elsewhere)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7, dtype=dtype, requires_grad=True)
    # Large, mixed-magnitude gradients: a different summation order of the 2x2 blocks shows up.
    grad = torch.randn(3, 5, 12, 14, dtype=dtype) * torch.logspace(-3, 3, 14, dtype=dtype)
    expected = F.interpolate(x, scale_factor=2.0, mode="nearest")
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    out = upsample2x_expand(x)
    (out_grad,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(out, expected)
    assert torch.equal(out_grad, expected_grad)


def test_upsample2x_double_backward_and_bad_shape():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(upsample2x_expand, (x,))
    assert torch.equal(upsample2x(x), upsample2x_expand(x))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        upsample2x(torch.randn(3, 4, 4))


def twin_layers(make: type[nn.Module], *args) -> tuple[nn.Module, nn.Module]:
    """The same layer under PyTorch's spectral_norm and under ours: same weight, same u and v."""
    torch.manual_seed(1)
    reference = spectral_norm(make(*args), eps=1e-6)
    ours = spectral(make(*args), eps=1e-6)
    ours.load_state_dict(reference.state_dict(), strict=True)  # same keys: PyTorch's checkpoints load
    return reference, ours


@pytest.mark.parametrize("make,args,x_shape", [(nn.Conv2d, (4, 6, 3), (2, 4, 5, 5)), (nn.Linear, (7, 3), (5, 7))])
def test_spectral_norm_equals_pytorch_weights_vectors_and_gradients(make, args, x_shape):
    reference, ours = twin_layers(make, *args)
    x = torch.randn(x_shape)
    for _ in range(3):  # training forwards: one power iteration each, then a backward
        for layer in (reference, ours):
            layer.zero_grad()
            layer(x).square().sum().backward()
        for name, value in reference.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), name
        for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
            assert torch.equal(p_ours.grad, p_ref.grad), name
    reference.eval(), ours.eval()
    assert torch.equal(ours.weight, reference.weight)


def test_spectral_norm_checkpoints_load_both_ways_and_survive_deepcopy():
    reference, ours = twin_layers(nn.Conv2d, 4, 6, 3)
    with torch.no_grad():
        reference(torch.randn(1, 4, 5, 5))  # move u, v away from the shared state
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(copy.deepcopy(ours).state_dict(), strict=True)
    reference.eval(), ours.eval()
    assert torch.equal(ours.weight, reference.weight)
    assert ours.parametrizations.weight[0]._u.shape == (6,)


def test_ema_update_equals_averaged_model_update_parameters():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=[16]))
    ours, reference = make_ema(g, decay=0.9), make_ema(g, decay=0.9)
    for copying in (True, True, False, False, False):
        g(torch.randn(4, 120))  # train mode: moves BN statistics, num_batches_tracked, u and v
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        update_ema(ours, g, copy=copying)
        if copying:
            reference.n_averaged.zero_()  # the previous implementation's way to make it copy
        reference.update_parameters(g)
        for module in reference.modules():  # update_ema's re-normalisation of u and v
            for sn in getattr(getattr(module, "parametrizations", None), "weight", None) or []:
                if hasattr(sn, "_u"):
                    sn._u.copy_(F.normalize(sn._u, dim=0, eps=sn.eps))
                    sn._v.copy_(F.normalize(sn._v, dim=0, eps=sn.eps))
        expected = reference.state_dict()
        assert list(ours.state_dict()) == list(expected)
        for name, value in ours.state_dict().items():
            assert torch.equal(value, expected[name]), name

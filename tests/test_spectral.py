"""Spectral norm run for a whole network at once (models/spectral.py) against PyTorch's per-layer
spectral_norm: same power iteration, same weights and gradients, in far fewer kernels."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils._python_dispatch import TorchDispatchMode

from biggan_smyrf.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from biggan_smyrf.models.spectral import SpectralNorm, normalise_together, spectral


class TinyD(nn.Module):
    """A projection discriminator in miniature: convs, a linear layer and an embedding."""

    def __init__(self, normalised):
        super().__init__()
        self.conv1 = normalised(nn.Conv2d(3, 8, 3, padding=1))
        self.conv2 = normalised(nn.Conv2d(8, 6, 1))
        self.linear = normalised(nn.Linear(6, 1))
        self.embed = normalised(nn.Embedding(5, 6))

    def forward(self, x, y):
        h = F.relu(self.conv2(F.relu(self.conv1(x)))).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def twins(layout=torch.contiguous_format):
    """TinyD under PyTorch's spectral_norm, and under ours run together: same weights, u and v."""
    torch.manual_seed(0)
    reference = TinyD(lambda m: spectral_norm(m, eps=1e-6)).to(memory_format=layout)
    ours = normalise_together(TinyD(lambda m: spectral(m, eps=1e-6))).to(memory_format=layout)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 5, 5, generator=generator), torch.randint(5, (4,), generator=generator)


def hinge_step(net):
    """Two training forwards, then one backward: the graph of the first must survive the second's
    in-place update of u and v (why PyTorch's spectral norm clones them)."""
    real, fake = net(*inputs(1)), net(*inputs(2))
    (F.relu(1 - real).mean() + F.relu(1 + fake).mean()).backward()


def assert_close(actual, expected, name, tolerance=1e-5):
    """Float32 rounding: sigma = |Wᵀu| and PyTorch's uᵀWv agree to a few ulps, not bit for bit."""
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert error < tolerance, f"{name}: relative error {error:.1e}"


def assert_same_state_and_gradients(reference, ours, tolerance=1e-5):
    for name, value in reference.state_dict().items():
        assert_close(ours.state_dict()[name], value, name, tolerance)
    for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
        if p_ref.grad is None:  # a bias under a gradient penalty
            assert p_ours.grad is None, name
        else:
            assert_close(p_ours.grad, p_ref.grad, name, tolerance)


class CountOps(TorchDispatchMode):
    """Ops that reach a kernel (views, metadata-only ops and allocations left out): launches on a GPU."""

    METADATA = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "reshape", "unsqueeze", "squeeze",
                "as_strided", "detach", "alias", "select", "slice", "split", "lift_fresh",
                "empty", "empty_like", "empty_strided"}

    def __init__(self):
        super().__init__()
        self.count, self.casts = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.count += name not in self.METADATA
        self.casts += name == "_to_copy"
        return func(*args, **(kwargs or {}))


def ops_of_a_training_step(net, dtype=None) -> CountOps:
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        hinge_step(net)  # first call: lazy initialisation out of the count
        with CountOps() as counter:
            hinge_step(net)
    return counter


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_together_equals_pytorch_spectral_norm_over_training_steps(layout):
    reference, ours = twins(layout)
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (reference, ours)]
    for _ in range(3):
        for net, optimizer in zip((reference, ours), optimizers):
            optimizer.zero_grad()
            hinge_step(net)
        assert_same_state_and_gradients(reference, ours)
        for optimizer in optimizers:
            optimizer.step()
    reference.eval(), ours.eval()
    for (name, a), b in zip(reference.named_modules(), ours.modules()):
        if hasattr(a, "parametrizations"):
            assert_close(b.weight, a.weight, name)


def test_switched_off_it_is_pytorchs_spectral_norm_bit_for_bit():
    reference, ours = twins()
    normalise_together(ours, False)  # what benchmarks compare against
    for net in (reference, ours):
        hinge_step(net)
    for name, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
        assert torch.equal(p_ours.grad, p_ref.grad), name


def test_double_backward_through_the_together_path():
    """A gradient penalty (as R1 would add) differentiates spectral norm's backward once more."""
    reference, ours = twins()
    for net in (reference, ours):
        x, y = inputs(3)
        x.requires_grad_(True)
        (grad_x,) = torch.autograd.grad(net(x, y).sum(), x, create_graph=True)
        grad_x.square().sum().backward()
    assert_same_state_and_gradients(reference, ours)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("grad", [True, False])
def test_eval_forwards_are_pytorchs_bit_for_bit_and_leave_the_vectors_alone(grad, dtype):
    """Without gradients (sampling, validation) the per-layer path skips the clones and writes the
    weight in autocast's dtype itself: the same numbers as PyTorch's, in 3 kernels per layer."""
    reference, ours = twins()
    hinge_step(reference), hinge_step(ours)
    ours.load_state_dict(reference.state_dict())
    reference.eval(), ours.eval()
    before = copy.deepcopy(ours.state_dict())
    outputs, counts = [], []
    for net in (reference, ours):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            with CountOps() as counter:
                outputs.append(net(*inputs(4)))
        counts.append(counter.count)
    assert torch.equal(outputs[1], outputs[0])
    for name, value in ours.state_dict().items():
        assert torch.equal(value, before[name]), name
    if not grad:  # 4 layers: PyTorch's 5 kernels each (6 with the cast of conv and linear weights), ours 3
        assert counts[1] == counts[0] - 4 * 2 - (3 if dtype else 0)


def test_together_path_issues_less_than_half_the_kernels_of_pytorchs():
    """Per layer and forward+backward, spectral norm's own kernels: what the step costs beyond
    the same network without spectral norm."""
    torch.manual_seed(0)
    plain = ops_of_a_training_step(TinyD(lambda m: m)).count
    reference, ours = twins()
    ours_extra = ops_of_a_training_step(ours).count - plain
    reference_extra = ops_of_a_training_step(reference).count - plain
    # Measured per layer and training forward: PyTorch's 22; ours 8 (2 mv and the division, 5 in
    # the backward) plus 9 multi-tensor kernels per network forward that all its layers share.
    n_network_forwards, n_layers = 2, 4
    assert reference_extra >= 20 * n_layers * n_network_forwards
    assert ours_extra <= (8 * n_layers + 9) * n_network_forwards
    assert ours_extra < 0.5 * reference_extra


def test_under_autocast_conv_and_linear_weights_are_written_in_half_precision():
    """Autocast casts a float32 weight to bf16 in every forward, and its gradient back in the
    backward; the together path writes the normalised weight in bf16 directly (the embedding, which
    autocast leaves in float32, stays float32), with PyTorch's results to bf16 rounding."""
    reference, ours = twins()
    reference_casts = ops_of_a_training_step(reference, torch.bfloat16).casts
    ours_casts = ops_of_a_training_step(ours, torch.bfloat16).casts
    n_cast_weights, n_network_forwards = 3, 2  # conv1, conv2, linear
    assert ours_casts <= reference_casts - 2 * n_cast_weights * n_network_forwards
    for net in (reference, ours):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(*inputs(5))
        out.float().square().sum().backward()
        net.out = out
    assert ours.out.dtype == reference.out.dtype == torch.float32
    assert ((ours.out - reference.out).norm() / reference.out.norm()) < 1e-3
    for (name, p_ref), p_ours in zip(reference.named_parameters(), ours.parameters()):
        assert p_ours.grad.dtype == torch.float32
        assert ((p_ours.grad - p_ref.grad).norm() / p_ref.grad.norm()) < 1e-4, name


@pytest.mark.parametrize("network", ["G", "D"])
def test_biggan_networks_run_their_power_iterations_together(network, monkeypatch):
    """Two matrix-vector products per layer in a training forward (three in PyTorch's), none
    under autocast, and nothing left behind after the forward."""
    if network == "G":
        net = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=[16]))
        args = (torch.randn(2, 120),)
    else:
        net = Discriminator(DiscriminatorConfig(resolution=32, ch=8, attention_resolutions=[16]))
        args = (torch.randn(2, 3, 32, 32),)
    n_layers = sum(isinstance(m, SpectralNorm) for m in net.modules())
    seen = []
    mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *a: seen.append(torch.is_autocast_enabled("cpu")) or mv(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(*args)
    assert len(seen) == 2 * n_layers and not any(seen)
    assert all(m.power_iterated is None for m in net.modules() if isinstance(m, SpectralNorm))
    # A copy made after the first forward (as G_ema is) iterates its own vectors, not the original's.
    twin = copy.deepcopy(net)
    before = {name: b.clone() for name, b in net.named_buffers() if name.endswith("_u")}
    twin(*args)
    assert all(torch.equal(b, before[name]) for name, b in net.named_buffers() if name.endswith("_u"))
    assert not all(torch.equal(b, before[name]) for name, b in twin.named_buffers() if name.endswith("_u"))


def test_a_forward_that_raises_leaves_no_sigma_behind():
    _, ours = twins()
    with pytest.raises(RuntimeError):
        ours(torch.randn(4, 2, 5, 5), torch.zeros(4, dtype=torch.long))  # 2 channels, not 3
    assert all(m.power_iterated is None for m in ours.modules() if isinstance(m, SpectralNorm))
    copy.deepcopy(ours)  # G_ema is such a copy: it would fail on a stored non-leaf sigma

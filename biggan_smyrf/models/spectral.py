"""Spectral norm, one power iteration per training forward (BigGAN), for a whole network at once.

`SpectralNorm` is PyTorch's parametrization (same `_u`/`_v` buffers, initialisation and state-dict
keys, so checkpoints written with `torch.nn.utils.parametrizations.spectral_norm` load unchanged),
with two changes:
- it runs in float32 whatever the autocast region: on CUDA autocast would run its matrix-vector
  products in bf16/fp16 (casting every weight three times per forward) and estimate sigma, the
  number every weight is divided by, to half-precision accuracy;
- sigma's `torch.vdot` is `torch.dot`: torch_xla has no lowering for `aten::vdot` and would run it
  on the host inside every step (for real tensors the two are the same).

`normalise_together(network)` makes a network's training forwards run the power iteration of all
its layers together. Per layer, PyTorch's parametrization issues ~13 small kernels per forward
(three matrix-vector products, two normalisations of three kernels each, two clones, a dot and a
division) and ~6 more in the backward. BigGAN at 128 px has 42 such layers in G and 24 in D and a
G iteration runs them ~180 times, so on a GPU these launches -- not the convolutions -- set the
step time at batch 16-32, and bf16 cannot speed that up (issue #13). Together, a forward costs
two matrix-vector products per layer plus a fixed handful of multi-tensor (`_foreach`) kernels for
the normalisations and the buffer updates, and each layer then divides its weight by its sigma.

The together path computes the same power iteration (u' = W v / |W v|, v' = Wᵀ u' / |Wᵀ u'|) and
takes sigma = |Wᵀ u'|, which equals PyTorch's u'ᵀ W v' (because v' is Wᵀ u' normalised) with the
same gradient, u' vᵀ', without a third product. Results agree with the per-layer path to float32
rounding (tests). Eval forwards (no power iteration) and layers called outside their network's
forward use the per-layer path.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


def full_precision(device_type: str):
    """A block that autocast leaves alone (a no-op where autocast is off or unknown)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


class SpectralNorm(_SpectralNorm):
    """PyTorch's spectral norm parametrization, in float32, with sigma through `torch.dot`, and
    a sigma handed in by `normalise_together` for the current forward when there is one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (sigma, u', v') of this forward's power iteration, set only inside the network's forward.
        self.power_iterated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.power_iterated is not None:
            return _DividedBySigma.apply(weight, *self.power_iterated)
        with full_precision(weight.device.type):
            if weight.ndim == 1:
                return super().forward(weight)
            weight_mat = self._reshape_weight_to_matrix(weight)
            if self.training:
                self._power_method(weight_mat, self.n_power_iterations)
            # Clones, as in the parent: the power iteration updates the buffers in place, and D's
            # graph from an earlier forward must still see the vectors it used.
            u = self._u.clone(memory_format=torch.contiguous_format)
            v = self._v.clone(memory_format=torch.contiguous_format)
            return weight / torch.dot(u, torch.mv(weight_mat, v))


def spectral(module: nn.Module, eps: float) -> nn.Module:
    """Orthogonal init, then spectral norm; BigGAN's recipe for every weight layer."""
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight, n_power_iterations=1, eps=eps))
    return module


def normalise_together(network: nn.Module) -> nn.Module:
    """Run the power iteration of every spectrally normalised layer of `network` together in its
    training forwards (see the module docstring). Hooks only: weights, buffers and checkpoints are
    unchanged, and a copy of the network (G_ema) keeps the behaviour."""
    network.register_forward_pre_hook(_power_iteration_hook)
    network.register_forward_hook(_forget_power_iteration_hook, always_call=True)
    return network


def _training_layers(network: nn.Module) -> list[tuple[torch.Tensor, SpectralNorm]]:
    """(raw weight, parametrization) of every layer that runs one power iteration in this forward
    (BigGAN's, what `spectral` builds); any other keeps the per-layer path."""
    layers = []
    for module in network.modules():
        if isinstance(module, parametrize.ParametrizationList) and len(module) == 1:
            norm = module[0]
            if (isinstance(norm, SpectralNorm) and norm.training and module.original.ndim > 1
                    and norm.n_power_iterations == 1):
                layers.append((module.original, norm))
    return layers


def _normalised(vectors: list[torch.Tensor], eps: list[float]) -> list[torch.Tensor]:
    """x / max(|x|, eps) for every x, in three multi-tensor kernels (F.normalize's formula)."""
    norms = torch._foreach_norm(vectors)
    torch._foreach_clamp_min_(norms, eps)
    return torch._foreach_div(vectors, norms)


@torch.no_grad()
def _power_iteration_hook(network: nn.Module, args) -> None:
    """Before a training forward: one power iteration of every layer, its buffers updated in place
    and its (sigma, u', v') handed to its parametrization for this forward."""
    layers = _training_layers(network)
    if not layers:
        return
    weights, norms = zip(*layers)
    eps = [norm.eps for norm in norms]
    with full_precision(weights[0].device.type):
        matrices = [norm._reshape_weight_to_matrix(weight) for weight, norm in layers]
        u = _normalised([torch.mv(w, norm._v) for w, norm in zip(matrices, norms)], eps)
        w_t_u = [torch.mv(w.T, u_i) for w, u_i in zip(matrices, u)]
        sigmas = torch._foreach_norm(w_t_u)
        v = torch._foreach_div(w_t_u, torch._foreach_clamp_min(sigmas, eps))
        # In place, as PyTorch's spectral norm: DDP and DataParallel broadcast these buffers.
        torch._foreach_copy_([norm._u for norm in norms], u)
        torch._foreach_copy_([norm._v for norm in norms], v)
    for norm, *vectors in zip(norms, sigmas, u, v):
        norm.power_iterated = tuple(vectors)


def _forget_power_iteration_hook(network: nn.Module, args, output) -> None:
    for module in network.modules():
        if isinstance(module, SpectralNorm):
            module.power_iterated = None


class _DividedBySigma(torch.autograd.Function):
    """W / sigma(W), with sigma's gradient that of uᵀ W v for constant u, v (PyTorch's spectral norm):
        dL/dW = (G - <G, W / sigma> u vᵀ) / sigma,   G = dL/d(W / sigma),
    five kernels in the backward where autograd's graph of the same formula takes about twelve. The
    rank-one term is broadcast in W's own shape (u along dim 0, v over the rest, the order of
    `_reshape_weight_to_matrix`), so a channels_last weight needs no copy. Its ops are
    differentiable, so double backward (a gradient penalty) works."""

    @staticmethod
    def forward(ctx, weight, sigma, u, v):
        normalised = weight / sigma
        ctx.save_for_backward(normalised, sigma, u, v)
        return normalised

    @staticmethod
    def backward(ctx, grad):
        normalised, sigma, u, v = ctx.saved_tensors
        along = (grad * normalised).sum()
        u = u.view((-1,) + (1,) * (grad.dim() - 1))
        rank_one_removed = torch.addcmul(grad, u, (v * along).view(grad.shape[1:]), value=-1)
        return rank_one_removed / sigma, None, None, None

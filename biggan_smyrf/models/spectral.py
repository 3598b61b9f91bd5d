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
division) and ~9 more in the backward. BigGAN at 128 px has 41 such layers in G (one attention
block) and 19 in D, and a G iteration runs each network's forward three times. On a GPU each
launch costs the host several microseconds whatever the batch; a measured H200 bf16 step, barely
faster than fp32 at batch 16, points at such host-bound work. Together, a forward costs two
matrix-vector products per layer plus nine multi-tensor (`_foreach`) kernels for the
normalisations and the buffer updates; each layer then divides its weight by its sigma (one
kernel, written straight in autocast's dtype for a conv or linear weight under autocast, which
saves the cast and its backward), and the backward is five kernels per layer (`_DividedBySigma`).
The ops of a G iteration besides Adam's halve (4,031 -> 1,969 at dense@64 in fp32,
`benchmarks/step_ops.py`).

The together path computes the same power iteration (u' = W v / |W v|, v' = Wᵀ u' / |Wᵀ u'|) and
takes sigma = |Wᵀ u'|, which equals PyTorch's u'ᵀ W v' (because v' is Wᵀ u' normalised) with the
same gradient, u' vᵀ', without a third product. Results agree with PyTorch's per-layer path to
float32 rounding (tests). Eval forwards (no power iteration) and layers called outside their
network's forward take the per-layer path; without gradients (sampling, validation) it skips
PyTorch's clones of u and v and writes conv and linear weights in autocast's dtype: 3 kernels per
layer where PyTorch's takes 5, or 6 under autocast.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


def _autocasting(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def full_precision(device_type: str):
    """A block that autocast leaves alone (a no-op where autocast is off or unknown)."""
    return torch.autocast(device_type, enabled=False) if _autocasting(device_type) else nullcontext()


class SpectralNorm(_SpectralNorm):
    """PyTorch's spectral norm parametrization, in float32, with sigma through `torch.dot`, and
    a sigma handed in by `normalise_together` for the current forward when there is one."""

    def __init__(self, *args, autocast_casts_weight: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        # Conv and linear layers: autocast would cast the normalised weight to half precision in
        # every forward, so the together path writes it in that dtype itself (one kernel, not two).
        self.autocast_casts_weight = autocast_casts_weight
        # (sigma, u', v' / sigma) of this forward's power iteration, set only inside the network's forward.
        self.power_iterated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # PyTorch's kernels exactly, no shortcut (`normalise_together(network, False)`: a baseline).
        self.as_pytorch = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        device_type, dtype = weight.device.type, weight.dtype
        if self.autocast_casts_weight and _autocasting(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        if self.power_iterated is not None:
            return _DividedBySigma.apply(weight, *self.power_iterated, dtype)
        with full_precision(device_type):
            if weight.ndim == 1:
                return super().forward(weight)
            weight_mat = self._reshape_weight_to_matrix(weight)
            if self.training:
                self._power_method(weight_mat, self.n_power_iterations)
            if not torch.is_grad_enabled() and not self.as_pytorch:
                # Sampling and validation: no graph keeps u or v, so no clones, and the weight is
                # written in the dtype autocast would cast it to (3 kernels per layer instead of 6).
                sigma = torch.dot(self._u, torch.mv(weight_mat, self._v))
                return torch.div(weight, sigma, out=torch.empty_like(weight, dtype=dtype))
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
    norm = SpectralNorm(module.weight, n_power_iterations=1, eps=eps,
                        autocast_casts_weight=isinstance(module, (nn.Conv2d, nn.Linear)))
    parametrize.register_parametrization(module, "weight", norm)
    return module


def normalise_together(network: nn.Module, together: bool = True) -> nn.Module:
    """Run the power iteration of every spectrally normalised layer of `network` together in its
    training forwards (see the module docstring); `together=False` turns the network back to
    PyTorch's per-layer kernels, no-gradient shortcut included (what benchmarks compare against).
    Hooks and plain attributes only: weights, buffers and checkpoints are unchanged, and a copy of
    the network (G_ema) keeps the setting. The layers are those the network has now: a spectrally
    normalised layer added later is not seen (it still works, on the per-layer path)."""
    if "_spectral_norm_together" not in network.__dict__:
        network.register_forward_pre_hook(_power_iteration_hook)
        network.register_forward_hook(_forget_power_iteration_hook, always_call=True)
    network.__dict__["_spectral_norm_together"] = together
    for _, norm in _spectral_norms(network):
        norm.as_pytorch = not together
    return network


def _spectral_norms(network: nn.Module) -> list[tuple[parametrize.ParametrizationList, SpectralNorm]]:
    """Every spectrally normalised weight of `network`, found once and kept (walking G's ~250
    modules twice per forward would cost ~0.6 ms of host time). A plain attribute: not state, and
    a deepcopy (G_ema) maps it to the copy's own layers."""
    found = network.__dict__.get("_spectral_norms")
    if found is None:
        found = [(m, m[0]) for m in network.modules()
                 if isinstance(m, parametrize.ParametrizationList) and len(m) == 1 and isinstance(m[0], SpectralNorm)]
        network.__dict__["_spectral_norms"] = found
    return found


def _training_layers(network: nn.Module) -> list[tuple[torch.Tensor, SpectralNorm]]:
    """(raw weight, parametrization) of every layer that runs one power iteration in this forward
    (BigGAN's, what `spectral` builds); any other keeps the per-layer path."""
    return [(weights.original, norm) for weights, norm in _spectral_norms(network)
            if norm.training and norm.n_power_iterations == 1 and weights.original.ndim > 1]


def _normalised(vectors: list[torch.Tensor], eps: list[float]) -> list[torch.Tensor]:
    """x / max(|x|, eps) for every x, in three multi-tensor kernels (F.normalize's formula)."""
    norms = torch._foreach_norm(vectors)
    torch._foreach_clamp_min_(norms, eps)
    return torch._foreach_div(vectors, norms)


@torch.no_grad()
def _power_iteration_hook(network: nn.Module, args) -> None:
    """Before a training forward: one power iteration of every layer, its buffers updated in place
    and its (sigma, u', v' / sigma) handed to its parametrization for this forward."""
    layers = _training_layers(network) if network.__dict__["_spectral_norm_together"] else []
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
        v_over_sigma = torch._foreach_div(v, sigmas)
    for norm, *vectors in zip(norms, sigmas, u, v_over_sigma):
        norm.power_iterated = tuple(vectors)


def _forget_power_iteration_hook(network: nn.Module, args, output) -> None:
    for _, norm in _spectral_norms(network):
        norm.power_iterated = None


class _DividedBySigma(torch.autograd.Function):
    """W / sigma(W), written in `dtype` (autocast's, for a conv or linear weight under autocast),
    with sigma's gradient that of uᵀ W v for constant u, v (PyTorch's spectral norm):
        dL/dW = (G - <G, W> u (v / sigma)ᵀ) / sigma,   G = dL/d(W / sigma),
    five kernels in the backward where autograd's graph of the same formula and the cast take about
    fourteen; a half-precision G is promoted inside them. The rank-one term is broadcast in W's own
    shape (u along dim 0, v over the rest, the order of `_reshape_weight_to_matrix`), so a
    channels_last weight needs no copy. Its ops are differentiable, so double backward (a gradient
    penalty) works."""

    @staticmethod
    def forward(ctx, weight, sigma, u, v_over_sigma, dtype):
        ctx.save_for_backward(weight, sigma, u, v_over_sigma)
        if dtype == weight.dtype:
            return weight / sigma
        # The quotient rounded once to dtype: what autocast's cast of the float32 quotient gives.
        return torch.div(weight, sigma, out=torch.empty_like(weight, dtype=dtype))

    @staticmethod
    def backward(ctx, grad):
        weight, sigma, u, v_over_sigma = ctx.saved_tensors
        along = (grad * weight).sum()
        u = u.view((-1,) + (1,) * (grad.dim() - 1))
        rank_one_removed = torch.addcmul(grad, u, (v_over_sigma * along).view(grad.shape[1:]), value=-1)
        return rank_one_removed / sigma, None, None, None, None

"""G_ema: PyTorch's AveragedModel with an EMA rule, buffers included.

BN question, answered: G_ema is always run in eval mode. Its BatchNorm running statistics are
averaged together with the weights (use_buffers=True), as BigGAN-PyTorch does, so samples do not
depend on how many or which z are in a batch. Spectral norm's power-iteration vectors u, v are
buffers too; averaging shrinks them slightly below unit length, and the eval-mode spectral norm
(which does no power iteration) would then under-estimate sigma. They are re-normalised after
every update, which keeps sigma = uᵀ W_ema v an estimate of W_ema's top singular value.

The update itself is AveragedModel.update_parameters' EMA step written out without its two reads of
`n_averaged` on the host: on an XLA device (TPU) each read would stop the device pipeline once per
G iteration. Whether to copy or average is decided by the caller, who knows it on the host.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(generator: nn.Module, decay: float) -> AveragedModel:
    ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, generator: nn.Module, copy: bool) -> None:
    """One EMA step, or a plain copy of G while `copy` (before the EMA start iteration)."""
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    current = [t.detach() for t in (*generator.parameters(), *generator.buffers())]
    if copy:
        for average, value in zip(averaged, current):
            average.copy_(value)
        ema.n_averaged.zero_()
    else:
        # One call per dtype, as AveragedModel groups them: the EMA rule lerps float tensors and
        # averages integer buffers (BN's num_batches_tracked) through float arithmetic.
        by_dtype: dict[torch.dtype, tuple[list, list]] = {}
        for average, value in zip(averaged, current):
            group = by_dtype.setdefault(average.dtype, ([], []))
            group[0].append(average)
            group[1].append(value)
        for group, values in by_dtype.values():
            ema.multi_avg_fn(group, values, ema.n_averaged)
    ema.n_averaged += 1
    renormalise_power_vectors(ema)


@torch.no_grad()
def renormalise_power_vectors(net: nn.Module) -> None:
    """Every spectral-norm u and v of `net` back to unit length, x / max(|x|, eps) as F.normalize.

    Multi-tensor (foreach) ops: a few launches for all of G's vectors (82 at 128 px) instead of four
    per vector, which after every G update would otherwise be hundreds of tiny kernels."""
    by_eps: dict[float, list[torch.Tensor]] = {}
    for module in net.modules():
        spectral = getattr(getattr(module, "parametrizations", None), "weight", None)
        for param in spectral or []:
            if hasattr(param, "_u"):
                by_eps.setdefault(param.eps, []).extend((param._u, param._v))
    for eps, vectors in by_eps.items():
        norms = torch._foreach_norm(vectors)
        torch._foreach_clamp_min_(norms, eps)
        torch._foreach_div_(vectors, norms)

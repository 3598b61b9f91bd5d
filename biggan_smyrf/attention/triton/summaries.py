"""SCRATCH torch stand-in (replaced by the Triton kernels)."""
import torch
from ..summaries import summary_features, summary_keys, unit_sums_through


def _rows(k_ext, v_ext, bias, k_order, sizes, dtypes):
    M = k_order.shape[-1]
    w = (bias[:, :M] == 0).to(torch.float32)[..., None]
    feats = summary_features(k_ext[:, :M], v_ext[:, :M], w)
    return summary_keys(unit_sums_through(k_order, feats, sizes.summary_unit), sizes, k_ext.shape[-1], dtypes)


def write_summaries(k_ext, v_ext, bias, k_order, sizes):
    M = k_order.shape[-1]
    sk, sv, off = _rows(k_ext, v_ext, bias, k_order, sizes, (k_ext.dtype, v_ext.dtype))
    k_ext[:, M:] = sk.flatten(1, 3)
    v_ext[:, M:] = sv.flatten(1, 3)
    bias[:, M:] = off.flatten(1)


def fold_summary_grads(dk, dv, bias, k_order, sizes):
    M = k_order.shape[-1]
    keys = torch.zeros_like(dk[:, :M]).requires_grad_()
    vals = torch.zeros_like(dv[:, :M]).requires_grad_()
    with torch.enable_grad():
        sk, sv, _ = _rows(keys, vals, bias, k_order, sizes, (torch.float32, torch.float32))
        torch.autograd.backward([sk, sv], [dk[:, M:].reshape(sk.shape), dv[:, M:].reshape(sv.shape)])
    dk[:, :M] += keys.grad
    dv[:, :M] += vals.grad

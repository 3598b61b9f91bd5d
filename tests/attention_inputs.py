"""Inputs and helpers the attention tests share (not collected: no test_ prefix)."""
import torch

from biggan_smyrf.attention import AttentionConfig

KERNELS = ["flash", "chunked"]
# The published recipe: the tests of the core mechanics (kernels, gradients, seeding) predate the
# library's additions, which have tests of their own.
PAPER = AttentionConfig.paper()


def qkv(b=2, n=64, m=16, d_qk=4, d_v=8, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(b, t, d, generator=g, dtype=dtype) for t, d in ((n, d_qk), (m, d_qk), (m, d_v))]
    return [t.requires_grad_(grad) for t in ts]


def grads(f, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = f(*inputs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), [x.grad for x in inputs]

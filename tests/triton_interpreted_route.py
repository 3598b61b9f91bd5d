"""The CUDA route's own kernels, through Triton's interpreter: the layout of its inputs and
gradients (`triton/buffers.py`) and the combination of its rounds (`triton/combine.py`).

Not collected by the suite (no test_ prefix): `test_triton_kernel.py` runs every
`triton_interpreted*.py` in a fresh pytest process with TRITON_INTERPRET=1. The route as a whole is
checked against the gathered route in `triton_interpreted.py`.
"""
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402,F401 -- overheads of Triton's interpreter, removed (see there)

from biggan_smyrf.attention import smyrf_attention  # noqa: E402
from biggan_smyrf.attention.plan import round_normalisers  # noqa: E402
from biggan_smyrf.attention.triton.buffers import gradient_accumulators, route_gradients, route_inputs  # noqa: E402
from biggan_smyrf.attention.triton.combine import combine_rounds  # noqa: E402

parametrize = pytest.mark.parametrize


def channels_first(B, N, d, dtype, g):
    """A (B, N, d) view of a (B, d, N) tensor, as BigGAN's attention passes its feature maps."""
    return torch.randn(B, d, N, generator=g).to(dtype).transpose(1, 2)


@parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_route_inputs_pad_and_leave_room(dtype, masked):
    g = torch.Generator().manual_seed(0)
    B, N, M, extra = 2, 200, 70, 9  # rows past one 64-row block, ragged
    q, k, v = channels_first(B, N, 12, dtype, g), channels_first(B, M, 12, dtype, g), channels_first(B, M, 48, dtype, g)
    mask = torch.rand(B, M, generator=g) > 0.3 if masked else None
    q_out, k_out, v_out, bias = route_inputs(q, k, v, mask, extra, with_bias=True)
    assert (q_out.shape, k_out.shape, v_out.shape, bias.shape) == ((B, N, 16), (B, M + extra, 16), (B, M + extra, 48), (B, M + extra))
    assert torch.equal(q_out[..., :12], q) and not q_out[..., 12:].any()
    assert torch.equal(k_out[:, :M, :12], k) and not k_out[:, :M, 12:].any()
    assert torch.equal(v_out[:, :M], v)
    want = torch.zeros(B, M) if mask is None else torch.zeros(B, M).masked_fill(~mask, float("-inf"))
    assert torch.equal(bias[:, :M], want)
    assert route_inputs(q, k, v, None, 0, with_bias=False)[3] is None


def test_route_gradients_cut_back_to_the_inputs():
    g = torch.Generator().manual_seed(1)
    B, N, M, extra = 2, 130, 70, 5
    dq, dk, dv = gradient_accumulators(B, N, M + extra, 16, 48, torch.device("cpu"))
    assert not (dq.any() or dk.any() or dv.any())
    for x in (dq, dk, dv):
        x.copy_(torch.randn(x.shape, generator=g))
    got = route_gradients(dq, dk, dv, 12, M, (torch.bfloat16, torch.bfloat16, torch.float32))
    want = (dq[..., :12].bfloat16(), dk[:, :M, :12].bfloat16(), dv[:, :M])
    for a, b in zip(got, want):
        # The interpreter rounds float32 to bfloat16 toward zero where torch rounds to nearest: one unit.
        assert a.dtype == b.dtype and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=0 if a.dtype == torch.float32 else 2**-7, atol=0)


@parametrize("hub", [False, True], ids=["no hub", "hub"])
@parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_combine_matches_the_torch_statement(hub, dedup):
    """`combine_rounds` against `plan.round_normalisers` and the combination written in torch, with
    queries whose every round saw only masked keys (lse = -inf): with a hub round, theirs is all
    the weight (w_hub = 1)."""
    g = torch.Generator().manual_seed(2)
    B, H, N, d_v = 2, 3, 150, 48
    lse = torch.randn(B, H, N, generator=g) * 3
    lse[0, :, :7] = float("-inf")  # no round saw a key
    lse[1, 0, 10:20] = float("-inf")  # one round did not
    out_acc, run_sum = torch.randn(B, N, d_v, generator=g), torch.rand(B, N, generator=g) + 0.5
    run_sum[0, :7] = 0.0
    out_acc[0, :7] = 0.0
    o_hub = torch.randn(B, N, d_v, generator=g).bfloat16() if hub else None
    lse_hub = torch.randn(B, N, generator=g) if hub else None
    out, norm, w_hub = combine_rounds(out_acc, run_sum, lse, o_hub.clone() if hub else None, lse_hub, dedup, torch.bfloat16)
    want_norm, want_w = round_normalisers(lse, lse_hub, dedup)
    o = out_acc / run_sum.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    want = o if not hub else o * (1 - want_w[..., None]) + o_hub.float() * want_w[..., None]
    torch.testing.assert_close(norm, want_norm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.float(), want.bfloat16().float(), rtol=1e-2, atol=1e-2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    if hub:
        torch.testing.assert_close(w_hub, want_w, rtol=1e-5, atol=1e-6)
        assert torch.equal(w_hub[0, :7], torch.ones(7))


def test_channels_first_views_give_what_contiguous_inputs_give():
    """BigGAN's q, k, v are channels-first views: the route reads them through their strides."""
    g = torch.Generator().manual_seed(3)
    B, N, M = 1, 256, 64
    views = [channels_first(B, n, d, torch.float32, g) for n, d in ((N, 12), (M, 12), (M, 48))]
    settings = dict(n_hashes=2, q_cluster_size=64, kernel="triton", seed=1)
    results = []
    for inputs in (views, [x.contiguous() for x in views]):
        leaves = [x.detach().clone().requires_grad_() if x.is_contiguous() else x.detach().requires_grad_()
                  for x in inputs]
        out = smyrf_attention(*leaves, **settings)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach()] + [x.grad for x in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

"""The summary-key kernels (triton/summaries.py) on the CPU, through Triton's interpreter, against
the torch maths of summaries.py.

Not collected by the suite (no test_ prefix): the interpreter must be on before triton is first
imported, so `test_triton_kernel.py::test_kernels_under_triton_interpreter` runs this file in a
fresh pytest process with TRITON_INTERPRET=1. The cases: blocks inside clusters (whose own
cluster's summary is empty, count 0), blocks across a cluster boundary, blocks holding several
clusters, N != M, hub and padded keys, a block with no counted key at all, more keys than one
step of the kernels' loops, and BigGAN's head widths (12 features padded to 16, 48 values).
"""
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402,F401 -- overheads of Triton's interpreter, removed (see there)

from biggan_smyrf.attention import AttentionConfig  # noqa: E402
from biggan_smyrf.attention.summaries import (  # noqa: E402
    HUB_MASK_LOGIT, summarised, summary_features, summary_keys, unit_sums_through,
)
from biggan_smyrf.attention.triton.summaries import (  # noqa: E402
    BLOCK_KEYS, cells_per_block, fold_summary_grads, write_summaries,
)

D_QK, DQ, D_V = 12, 16, 48  # BigGAN's heads; k stored padded to the kernels' 16 features
# (N, M, H, q_cluster_size, n_summaries) -> blocks vs clusters
SIZES = {
    "blocks inside clusters": (256, 64, 2, 64, 8),  # 4 clusters of 16 keys, blocks of 8
    "blocks across clusters": (120, 60, 2, 30, 6),  # 4 clusters of 15, blocks of 10: J = 2
    "clusters inside blocks": (100, 60, 2, 20, 2),  # 5 clusters of 12, blocks of 30: J = 3
    "long runs": (256, 320, 2, 128, 2),  # 2 clusters of 160, blocks of 160 > BLOCK_KEYS
    "default recipe": (1024, 256, 4, 256, None),  # 4 rounds, 4 clusters of 64, 4 blocks of 64
}
# Half precision: both sides sum in float32 and round the mean once, so they differ by at most one
# unit in the last place (the interpreter truncates float32 to bfloat16 where a GPU rounds to nearest).
ULP = {torch.float16: 2**-10, torch.bfloat16: 2**-7}


def resolve(N, M, H, q_cluster_size, n_summaries):
    return AttentionConfig(kind="smyrf", n_hashes=H, q_cluster_size=q_cluster_size, n_summaries=n_summaries,
                           n_hub_keys=2).resolve(N, M)


def inputs(sizes, B=2, dtype=torch.float32, seed=0):
    """k (B, M, DQ) with zero padding columns, v, a sort order per round, hub indices, a padding
    mask, and the logit bias the route builds from them (0, HUB_MASK_LOGIT, -inf). In batch
    element 1, round 0's block 1 holds only hub and padded keys: every summary of it is empty."""
    M, H = sizes.n_keys, sizes.n_hashes
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.pad(torch.randn(B, M, D_QK, generator=g), (0, DQ - D_QK)).to(dtype)
    v = torch.randn(B, M, D_V, generator=g).to(dtype)
    k_order = torch.stack([torch.randperm(M, generator=g) for _ in range(B * H)]).view(B, H, M)
    hub = torch.stack([torch.randperm(M, generator=g)[:3] for _ in range(B)])
    mask = torch.rand(B, M, generator=g) > 0.2
    block = M // sizes.n_summaries
    empty = k_order[1, 0, block:2 * block]
    hub[1], mask[1, empty[3:]] = empty[:3], False
    bias = torch.zeros(B, M)
    bias.scatter_(1, hub, HUB_MASK_LOGIT)
    bias.masked_fill_(~mask, float("-inf"))
    return k, v, k_order, hub, mask, bias


def extended(k, v, bias, sizes):
    """The route's layout: key rows, then H * n_clusters * n_summaries summary rows (garbage here,
    so that every row the kernels must write is checked)."""
    B, M, _ = k.shape
    extra = sizes.n_hashes * sizes.n_clusters * sizes.n_summaries
    fill = lambda x: torch.cat([x, torch.full((B, extra, *x.shape[2:]), 7.0, dtype=x.dtype)], dim=1)  # noqa: E731
    return fill(k), fill(v), fill(bias)


def reference(k, v, k_order, hub, mask, sizes):
    """summaries.py's keys, values and offsets, as cuda_route._round_summaries takes them."""
    features = summary_features(k, v, summarised(k, hub, mask))
    unit_sums = unit_sums_through(k_order, features, sizes.summary_unit)
    return summary_keys(unit_sums, sizes, k.shape[-1], (k.dtype, v.dtype))


def assert_close(got, want, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=ULP[dtype], atol=1e-6)


def test_sizes_cover_every_layout():
    """Blocks in one cluster, across two and holding several; one case longer than a loop step."""
    cells = {name: cells_per_block(*(lambda s: (s.n_keys, s.n_summaries, s.k_cluster_size))(resolve(*size)))
             for name, size in SIZES.items()}
    assert cells == {"blocks inside clusters": 1, "blocks across clusters": 2, "clusters inside blocks": 3,
                     "long runs": 1, "default recipe": 1}
    assert resolve(*SIZES["default recipe"]).n_summaries == 4
    assert resolve(*SIZES["long runs"]).n_keys // 2 > BLOCK_KEYS


@pytest.mark.parametrize("name, dtype", [
    pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}")
    for name in SIZES for dtype in (torch.float32, torch.bfloat16)
] + [pytest.param("blocks across clusters", torch.float16, id="blocks across clusters-float16")])
def test_summary_rows_match_the_torch_maths(name, dtype):
    sizes = resolve(*SIZES[name])
    B, M, H, C, S = 2, sizes.n_keys, sizes.n_hashes, sizes.n_clusters, sizes.n_summaries
    k, v, k_order, hub, mask, bias = inputs(sizes, B, dtype)
    k_ext, v_ext, bias_ext = extended(k, v, bias, sizes)
    write_summaries(k_ext, v_ext, bias_ext, k_order, sizes)
    want_k, want_v, want_offset = reference(k, v, k_order, hub, mask, sizes)
    assert torch.equal(k_ext[:, :M], k) and torch.equal(v_ext[:, :M], v) and torch.equal(bias_ext[:, :M], bias)
    got_k, got_v = k_ext[:, M:].view(B, H, C, S, DQ), v_ext[:, M:].view(B, H, C, S, D_V)
    assert (got_k[..., D_QK:] == 0).all()
    assert_close(got_k, want_k, dtype)
    assert_close(got_v, want_v, dtype)
    torch.testing.assert_close(bias_ext[:, M:].view(B, H, C, S, 1), want_offset, rtol=1e-6, atol=1e-6)
    empty = bias_ext[:, M:].view(B, H, C, S) == HUB_MASK_LOGIT
    assert empty[1, 0, :, 1].all()  # the block of hub and padded keys only
    assert (got_k[empty] == 0).all() and (got_v[empty] == 0).all()
    if name == "blocks inside clusters":  # a block's own cluster leaves nothing of it
        assert empty[0].sum() == H * S


@pytest.mark.parametrize("name", list(SIZES))
def test_folded_gradients_match_autograd(name):
    sizes = resolve(*SIZES[name])
    B, M = 2, sizes.n_keys
    k, v, k_order, hub, mask, bias = inputs(sizes, B, seed=1)
    k_ext, v_ext, bias_ext = extended(k, v, bias, sizes)
    write_summaries(k_ext, v_ext, bias_ext, k_order, sizes)

    k, v = k.requires_grad_(), v.requires_grad_()
    summary_k, summary_v, _ = reference(k, v, k_order, hub, mask, sizes)
    g = torch.Generator().manual_seed(2)
    grad_k, grad_v = torch.randn(summary_k.shape, generator=g), torch.randn(summary_v.shape, generator=g)
    torch.autograd.backward([summary_k, summary_v], [grad_k, grad_v])

    # The rounds' gradients of the key rows are already in the accumulators: the fold adds to them.
    dk_rows, dv_rows = torch.randn(B, M, DQ, generator=g), torch.randn(B, M, D_V, generator=g)
    dk_acc = torch.cat([dk_rows, grad_k.reshape(B, -1, DQ)], dim=1)
    dv_acc = torch.cat([dv_rows, grad_v.reshape(B, -1, D_V)], dim=1)
    fold_summary_grads(dk_acc, dv_acc, bias_ext, k_order, sizes)
    torch.testing.assert_close(dk_acc[:, :M] - dk_rows, k.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv_acc[:, :M] - dv_rows, v.grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(dk_acc[:, M:], grad_k.reshape(B, -1, DQ))  # the summary rows are left alone
    weightless = bias != 0  # hub and padded keys take no part in the means
    assert (dk_acc[:, :M][weightless] == dk_rows[weightless]).all()


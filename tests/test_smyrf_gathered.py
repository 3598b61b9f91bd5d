"""SMYRF through the gathered route (the CPU kernels "flash" and "chunked"): exactness against dense
attention and a materialised reference, gradients, masks, seeding, half precision."""
import pytest
import torch

from biggan_smyrf.attention import AttentionConfig, attend, cluster_orders, dense_attention, smyrf_attention
from biggan_smyrf.attention.synthetic import relative_error

from attention_inputs import KERNELS, PAPER, grads, qkv


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_one_cluster_equals_dense_forward_and_backward(kernel, n_hashes):
    q, k, v = qkv(n=64, m=16, d_qk=4, d_v=8)
    dense_out, dense_grads = grads(lambda q, k, v: dense_attention(q, k, v, scale=1.0, backend="math"), q, k, v)
    smyrf_out, smyrf_grads = grads(
        lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=n_hashes, q_cluster_size=64, scale=1.0, kernel=kernel),
        q, k, v,
    )
    torch.testing.assert_close(smyrf_out, dense_out)
    for a, b in zip(smyrf_grads, dense_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_multi_round_small_clusters(kernel):
    """Gradients flow through the per-round logsumexp weights too (float64 finite differences)."""
    q, k, v = qkv(b=2, n=32, m=8, d_qk=3, d_v=5, grad=True)

    def f(q, k, v):
        return smyrf_attention(q, k, v, PAPER, n_hashes=3, q_cluster_size=8, scale=0.7, kernel=kernel)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gradcheck_with_key_mask():
    q, k, v = qkv(b=1, n=16, m=8, d_qk=3, d_v=4, grad=True)
    mask = torch.tensor([[True, False, True, True, False, True, True, True]])
    assert torch.autograd.gradcheck(
        lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=8, key_padding_mask=mask), (q, k, v)
    )


def test_kernels_agree_with_small_clusters():
    q, k, v = qkv(n=128, m=32)

    def run(kernel):
        return grads(lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=4, q_cluster_size=16, kernel=kernel), q, k, v)

    (out_f, g_f), (out_c, g_c) = run("flash"), run("chunked")
    torch.testing.assert_close(out_f, out_c)
    for a, b in zip(g_f, g_c):
        torch.testing.assert_close(a, b)


def test_mask_with_one_cluster_equals_masked_dense():
    q, k, v = qkv()
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 3:9] = False
    out, (gq, gk, gv) = grads(lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=64, key_padding_mask=mask), q, k, v)
    torch.testing.assert_close(out, dense_attention(q, k, v, key_padding_mask=mask, backend="math"))
    assert gk[:, 3:9].abs().max() == 0 and gv[:, 3:9].abs().max() == 0


def test_batch_elements_do_not_interact():
    q, k, v = qkv(b=3, n=64, m=16)
    full = smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=16, seed=3)
    alone = smyrf_attention(q[1:2], k[1:2], v[1:2], PAPER, n_hashes=2, q_cluster_size=16, seed=3)
    torch.testing.assert_close(full[1:2], alone)


def test_same_seed_bitwise_same_and_global_rng_untouched():
    q, k, v = qkv(dtype=torch.float32)
    state = torch.get_rng_state()
    a = smyrf_attention(q, k, v, PAPER, n_hashes=3, q_cluster_size=8, seed=7)
    b = smyrf_attention(q, k, v, PAPER, n_hashes=3, q_cluster_size=8, generator=torch.Generator().manual_seed(7))
    c = smyrf_attention(q, k, v, PAPER, n_hashes=3, q_cluster_size=8, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_advances_between_calls():
    q, k, v = qkv(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    first = smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=8, generator=g)
    second = smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=8, generator=g)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, dict(hashing="kd", n_hub_keys=4, n_summaries=4, dedup="estimate")])
def test_half_precision_close_to_float32(dtype, options):
    # Reference on the same rounded inputs, so both runs hash into identical clusters.
    q, k, v = (t.to(dtype).float() for t in qkv(n=256, m=64, d_qk=8, d_v=16, dtype=torch.float32))

    def f(q, k, v):
        return smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=64, seed=0, **options)

    ref_out, ref_grads = grads(f, q, k, v)
    out, half_grads = grads(f, *(t.to(dtype) for t in (q, k, v)))
    assert out.dtype == dtype
    assert relative_error(out, ref_out) < 0.02
    for a, b in zip(half_grads, ref_grads):
        assert torch.isfinite(a).all() and relative_error(a, b) < 0.1


def reference_smyrf(q, k, v, n_hashes, n_clusters, n_hub, scale, seed, dedup, n_summaries=0, key_mask=None):
    """The same algorithm with materialised masks and plain autograd (small sizes only)."""
    from biggan_smyrf.attention.hashing import hub_keys
    from biggan_smyrf.attention.plan import log_participation

    g = torch.Generator().manual_seed(seed)
    B, N, M = q.shape[0], q.shape[1], k.shape[1]
    valid = torch.ones(B, M, dtype=torch.bool) if key_mask is None else key_mask
    hubs = hub_keys(q, k, n_hub, 256, scale, g, key_mask) if n_hub else torch.empty(B, 0, dtype=torch.long)
    q_order, k_order = cluster_orders(q, k, n_hashes, n_clusters, g, "kd")
    is_hub = torch.zeros(B, M, dtype=torch.bool).scatter_(1, hubs, True)
    scores = (scale * q @ k.transpose(1, 2)).masked_fill(~valid[:, None], float("-inf"))
    lses, outs = [], []
    for r in range(n_hashes):
        q_cluster = torch.empty(B, N, dtype=torch.long).scatter_(1, q_order[:, r], torch.arange(N).expand(B, N) // (N // n_clusters))
        k_position = torch.empty(B, M, dtype=torch.long).scatter_(1, k_order[:, r], torch.arange(M).expand(B, M))
        k_cluster = k_position // (M // n_clusters)
        allowed = (q_cluster[:, :, None] == k_cluster[:, None, :]) & ~is_hub[:, None, :]
        s, values = scores.masked_fill(~allowed, float("-inf")), v[:, None].expand(B, N, M, v.shape[-1])
        if n_summaries:
            # member[b, c, s, j]: key j is in block s of this round's order, outside cluster c.
            block = k_position // (M // n_summaries)
            member = (
                (block[:, None, None, :] == torch.arange(n_summaries)[None, None, :, None])
                & (k_cluster[:, None, None, :] != torch.arange(n_clusters)[None, :, None, None])
                & (valid & ~is_hub)[:, None, None, :]
            ).to(q.dtype)
            count = member.sum(-1, keepdim=True)
            mean_k, mean_v = member @ k[:, None] / count.clamp_min(1), member @ v[:, None] / count.clamp_min(1)
            pick = q_cluster[..., None, None]
            mean_k = mean_k.gather(1, pick.expand(B, N, n_summaries, k.shape[-1]))
            mean_v = mean_v.gather(1, pick.expand(B, N, n_summaries, v.shape[-1]))
            count = count[..., 0].gather(1, q_cluster[..., None].expand(B, N, n_summaries))
            summary = scale * torch.einsum("bnd,bnsd->bns", q, mean_k) + count.log()
            s, values = torch.cat([s, summary], -1), torch.cat([values, mean_v], 2)
        lses.append(torch.logsumexp(s, -1))
        outs.append(torch.einsum("bnm,bnmd->bnd", torch.softmax(s, -1), values))
    lse = torch.stack(lses, 1)
    if n_hub:
        s = scores.masked_fill(~is_hub[:, None, :], float("-inf"))
        if dedup:
            lse = lse - log_participation(lse).detach()
        lse = torch.cat([lse, torch.logsumexp(s, -1)[:, None]], 1)
        outs.append(torch.softmax(s, -1) @ v)
    w = torch.softmax(lse, 1)
    return (w[..., None] * torch.stack(outs, 1)).sum(1)


@pytest.mark.parametrize("n_hub, dedup, n_summaries", [(0, False, 0), (3, False, 0), (3, True, 0), (0, False, 4), (3, True, 2), (3, True, 8)])
def test_kd_hub_dedup_summaries_match_a_materialised_reference(n_hub, dedup, n_summaries):
    """Forward and gradients equal the same algorithm written with masks and autograd (the dedup
    correction counts as a constant in both). Summary blocks smaller (8), equal (4) and larger (2)
    than the key clusters (16 keys in 4 clusters)."""
    q, k, v = qkv(b=2, n=64, m=16, d_qk=4, d_v=6)
    kwargs = dict(n_hashes=3, n_clusters=4, n_hub=n_hub, scale=0.8, seed=5, dedup=dedup, n_summaries=n_summaries)
    ref_out, ref_grads = grads(lambda q, k, v: reference_smyrf(q, k, v, **kwargs), q, k, v)
    for kernel in KERNELS:
        out, got = grads(
            lambda q, k, v: smyrf_attention(
                q, k, v, n_hashes=3, q_cluster_size=16, scale=0.8, seed=5, hashing="kd", n_hub_keys=n_hub,
                n_summaries=n_summaries, dedup="estimate" if dedup else "none", kernel=kernel,
            ),
            q, k, v,
        )
        torch.testing.assert_close(out, ref_out)
        for a, b in zip(got, ref_grads):
            torch.testing.assert_close(a, b)


def test_summaries_leave_out_padded_keys():
    """With a key mask, summary means and counts cover only real keys; padded keys get no gradient."""
    q, k, v = qkv(b=2, n=64, m=16, d_qk=4, d_v=6)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(3)) > 0.3
    kwargs = dict(n_hashes=2, n_clusters=4, n_hub=2, scale=1.0, seed=1, dedup=True, n_summaries=8, key_mask=mask)
    ref_out, ref_grads = grads(lambda q, k, v: reference_smyrf(q, k, v, **kwargs), q, k, v)
    out, (gq, gk, gv) = grads(
        lambda q, k, v: smyrf_attention(
            q, k, v, n_hashes=2, q_cluster_size=16, scale=1.0, seed=1, hashing="kd", n_hub_keys=2, n_summaries=8,
            dedup="estimate", key_padding_mask=mask,
        ),
        q, k, v,
    )
    torch.testing.assert_close(out, ref_out)
    for a, b in zip((gq, gk, gv), ref_grads):
        torch.testing.assert_close(a, b)
    assert gk[~mask].abs().max() == 0 and gv[~mask].abs().max() == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_with_summaries(kernel):
    """Summary means are ordinary autograd ops on the sorted keys (dedup off: it is a constant)."""
    q, k, v = qkv(b=1, n=32, m=8, d_qk=3, d_v=4, grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=8, hashing="kd", n_hub_keys=1,
                                        n_summaries=2, kernel=kernel),
        (q, k, v),
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_with_hub_keys(kernel):
    q, k, v = qkv(b=1, n=32, m=8, d_qk=3, d_v=4, grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=8, hashing="kd", n_hub_keys=2, kernel=kernel),
        (q, k, v),
    )


def test_library_defaults_with_one_cluster_equal_dense():
    """Hub keys, summaries + dedup keep SMYRF exact at one cluster: every key is counted exactly
    once (all summaries are empty: every block lies inside the one cluster)."""
    q, k, v = qkv()
    cfg = AttentionConfig(kind="smyrf", n_hashes=3, q_cluster_size=64, n_hub_keys=4, n_summaries=4)
    torch.testing.assert_close(attend(q, k, v, cfg), dense_attention(q, k, v))

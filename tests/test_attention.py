"""The attention core: exactness, balance, gradients, seeding, errors, precision, accuracy."""
import pytest
import torch

from biggan_smyrf.attention import (
    AttentionConfig,
    attend,
    cluster_orders,
    dense_attention,
    smyrf_attention,
    xbox_plus,
)
from biggan_smyrf.attention.synthetic import clustered_qkv, relative_error, smooth_feature_qkv

KERNELS = ["flash", "chunked"]
# The published recipe: the tests of the core mechanics (kernels, gradients, seeding) predate the
# library's additions, which have tests of their own below.
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


# --- dense ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_dense_sdpa_matches_math_with_unequal_dims(scale):
    q, k, v = qkv(n=48, m=12, d_qk=4, d_v=10)
    exact = dense_attention(q, k, v, scale=scale, backend="math")
    torch.testing.assert_close(dense_attention(q, k, v, scale=scale), exact)
    s = 4**-0.5 if scale is None else scale
    manual = torch.softmax(s * q @ k.transpose(1, 2), -1) @ v
    torch.testing.assert_close(exact, manual)


def test_dense_mask_matches_math():
    q, k, v = qkv()
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) > 0.3
    torch.testing.assert_close(
        dense_attention(q, k, v, key_padding_mask=mask), dense_attention(q, k, v, key_padding_mask=mask, backend="math")
    )


# --- SMYRF exactness --------------------------------------------------------------------------


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


# --- clustering -------------------------------------------------------------------------------


def test_xbox_plus_preserves_inner_products_and_equalises_norms():
    q, k, _ = qkv(b=3, n=40, m=10, dtype=torch.float32)
    q_ext, k_ext = xbox_plus(q, k)
    torch.testing.assert_close(q_ext @ k_ext.transpose(1, 2), q @ k.transpose(1, 2), rtol=1e-5, atol=1e-5)
    norms = torch.cat([q_ext.norm(dim=-1), k_ext.norm(dim=-1)], dim=1)
    torch.testing.assert_close(norms, norms[:, :1].expand_as(norms))


@pytest.mark.parametrize("hashing", ["kd", "xbox", "random"])
@pytest.mark.parametrize("n_clusters", [1, 4, 8, 16])
def test_clusters_are_balanced_permutations(hashing, n_clusters):
    q, k, _ = qkv(b=2, n=64, m=16, dtype=torch.float32)
    q_order, k_order = cluster_orders(q, k, 5, n_clusters, torch.Generator().manual_seed(0), hashing)
    assert q_order.shape == (2, 5, 64) and k_order.shape == (2, 5, 16)
    # Every round is a permutation of the batch element's own tokens: cutting it into runs gives
    # clusters of exactly the requested size, none empty, none shared with another batch element.
    assert torch.equal(q_order.sort(-1).values, torch.arange(64).expand(2, 5, 64))
    assert torch.equal(k_order.sort(-1).values, torch.arange(16).expand(2, 5, 16))


def test_batch_elements_do_not_interact():
    q, k, v = qkv(b=3, n=64, m=16)
    full = smyrf_attention(q, k, v, PAPER, n_hashes=2, q_cluster_size=16, seed=3)
    alone = smyrf_attention(q[1:2], k[1:2], v[1:2], PAPER, n_hashes=2, q_cluster_size=16, seed=3)
    torch.testing.assert_close(full[1:2], alone)


@pytest.mark.parametrize("hashing", ["kd", "xbox"])
def test_lsh_clusters_put_queries_with_their_best_key_more_often_than_random(hashing):
    q, k, _ = clustered_qkv(1, 1024, 256, 8, 8, torch.Generator().manual_seed(0))
    best = (q @ k.transpose(1, 2)).argmax(-1)[0]

    def hit_rate(hashing):
        q_order, k_order = cluster_orders(q, k, 1, 16, torch.Generator().manual_seed(0), hashing)
        q_cluster = torch.empty(1024, dtype=torch.long)
        q_cluster[q_order[0, 0]] = torch.arange(1024) // 64
        k_cluster = torch.empty(256, dtype=torch.long)
        k_cluster[k_order[0, 0]] = torch.arange(256) // 16
        return (q_cluster == k_cluster[best]).float().mean().item()

    assert hit_rate(hashing) > 3 * hit_rate("random")


# --- seeding ----------------------------------------------------------------------------------


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


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(q_cluster_size=7), "not divisible by q_cluster_size=7"),
        (dict(q_cluster_size=8, k_cluster_size=4), "must be equal"),
        (dict(q_cluster_size=0), "q_cluster_size must be >= 1"),
        (dict(q_cluster_size=8, k_cluster_size=-2), "k_cluster_size must be >= 1"),
        (dict(q_cluster_size=8, n_hashes=0), "n_hashes"),
    ],
)
def test_bad_cluster_settings_fail_with_hint(kwargs, match):
    q, k, v = qkv(dtype=torch.float32)
    kwargs = {"n_hashes": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        smyrf_attention(q, k, v, PAPER, **kwargs)


def test_error_lists_sizes_that_fit():
    q, k, v = qkv(n=64, m=16, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"Sizes that fit .*16/4.*64/16"):
        smyrf_attention(q, k, v, PAPER, n_hashes=1, q_cluster_size=48)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 64, 4), (3, 16, 4), (3, 16, 8)), "batch sizes differ"),
        (((2, 64, 4), (2, 16, 5), (2, 16, 8)), "same feature dim"),
        (((2, 64, 4), (2, 16, 4), (2, 12, 8)), "same number of tokens"),
        (((64, 4), (2, 16, 4), (2, 16, 8)), "must be \\(batch, tokens, dim\\)"),
    ],
)
@pytest.mark.parametrize("fn", ["dense", "smyrf"])
def test_bad_shapes_fail(shapes, match, fn):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        if fn == "dense":
            dense_attention(q, k, v)
        else:
            smyrf_attention(q, k, v, PAPER, n_hashes=1, q_cluster_size=16)


def test_bad_mask_fails():
    q, k, v = qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="key_padding_mask must be \\(batch, keys\\)"):
        smyrf_attention(q, k, v, PAPER, n_hashes=1, q_cluster_size=8, key_padding_mask=torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be bool"):
        dense_attention(q, k, v, key_padding_mask=torch.ones(2, 16))


def test_config_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionConfig(kind="sparse")
    cfg = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=2048)
    assert cfg.cluster_sizes(16384, 4096) == (2048, 512)
    with pytest.raises(ValueError, match="G attention at 32x32: 1024 queries"):
        cfg.validate_for(1024, 256, where="G attention at 32x32")
    AttentionConfig(kind="dense", q_cluster_size=2048).validate_for(1024, 256)  # dense ignores sizes


# --- precision and the unified entry point ----------------------------------------------------


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


def test_attend_dispatches_on_config():
    q, k, v = qkv()
    dense = attend(q, k, v, AttentionConfig(kind="dense"), scale=1.0)
    torch.testing.assert_close(dense, dense_attention(q, k, v, scale=1.0))
    one_cluster = attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64), scale=1.0)
    torch.testing.assert_close(one_cluster, dense)
    small = attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=8), scale=1.0)
    assert not torch.allclose(small, dense)


# --- accuracy on structured inputs -----------------------------------------------------------


@pytest.mark.parametrize("family", ["clustered", "smooth"])
def test_smyrf_beats_random_clusters_on_structured_inputs(family):
    g = torch.Generator().manual_seed(0)
    if family == "clustered":
        q, k, v = clustered_qkv(1, 1024, 256, 12, 48, g)
    else:
        q, k, v = smooth_feature_qkv(1, 32, 12, 48, g)
    exact = dense_attention(q, k, v, scale=1.0)

    def error(hashing):
        runs = [smyrf_attention(q, k, v, PAPER, n_hashes=4, q_cluster_size=128, scale=1.0, seed=s, hashing=hashing) for s in range(3)]
        return sum(relative_error(r, exact) for r in runs) / len(runs)

    assert error("xbox") < 0.9 * error("random")


# --- beyond the paper: k-d hashing, hub keys, dedup -----------------------------------------


def reference_smyrf(q, k, v, n_hashes, n_clusters, n_hub, scale, seed, dedup, n_summaries=0, key_mask=None):
    """The same algorithm with materialised masks and plain autograd (small sizes only)."""
    from biggan_smyrf.attention.hashing import hub_keys
    from biggan_smyrf.attention.smyrf import log_participation

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


def test_hub_keys_are_the_most_attended():
    from biggan_smyrf.attention.hashing import hub_keys

    q, k, _ = qkv(b=1, n=64, m=16, dtype=torch.float32)
    k[0, 5] *= 6  # one key with a large norm gets most of the attention
    mass = torch.softmax(q @ k.transpose(1, 2), -1).sum(1)
    got = hub_keys(q, k, 2, 64, 1.0, torch.Generator().manual_seed(0))
    assert set(got[0].tolist()) == set(mass.topk(2).indices[0].tolist())


def test_paper_preset_and_bad_options():
    cfg = AttentionConfig.paper(n_hashes=4, q_cluster_size=2048)
    assert (cfg.kind, cfg.hashing, cfg.n_hub_keys, cfg.n_summaries, cfg.dedup) == ("smyrf", "xbox", 0, 0, "none")
    assert AttentionConfig(kind="smyrf", q_cluster_size=2048).hub_keys_for(16384, 4096) == 128
    assert AttentionConfig(kind="smyrf", q_cluster_size=2048).summaries_for(16384, 4096) == 32
    assert AttentionConfig(kind="smyrf", q_cluster_size=64).summaries_for(4800, 1200) == 1  # 16 keys: 1
    assert AttentionConfig(kind="smyrf", q_cluster_size=20).summaries_for(4800, 1200) == 0  # 5 keys: off
    with pytest.raises(ValueError, match="n_summaries=7 must be 0 or divide the 4096 keys"):
        AttentionConfig(kind="smyrf", q_cluster_size=2048, n_summaries=7).validate_for(16384, 4096)
    with pytest.raises(ValueError, match="n_summaries must be >= 0"):
        AttentionConfig(n_summaries=-1)
    with pytest.raises(ValueError, match="hashing must be"):
        AttentionConfig(hashing="lsh")
    with pytest.raises(ValueError, match="n_hub_keys=16 must be below"):
        AttentionConfig(kind="smyrf", q_cluster_size=16, n_hub_keys=16).validate_for(64, 16)
    q, k, v = qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="n_hub_keys must be in"):
        smyrf_attention(q, k, v, PAPER, n_hashes=1, q_cluster_size=8, n_hub_keys=16)


@pytest.mark.parametrize("family", ["clustered", "smooth"])
def test_library_defaults_halve_the_papers_error_on_structured_inputs(family):
    """At the paper's shape ratio (8 clusters of 4 rounds), N = 4096 to stay fast."""
    g = torch.Generator().manual_seed(0)
    q, k, v = clustered_qkv(1, 4096, 1024, 12, 48, g) if family == "clustered" else smooth_feature_qkv(1, 64, 12, 48, g)
    exact = dense_attention(q, k, v, scale=1.0)

    def error(cfg):
        return sum(relative_error(attend(q, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(s)), exact)
                   for s in range(3)) / 3

    ours = error(AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=512))
    paper = error(AttentionConfig.paper(n_hashes=4, q_cluster_size=512))
    random = error(AttentionConfig.paper(n_hashes=4, q_cluster_size=512, hashing="random"))
    assert ours < 0.6 * paper and ours < 0.6 * random


def test_summaries_cut_the_error_on_spread_out_attention():
    """A young G's attention is spread out (logit std ~1.5): most mass lies outside any cluster,
    which summary keys recover and hub keys cannot."""
    g = torch.Generator().manual_seed(0)
    q, k, v = smooth_feature_qkv(1, 64, 12, 48, g, logit_std=1.5, value_mean=1.0)
    exact = dense_attention(q, k, v, scale=1.0)

    def error(cfg):
        return sum(relative_error(attend(q, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(s)), exact)
                   for s in range(3)) / 3

    ours = error(AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=512))
    without = error(AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=512, n_summaries=0))
    random = error(AttentionConfig.paper(n_hashes=4, q_cluster_size=512, hashing="random"))
    assert ours < 0.8 * without and ours < 0.85 * random


def test_dense_uses_the_flash_kernel_for_strided_biggan_inputs():
    """BigGAN views channels-first maps as tokens (strided); SDPA must still take the flash path,
    not silently fall back to the O(N*M) math kernel."""
    q = torch.randn(1, 12, 1024).transpose(1, 2)
    k = torch.randn(1, 12, 256).transpose(1, 2)
    v = torch.randn(1, 48, 256).transpose(1, 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        dense_attention(q, k, v, scale=1.0)
    names = {event.name for event in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names, sorted(n for n in names if "attention" in n)


def test_unit_sums_through_the_order_equal_sums_of_the_sorted_copy():
    """The permuted route sums the summaries' features one round at a time; the gathered route
    sums all rounds' sorted copies at once. The same sums, forward and backward."""
    from biggan_smyrf.attention.smyrf import _gather
    from biggan_smyrf.attention.summaries import unit_sums_through

    g = torch.Generator().manual_seed(0)
    B, H, M, F, unit = 2, 3, 48, 5, 8
    order = torch.stack([torch.stack([torch.randperm(M, generator=g) for _ in range(H)]) for _ in range(B)])
    features = torch.randn(B, M, F, generator=g, dtype=torch.float64, requires_grad=True)
    through = unit_sums_through(order, features, unit)
    sorted_copy = _gather(features, order).view(B, H, M // unit, unit, F).sum(3)
    torch.testing.assert_close(through, sorted_copy)
    weights = torch.randn(through.shape, generator=g, dtype=torch.float64)
    grad_through, = torch.autograd.grad((through * weights).sum(), features)
    grad_sorted, = torch.autograd.grad((sorted_copy * weights).sum(), features)
    torch.testing.assert_close(grad_through, grad_sorted)


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_round_normalisers_carry_the_gathered_routes_round_weights(dedup):
    """The permuted route folds each round's weight into norm_r = lse_r - log w_r: exp(lse_r - norm_r)
    must be the gathered route's w_r (softmax over rounds and hub, dedup-corrected), 0 for a round
    whose cluster held only masked keys, and w_hub the hub round's share."""
    from biggan_smyrf.attention.smyrf import log_participation, round_normalisers

    g = torch.Generator().manual_seed(0)
    lse, lse_hub = torch.randn(2, 3, 5, generator=g), torch.randn(2, 5, generator=g)
    lse[0, 1, 2] = float("-inf")
    norm, w_hub = round_normalisers(lse, lse_hub, dedup)
    hashed = lse - log_participation(lse) if dedup else lse
    weights = torch.softmax(torch.cat([hashed, lse_hub[:, None]], dim=1), dim=1)
    torch.testing.assert_close(torch.exp(lse - norm), weights[:, :3])
    torch.testing.assert_close(w_hub, weights[:, 3])
    assert norm[0, 1, 2] == float("inf")
    norm, w_hub = round_normalisers(lse, None, dedup)  # no hub round: plain softmax over the rounds
    assert w_hub is None
    torch.testing.assert_close(torch.exp(lse - norm), torch.softmax(lse, dim=1))

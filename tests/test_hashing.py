"""SMYRF's clustering (`hashing.py`): XBOX+, balanced clusters, LSH quality, hub key selection."""
import pytest
import torch

from biggan_smyrf.attention import cluster_orders, xbox_plus
from biggan_smyrf.attention.synthetic import clustered_qkv

from attention_inputs import qkv


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


def test_hub_keys_are_the_most_attended():
    from biggan_smyrf.attention.hashing import hub_keys

    q, k, _ = qkv(b=1, n=64, m=16, dtype=torch.float32)
    k[0, 5] *= 6  # one key with a large norm gets most of the attention
    mass = torch.softmax(q @ k.transpose(1, 2), -1).sum(1)
    got = hub_keys(q, k, 2, 64, 1.0, torch.Generator().manual_seed(0))
    assert set(got[0].tolist()) == set(mass.topk(2).indices[0].tolist())


# The CUDA route's hashing (triton/hashing.py), counted as benchmarks/host_cost.py counts a call:
# at BigGAN's shapes (batch 32, d_qk 12, keys 2x2-pooled, bf16, 4 rounds) on meta tensors.
@pytest.mark.parametrize("hashing, n, n_clusters", [("kd", 16384, 8), ("kd", 65536, 16), ("xbox", 16384, 8),
                                                    ("xbox", 65536, 16)])
def test_triton_hashing_launches_within_budget(hashing, n, n_clusters):
    """2 per k-d level + 3 (maxima, one draw, the tokens out of the last sort); xbox 4."""
    pytest.importorskip("triton")
    from collections import Counter

    from benchmarks.host_cost import LaunchCounter, stubbed_triton
    from biggan_smyrf.attention.hashing import prime_factors
    from biggan_smyrf.attention.triton.hashing import cluster_orders as triton_cluster_orders

    q = torch.randn(32, 12, n, device="meta", dtype=torch.bfloat16).transpose(1, 2)  # channels-first view
    k = torch.randn(32, n // 4, 12, device="meta", dtype=torch.bfloat16)
    triton, aten = Counter(), LaunchCounter()
    with stubbed_triton(triton), aten:
        q_order, k_order = triton_cluster_orders(q, k, 4, n_clusters, torch.Generator().manual_seed(0), hashing)
    assert q_order.shape == (32, 4, n) and k_order.shape == (32, 4, n // 4)
    launches = sum(aten.launches.values()) + sum(triton.values())
    budget = 4 if hashing == "xbox" else 2 * len(prime_factors(n_clusters)) + 3
    assert launches <= budget, (dict(aten.launches), dict(triton))

"""SMYRF's accuracy on structured inputs: LSH against random clusters, the library's additions
against the paper's recipe."""
import pytest
import torch

from biggan_smyrf.attention import AttentionConfig, attend, dense_attention, smyrf_attention
from biggan_smyrf.attention.synthetic import clustered_qkv, relative_error, smooth_feature_qkv

from attention_inputs import PAPER


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

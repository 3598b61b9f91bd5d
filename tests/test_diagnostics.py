"""Attention diagnostics: SMYRF-vs-dense error, covered attention mass, cluster maps."""
import torch

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.metrics.diagnostics import attention_diagnostics, cluster_ids
from biggan_smyrf.models import Generator, GeneratorConfig


def generator(resolutions=(16, 32)):
    G = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=list(resolutions))).eval()
    for m in G.modules():
        if hasattr(m, "gamma"):
            m.gamma.data.fill_(1.0)
    return G


def inputs():
    return torch.randn(2, 120, generator=torch.Generator().manual_seed(0)), torch.zeros(2, dtype=torch.long)


def test_one_cluster_is_exact_and_sees_all_mass():
    G = generator(resolutions=[32])
    one = AttentionConfig(kind="smyrf", n_hashes=1, q_cluster_size=1024, n_hub_keys=0)
    diag = attention_diagnostics(G, one, *inputs())
    big = diag["blocks.2.1"]
    assert big.error < 1e-5 and abs(big.mass_share - 1.0) < 1e-5
    assert big.cluster_map.shape == (3, 128, 128) and big.cluster_map.dtype == torch.uint8
    assert len(torch.unique(big.cluster_map.flatten(1), dim=1).T) == 1  # one cluster, one colour


def test_small_clusters_miss_mass_and_more_rounds_cover_more():
    G = generator()
    paper = AttentionConfig.paper(n_hashes=1, q_cluster_size=64)
    one_round = attention_diagnostics(G, paper, *inputs())["blocks.2.1"]
    four_rounds = attention_diagnostics(G, paper.with_(n_hashes=4), *inputs())["blocks.2.1"]
    assert 0 < one_round.mass_share < 1 and one_round.error > 1e-3
    assert four_rounds.mass_share > one_round.mass_share
    assert set(attention_diagnostics(G, paper, *inputs())) == {"blocks.1.1", "blocks.2.1"}
    assert len(torch.unique(one_round.cluster_map.flatten(1), dim=1).T) > 1


def test_cluster_ids_are_balanced():
    q, k = torch.randn(2, 256, 4), torch.randn(2, 64, 4)
    cfg = AttentionConfig(kind="smyrf", n_hashes=3, q_cluster_size=32)
    q_ids, k_ids, hubs = cluster_ids(q, k, cfg, torch.Generator().manual_seed(0))
    assert q_ids.shape == (2, 3, 256) and k_ids.shape == (2, 3, 64)
    assert (torch.bincount(q_ids[1, 2]) == 32).all() and (torch.bincount(k_ids[0, 1]) == 8).all()
    assert hubs.shape == (2, cfg.hub_keys_for(256, 64))

"""Attention diagnostics: SMYRF-vs-dense error, covered attention mass, cluster maps, read off
what SMYRF returned (`return_intermediates`), on every device."""
import pytest
import torch

from biggan_smyrf.attention import AttentionConfig, attend, smyrf_attention
from biggan_smyrf.attention.diagnostics import diagnose
from biggan_smyrf.models import Generator, GeneratorConfig
from biggan_smyrf.models.diagnostics import attention_diagnostics

BLOCKS = {16: "blocks.1.1", 32: "blocks.2.1"}


def generator(resolutions=(16, 32)):
    G = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=list(resolutions))).eval()
    for m in G.modules():
        if hasattr(m, "gamma"):
            m.gamma.data.fill_(1.0)
    return G


def inputs(device="cpu"):
    z = torch.randn(2, 120, generator=torch.Generator().manual_seed(0))
    return z.to(device), torch.zeros(2, dtype=torch.long, device=device)


def test_one_cluster_is_exact_and_sees_all_mass():
    G = generator(resolutions=[32])
    one = AttentionConfig(kind="smyrf", n_hashes=1, q_cluster_size=1024, n_hub_keys=0)
    big = attention_diagnostics(G, {BLOCKS[32]: one}, *inputs())[BLOCKS[32]]
    assert big.error < 1e-5 and abs(big.mass_share - 1.0) < 1e-5
    assert big.cluster_map.shape == (3, 128, 128) and big.cluster_map.dtype == torch.uint8
    assert len(torch.unique(big.cluster_map.flatten(1), dim=1).T) == 1  # one cluster, one colour


def test_small_clusters_miss_mass_and_more_rounds_cover_more():
    G = generator()
    paper = AttentionConfig.paper(n_hashes=1, q_cluster_size=64)
    one_round = attention_diagnostics(G, {BLOCKS[32]: paper}, *inputs())[BLOCKS[32]]
    four_rounds = attention_diagnostics(G, {BLOCKS[32]: paper.with_(n_hashes=4)}, *inputs())[BLOCKS[32]]
    assert 0 < one_round.mass_share < 1 and one_round.error > 1e-3
    assert four_rounds.mass_share > one_round.mass_share
    both = attention_diagnostics(G, {BLOCKS[16]: paper.with_(q_cluster_size=32), BLOCKS[32]: paper}, *inputs())
    assert set(both) == set(BLOCKS.values())
    assert len(torch.unique(one_round.cluster_map.flatten(1), dim=1).T) > 1


def test_diagnostics_read_the_clusters_smyrf_used():
    """The reported error is the error of exactly the call whose clusters are reported: same
    generator seed, same output, and the clusters are balanced."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 256, 4, generator=g), torch.randn(2, 64, 4, generator=g), torch.randn(2, 64, 8, generator=g)
    cfg = AttentionConfig(kind="smyrf", n_hashes=3, q_cluster_size=32)
    out, did = smyrf_attention(q, k, v, cfg, scale=1.0, seed=5, return_intermediates=True)
    torch.testing.assert_close(out, smyrf_attention(q, k, v, cfg, scale=1.0, seed=5))
    q_ids, k_ids = did.query_clusters(), did.key_clusters()
    assert q_ids.shape == (2, 3, 256) and k_ids.shape == (2, 3, 64)
    assert (torch.bincount(q_ids[1, 2]) == 32).all() and (torch.bincount(k_ids[0, 1]) == 8).all()
    assert did.hub_keys.shape == (2, cfg.resolve(256, 64).n_hub_keys)
    found = diagnose(q, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(5))
    dense = attend(q, k, v, AttentionConfig(), scale=1.0)
    assert found.error == pytest.approx(((out - dense).norm() / dense.norm()).item(), rel=1e-6)
    assert torch.equal(found.query_clusters, q_ids[0, 0])
    assert attend(q, k, v, AttentionConfig(), return_intermediates=True)[1] is None  # dense did no clustering


@pytest.mark.cuda
def test_diagnostics_run_on_cuda_and_match_the_cpu():
    """Regression: validation died here on CUDA (cluster ids built from CPU tensors)."""
    G = generator()
    cfg = {BLOCKS[32]: AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=128)}
    on_cpu = attention_diagnostics(G, cfg, *inputs())[BLOCKS[32]]
    on_gpu = attention_diagnostics(G.cuda(), cfg, *inputs("cuda"))[BLOCKS[32]]
    assert on_gpu.error == pytest.approx(on_cpu.error, rel=1e-3, abs=1e-5)
    assert on_gpu.mass_share == pytest.approx(on_cpu.mass_share, rel=1e-3)
    assert on_gpu.cluster_map.device.type == "cpu"

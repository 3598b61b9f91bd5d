"""Attention settings and inputs: validation, clear errors, the paper preset (`config.py`, `checks.py`)."""
import pytest
import torch

from biggan_smyrf.attention import AttentionConfig, dense_attention, smyrf_attention

from attention_inputs import PAPER, qkv


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

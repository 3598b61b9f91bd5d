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
    sizes = cfg.resolve(16384, 4096)
    assert (sizes.q_cluster_size, sizes.k_cluster_size, sizes.n_clusters) == (2048, 512, 8)
    with pytest.raises(ValueError, match="G attention at 32x32: 1024 queries"):
        cfg.validate_for(1024, 256, where="G attention at 32x32")
    AttentionConfig(kind="dense", q_cluster_size=2048).validate_for(1024, 256)  # dense ignores sizes


def test_paper_preset_and_bad_options():
    cfg = AttentionConfig.paper(n_hashes=4, q_cluster_size=2048)
    assert (cfg.kind, cfg.hashing, cfg.n_hub_keys, cfg.n_summaries, cfg.dedup) == ("smyrf", "xbox", 0, 0, "none")
    assert AttentionConfig(kind="smyrf", q_cluster_size=2048).resolve(16384, 4096).n_hub_keys == 128
    assert AttentionConfig(kind="smyrf", q_cluster_size=2048).resolve(16384, 4096).n_summaries == 32
    assert AttentionConfig(kind="smyrf", q_cluster_size=64).resolve(4800, 1200).n_summaries == 1  # 16 keys: 1
    assert AttentionConfig(kind="smyrf", q_cluster_size=20).resolve(4800, 1200).n_summaries == 0  # 5 keys: off
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


@pytest.mark.parametrize("kernel, device", [("flash", "cpu"), ("chunked", "cpu"), ("triton", "meta")])
def test_smyrf_sizes_are_resolved_once_per_call(kernel, device):
    """Validation, the hashing, the plan, the summaries and the kernels' launchers all read the one
    `SmyrfSizes` that `AttentionConfig.resolve` returns; nothing re-derives a size along the way.
    (The CUDA route on meta tensors: its host side in full, no launch.)"""
    from unittest import mock

    from biggan_smyrf.attention import config as config_module
    from biggan_smyrf.attention.triton import triton_available

    if kernel == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    q, k, v = (torch.randn(2, t, d, device=device, requires_grad=True) for t, d in ((256, 8), (64, 8), (64, 16)))
    cfg = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64, n_summaries=4, kernel=kernel)
    with mock.patch.object(config_module, "resolve_cluster_sizes", wraps=config_module.resolve_cluster_sizes) as spy:
        smyrf_attention(q, k, v, cfg, scale=1.0).sum().backward()
    assert spy.call_count == 1


def test_attention_names_resolve_in_one_place():
    """"paper" means the same recipe wherever attention is named (sample.py, set_attention, load_generator)."""
    from biggan_smyrf.attention import AttentionChange
    from biggan_smyrf.models.swap import _applied

    built = AttentionConfig(kind="dense", q_cluster_size=1024)
    paper = _applied(built, "paper", "G")
    assert paper == AttentionConfig.paper(q_cluster_size=1024)
    assert AttentionChange.named("paper", n_hashes=8).apply(built) == AttentionConfig.paper(q_cluster_size=1024, n_hashes=8)
    assert _applied(paper, "dense", "G") == paper.with_(kind="dense")

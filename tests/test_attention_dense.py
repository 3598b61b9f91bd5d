"""Dense attention (PyTorch SDPA) and `attend`, the one entry point over dense and SMYRF."""
import pytest
import torch

from biggan_smyrf.attention import AttentionConfig, attend, dense_attention

from attention_inputs import qkv


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


def test_attend_dispatches_on_config():
    q, k, v = qkv()
    dense = attend(q, k, v, AttentionConfig(kind="dense"), scale=1.0)
    torch.testing.assert_close(dense, dense_attention(q, k, v, scale=1.0))
    one_cluster = attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64), scale=1.0)
    torch.testing.assert_close(one_cluster, dense)
    small = attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=8), scale=1.0)
    assert not torch.allclose(small, dense)

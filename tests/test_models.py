"""BigGAN G/D: shapes, attention placement, the dense <-> SMYRF swap on the same weights."""
import copy
import io

import pytest
import torch

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    attention_configs,
    capture_qkv,
    count_parameters,
    model_summary,
    orthogonal_regularization,
    set_attention,
    using_attention,
)

SMYRF_SMALL = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64)


def make_g(resolution=32, attn=(32,), kind="dense", **kw):
    dim_z = 140 if resolution == 256 else 120
    cfg = GeneratorConfig(resolution=resolution, ch=8, dim_z=dim_z, attention_resolutions=list(attn),
                          attention=AttentionConfig(kind=kind), **kw)
    return Generator(cfg)


def make_d(resolution=32, attn=(8,), **kw):
    return Discriminator(DiscriminatorConfig(resolution=resolution, ch=8, attention_resolutions=list(attn), **kw))


def with_nonzero_gamma(model, value=1.0):
    """Attention blocks start as identities (gamma = 0); open them so attention changes outputs."""
    for block in model.modules():
        if hasattr(block, "gamma"):
            block.gamma.data.fill_(value)
    return model


@pytest.mark.parametrize("resolution,g_attn,d_attn", [(32, [16, 32], [8]), (64, [64], [32]), (128, [32], [16]), (256, [32], [64])])
@pytest.mark.parametrize("n_classes", [1, 5])
def test_shapes_and_range(resolution, g_attn, d_attn, n_classes):
    G = make_g(resolution, g_attn, n_classes=n_classes)
    D = make_d(resolution, d_attn, n_classes=n_classes)
    z = torch.randn(2, G.config.dim_z) * 3
    y = torch.tensor([0, n_classes - 1])
    x = G(z, y)
    assert x.shape == (2, 3, resolution, resolution)
    assert x.abs().max() <= 1.0
    assert D(x, y).shape == (2,)


def test_class_conditioning_changes_outputs_in_both_networks():
    G, D = make_g(n_classes=3).eval(), make_d(n_classes=3).eval()
    z = torch.randn(1, 120).repeat(2, 1)
    y = torch.tensor([0, 2])
    x = G(z, y)
    assert not torch.allclose(x[0], x[1])
    same = x[:1].repeat(2, 1, 1, 1)
    scores = D(same, y)
    assert not torch.allclose(scores[0], scores[1])


def test_one_hot_conditioning_without_shared_embedding():
    G = make_g(n_classes=4, shared_dim=0).eval()
    assert G.shared is None
    x = G(torch.randn(1, 120).repeat(2, 1), torch.tensor([1, 3]))
    assert not torch.allclose(x[0], x[1])


def test_architecture_widths_match_biggan():
    G = Generator(GeneratorConfig(resolution=128, ch=4, attention_resolutions=[]))
    widths = [(stage[0].conv1.in_channels, stage[0].conv1.out_channels) for stage in G.blocks]
    assert widths == [(64, 64), (64, 32), (32, 16), (16, 8), (8, 4)]
    D = Discriminator(DiscriminatorConfig(resolution=128, ch=4, attention_resolutions=[]))
    widths = [(stage[0].conv1.in_channels, stage[0].conv1.out_channels) for stage in D.blocks]
    assert widths == [(3, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 64)]
    assert len(Generator(GeneratorConfig(resolution=256, ch=4, dim_z=140, attention_resolutions=[])).blocks) == 6


def test_spectral_norm_on_every_weight_layer():
    for model in (make_g(), make_d()):
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) or (
                isinstance(module, torch.nn.Embedding) and model.__class__ is Discriminator
            ):
                assert hasattr(module, "parametrizations"), module


def test_spectral_norm_runs_outside_autocast(monkeypatch):
    """Autocast on CUDA would run the power iteration's and sigma's mv in bf16 (three weight casts
    per forward, sigma to 3 digits); spectral norm turns it off for itself. CPU autocast leaves mv
    alone, so what is checked here is the state autocast is in when mv runs; the CUDA test checks
    the numbers."""
    from biggan_smyrf.models.layers import sn_conv

    layer, x = sn_conv(4, 6, 3, eps=1e-6), torch.randn(2, 4, 5, 5)
    seen = []
    mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *args: seen.append(torch.is_autocast_enabled("cpu")) or mv(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert torch.is_autocast_enabled("cpu")  # only spectral norm left it
    assert out.dtype == torch.bfloat16  # the convolution itself still runs in bf16
    assert seen == [False, False, False]  # power iteration (2) + sigma (1)


@pytest.mark.parametrize("network,resolution,bad", [("G", 64, 128), ("G", 64, 4), ("D", 128, 128), ("D", 64, 64)])
def test_invalid_attention_resolution_lists_valid_ones(network, resolution, bad):
    with pytest.raises(ValueError, match="chosen from") as err:
        if network == "G":
            make_g(resolution, [bad])
        else:
            make_d(resolution, [bad])
    if network == "D" and bad == resolution:
        assert "never sees" in str(err.value)


def test_invalid_resolution_and_dim_z():
    with pytest.raises(ValueError, match="resolution must be one of"):
        Generator(GeneratorConfig(resolution=48, ch=8))
    with pytest.raises(ValueError, match="dim_z=128 must split into 6"):
        Generator(GeneratorConfig(resolution=128, ch=8, dim_z=128))


def test_cluster_size_errors_name_block_and_sizes_that_fit():
    with pytest.raises(ValueError, match=r"G attention at 32px \(32x32: 1024 queries, 256 keys\).*Sizes that fit"):
        Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=[32],
                                  attention=AttentionConfig(kind="smyrf", q_cluster_size=3000)))
    G = make_g()
    before = attention_configs(G)
    with pytest.raises(ValueError, match="Sizes that fit"):
        set_attention(G, "smyrf", q_cluster_size=100)
    assert attention_configs(G) == before  # nothing half-applied


def test_swap_leaves_state_dict_bit_identical_and_round_trips_strict():
    G = make_g(attn=[16, 32])
    state = {k: v.clone() for k, v in G.state_dict().items()}
    set_attention(G, "smyrf", n_hashes=2, q_cluster_size=64)
    assert {c.kind for c in attention_configs(G).values()} == {"smyrf"}
    after = G.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)
    buffer = io.BytesIO()
    torch.save(G.state_dict(), buffer)
    buffer.seek(0)
    dense = make_g(attn=[16, 32])
    dense.load_state_dict(torch.load(buffer, weights_only=True), strict=True)


def test_dense_equals_smyrf_with_one_cluster():
    G = with_nonzero_gamma(make_g(attn=[16, 32])).eval()
    z = torch.randn(3, 120)
    dense = G(z)
    with using_attention(G, "smyrf", n_hashes=1, q_cluster_size=1024, resolutions=[32]), using_attention(
        G, "smyrf", n_hashes=1, q_cluster_size=256, resolutions=[16]
    ):
        one_cluster = G(z)
    torch.testing.assert_close(one_cluster, dense, atol=1e-5, rtol=1e-4)


def test_small_clusters_give_close_but_different_images():
    G = with_nonzero_gamma(make_g(attn=[32]), 0.5).eval()
    z = torch.randn(4, 120)
    dense = G(z)
    with using_attention(G, SMYRF_SMALL):
        smyrf = G(z)
    assert attention_configs(G)["blocks.2.1"].kind == "dense"  # restored after the block
    diff = (smyrf - dense).abs()
    assert diff.max() > 1e-4
    assert diff.mean() < 0.5 * dense.abs().mean()


def test_swap_selected_resolution_and_parameters_only():
    G = make_g(attn=[16, 32])
    set_attention(G, "smyrf", q_cluster_size=64, resolutions=[32])
    configs = attention_configs(G)
    assert configs["blocks.1.1"].kind == "dense" and configs["blocks.2.1"].kind == "smyrf"
    set_attention(G, n_hashes=8, resolutions=[32])
    assert attention_configs(G)["blocks.2.1"].n_hashes == 8
    set_attention(G, "dense")
    set_attention(G, "smyrf", resolutions=[32])  # SMYRF parameters survive a round trip through dense
    assert attention_configs(G)["blocks.2.1"] == AttentionConfig(kind="smyrf", n_hashes=8, q_cluster_size=64)
    with pytest.raises(ValueError, match="this model has attention at \\[16, 32\\]"):
        set_attention(G, "dense", resolutions=[64])
    with pytest.raises(TypeError, match="unknown attention settings"):
        set_attention(G, "smyrf", n_hash=4)


def test_eval_sampling_is_deterministic_training_hashes_are_fresh():
    from biggan_smyrf.attention import attend

    G = with_nonzero_gamma(make_g(attn=[32]), 1.0).eval()
    set_attention(G, SMYRF_SMALL)
    z = torch.randn(2, 120)
    first = G(z)
    block = G.blocks[2][1]
    q, k, v = block.qkv(torch.randn(1, block.theta.in_channels, 32, 32))
    # Training forwards draw from the block's generator, and each draw is a new hash.
    a = attend(q, k, v, SMYRF_SMALL, scale=1.0, generator=block.generator)
    b = attend(q, k, v, SMYRF_SMALL, scale=1.0, generator=block.generator)
    assert not torch.equal(a, b)
    # Eval forwards re-seed: the same z gives the same image whatever was drawn in between.
    torch.testing.assert_close(G(z), first, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["dense", "smyrf"])
def test_gradients_reach_every_parameter(kind):
    G = with_nonzero_gamma(make_g(attn=[16, 32], n_classes=3), 0.5)
    D = with_nonzero_gamma(make_d(attn=[8], n_classes=3), 0.5)
    if kind == "smyrf":
        set_attention(G, SMYRF_SMALL, resolutions=[32])
        set_attention(G, "smyrf", n_hashes=2, q_cluster_size=16, resolutions=[16])
        set_attention(D, "smyrf", n_hashes=2, q_cluster_size=16)
    y = torch.tensor([0, 1, 2, 1])
    loss = D(G(torch.randn(4, 120), y), y).mean()
    loss.backward()
    for model in (G, D):
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gamma_starts_at_zero_so_attention_is_an_identity_at_init():
    G = make_g(attn=[32]).eval()
    z = torch.randn(2, 120)
    dense = G(z)
    with using_attention(G, SMYRF_SMALL):
        torch.testing.assert_close(G(z), dense, atol=0, rtol=0)


def test_orthogonal_regularization_matches_biggan_gradient():
    D = make_d(attn=[])
    loss = orthogonal_regularization(D)
    loss.backward()
    w = D.linear.parametrizations.weight.original
    w2 = D.blocks[0][0].conv1.parametrizations.weight.original
    flat = w2.detach().flatten(1)
    gram = flat @ flat.T
    expected = 2 * (gram * (1 - torch.eye(gram.shape[0]))) @ flat
    torch.testing.assert_close(w2.grad.flatten(1), expected)
    assert w.grad is not None  # a 1-row matrix has no off-diagonal terms: zero gradient
    assert torch.count_nonzero(w.grad) == 0


def test_summary_and_capture():
    G, D = make_g(attn=[32], kind="dense"), make_d(attn=[8])
    text = model_summary(G, D)
    assert "attention at 32x32: 1024 queries x 256 keys, dense" in text
    assert f"{count_parameters(G) / 1e6:.2f} M" in text
    with capture_qkv(G) as captured:
        G(torch.randn(2, 120))
    (q, k, v), = captured["blocks.2.1"]
    assert q.shape == (2, 1024, 4) and k.shape == (2, 256, 4) and v.shape == (2, 256, 16)
    assert not G.blocks[2][1]._forward_pre_hooks  # hooks removed


def test_deepcopy_keeps_attention_config_and_generator():
    G = make_g(attn=[32])
    set_attention(G, SMYRF_SMALL)
    clone = copy.deepcopy(G)
    assert attention_configs(clone) == attention_configs(G)
    set_attention(clone, "dense")
    assert attention_configs(G)["blocks.2.1"].kind == "smyrf"


def test_per_resolution_attention_overrides_from_yaml_like_dicts():
    from biggan_smyrf.typed import coerce

    # As a checkpoint or JSON round trip hands them back: plain dicts, resolutions as strings.
    cfg = coerce(GeneratorConfig, {
        "resolution": 32, "ch": 8, "attention_resolutions": [16, 32],
        "attention": {"kind": "dense"},
        "attention_overrides": {"32": {"kind": "smyrf", "n_hashes": 2, "q_cluster_size": 64}},
    })
    configs = attention_configs(Generator(cfg))
    assert configs["blocks.1.1"] == AttentionConfig(kind="dense")
    assert configs["blocks.2.1"] == AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64)
    with pytest.raises(ValueError, match=r"attention_overrides for resolutions \[64\]"):
        GeneratorConfig(resolution=32, ch=8, attention_resolutions=[32], attention_overrides={64: AttentionConfig()})
    with pytest.raises(TypeError, match="unknown options \\['n_hash'\\]"):
        coerce(AttentionConfig, {"kind": "smyrf", "n_hash": 2})

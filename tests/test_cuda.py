"""Every path on a CUDA GPU: attention against the CPU, the swap, train.py with
metrics + diagnostics + comparison, resume, sample.py, both mixed precisions. Collected
everywhere, run only where a GPU is (`cuda` marker; CI has none); `make gpu-check` runs them."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from biggan_smyrf.attention import AttentionConfig, attend
from biggan_smyrf.attention.synthetic import relative_error, smooth_feature_qkv
from biggan_smyrf.metrics.random_weights import write_random_inception_weights
from biggan_smyrf.models import Generator, GeneratorConfig, attention_configs, using_attention
from biggan_smyrf.training import SpeedConfig

from conftest import ROOT, load, train
from helpers import loader, tiny_module

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
SMYRF = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=512)


def forward_backward(q, k, v, config):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = attend(q, k, v, config, scale=1.0, generator=torch.Generator().manual_seed(0))
    (out.float() * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach().float().cpu(), [t.grad.float().cpu() for t in (q, k, v)]


@pytest.mark.parametrize("config", [SMYRF, AttentionConfig.paper(n_hashes=4, q_cluster_size=512), AttentionConfig()])
def test_attention_forward_and_backward_match_the_cpu(config):
    """Same inputs, same hashes (drawn on the CPU): CUDA equals the CPU path to float rounding."""
    q, k, v = smooth_feature_qkv(2, 64, 12, 48, torch.Generator().manual_seed(0))
    cpu_out, cpu_grads = forward_backward(q, k, v, config)
    gpu_out, gpu_grads = forward_backward(q.to(CUDA), k.to(CUDA), v.to(CUDA), config)
    assert relative_error(gpu_out, cpu_out) < 1e-3
    for a, b in zip(gpu_grads, cpu_grads):
        assert relative_error(a, b) < 1e-3
    # bf16 against float32 on the same rounded inputs (so both hash into the same clusters).
    rounded = [t.to(torch.bfloat16) for t in (q, k, v)]
    ref_out, _ = forward_backward(*(t.float() for t in rounded), config)
    half_out, half_grads = forward_backward(*(t.to(CUDA) for t in rounded), config)
    assert relative_error(half_out, ref_out) < 0.02 and all(torch.isfinite(g).all() for g in half_grads)


def test_swap_on_a_cuda_model_keeps_weights_and_one_cluster_equals_dense():
    G = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=[32])).to(CUDA).eval()
    for name, p in G.named_parameters():
        if name.endswith("gamma"):
            p.data.fill_(1.0)
    z = torch.randn(4, 120, device=CUDA)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    dense = G(z)
    with using_attention(G, "smyrf", n_hashes=2, q_cluster_size=1024):
        one_cluster = G(z)
    with using_attention(G, SMYRF.with_(q_cluster_size=128)):
        clustered = G(z)
    torch.testing.assert_close(one_cluster, dense, atol=1e-4, rtol=1e-3)
    assert 0 < (clustered - dense).abs().mean() < 0.5 * dense.abs().mean()
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert {c.kind for c in attention_configs(G).values()} == {"dense"}


def gpu_fit(module, tmp_path, precision: str) -> pl.Trainer:
    steps = module.optim_cfg.num_d_steps
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         val_check_interval=steps, check_val_every_n_epoch=None, limit_val_batches=1,
                         num_sanity_val_steps=0, precision=precision)
    trainer.fit(module, loader(), loader())
    assert module.g_iters == 2
    assert all(torch.isfinite(p).all() for p in module.G.parameters())
    return trainer


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_steps_on_cuda(tmp_path, precision):
    """16-mixed runs GradScaler under manual optimisation (Lightning's precision plugin)."""
    trainer = gpu_fit(tiny_module(), tmp_path, precision)
    if precision == "16-mixed":
        assert trainer.precision_plugin.scaler is not None


def test_channels_last_and_fused_adam_on_cuda(tmp_path):
    trainer = gpu_fit(tiny_module(speed=SpeedConfig(channels_last=True)), tmp_path, "bf16-mixed")
    assert all(opt.defaults["fused"] for opt in trainer.optimizers)


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """train.py on the GPU: metrics (random Inception weights), diagnostics and the dense/SMYRF comparison."""
    cwd = tmp_path_factory.mktemp("cuda_run")
    weights = write_random_inception_weights(cwd / "inception.pth")
    train(cwd, "--run=gpu", "--trainer.accelerator=gpu", "--model.loop.max_g_iters=4", "--model.loop.val_every=2",
          "--model.loop.ckpt_every=2", "--model.loop.sample_every=2", "--model.metrics.enabled=true",
          f"--model.metrics.weights_path={weights}", "--model.metrics.n_samples=8", "--model.metrics.n_real=8",
          "--model.metrics.kid_subset_size=8", "--model.attention.compare.kind=smyrf", "--model.attention.diagnostics=true")
    return cwd


def test_train_py_on_cuda_with_metrics_diagnostics_and_comparison(cuda_run):
    ckpt = load(cuda_run / "checkpoints" / "gpu" / "last.ckpt")
    assert ckpt["biggan_smyrf"]["g_iters"] == 4
    assert (cuda_run / "checkpoints" / "gpu" / "best-fid.ckpt").exists()
    assert sorted(p.name for p in (cuda_run / "checkpoints" / "gpu" / "samples").glob("G_ema_*.png"))


def test_resume_on_cuda(cuda_run):
    run_dir = cuda_run / "checkpoints" / "gpu"
    train(cuda_run, "--run=gpu", "--trainer.accelerator=gpu", "--ckpt_path=last", "--model.loop.max_g_iters=6",
          "--model.loop.val_every=100", "--model.loop.ckpt_every=100")
    after = load(run_dir / "last.ckpt")
    assert after["biggan_smyrf"]["g_iters"] == 6
    assert next(iter(after["optimizer_states"][0]["state"].values()))["step"].item() == 6


def test_sample_py_on_cuda(cuda_run, tmp_path):
    ckpt = cuda_run / "checkpoints" / "gpu" / "last.ckpt"
    for attention in ("dense", "smyrf"):
        proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt", str(ckpt), "--out", str(tmp_path / attention),
                               "--n", "8", "--device", "cuda", "--attention", attention, "--precision", "bf16"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / attention / "grid.png").exists()


def test_export_from_cuda_loads_anywhere_and_samples_the_same(cuda_run, tmp_path):
    from biggan_smyrf import export_generator, generate, load_generator

    G = load_generator(cuda_run / "checkpoints" / "gpu" / "last.ckpt", device=CUDA)
    path = export_generator(G, tmp_path / "G.pt")
    state = torch.load(path, weights_only=True)["state_dict"]  # no map_location: CPU tensors in the file
    assert {value.device.type for value in state.values()} == {"cpu"}
    assert torch.equal(generate(load_generator(path, device=CUDA), 4, seed=0), generate(G, 4, seed=0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_spectral_norm_is_float32_under_autocast(dtype):
    """Under CUDA autocast the normalised weight, u and v are the float32 ones bit for bit (autocast
    would otherwise run spectral norm's mv in half precision)."""
    from biggan_smyrf.models.layers import sn_conv

    torch.manual_seed(0)
    plain = sn_conv(64, 96, 3, eps=1e-6).to(CUDA)
    mixed = copy.deepcopy(plain)
    x = torch.randn(2, 64, 8, 8, device=CUDA)
    for _ in range(3):
        plain(x)
        with torch.autocast("cuda", dtype=dtype):
            assert mixed(x).dtype == dtype
    for name, value in plain.state_dict().items():
        assert torch.equal(mixed.state_dict()[name], value), name
    assert torch.equal(mixed.weight, plain.weight)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_spectral_norm_together_matches_pytorchs(dtype):
    """G's and D's path (models/spectral.py: all layers' power iterations in multi-tensor kernels,
    weights written in autocast's dtype) against PyTorch's spectral_norm on the GPU, over two
    training forwards and their backward. 1e-3: TF32 convolutions round both alike, not bit for bit."""
    from test_spectral import assert_same_state_and_gradients, inputs, twins

    reference, ours = (net.to(CUDA) for net in twins())
    for net in (reference, ours):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            real, fake = (net(*(t.to(CUDA) for t in inputs(seed))) for seed in (1, 2))
        (torch.relu(1 - real.float()).mean() + torch.relu(1 + fake.float()).mean()).backward()
    assert_same_state_and_gradients(reference, ours, tolerance=1e-3)


def test_a_training_iteration_never_waits_for_the_gpu():
    """torch.cuda.set_sync_debug_mode("error") raises on any operation that makes the host wait for
    the GPU (a .item(), a blocking copy, a data-dependent shape): one D step and one G step with
    SMYRF through the Triton route, bf16 autocast and fused Adam must contain none."""
    from biggan_smyrf.models import Discriminator, DiscriminatorConfig
    from biggan_smyrf.training.losses import d_hinge_loss, g_hinge_loss

    G = Generator(GeneratorConfig(resolution=32, ch=8, attention_resolutions=[32], attention=SMYRF.with_(q_cluster_size=256)))
    D = Discriminator(DiscriminatorConfig(resolution=32, ch=8, attention_resolutions=[]))
    G, D = G.to(CUDA), D.to(CUDA)
    opt_g, opt_d = (torch.optim.Adam(net.parameters(), betas=(0.0, 0.999), fused=True) for net in (G, D))
    real = torch.rand(4, 3, 32, 32, device=CUDA) * 2 - 1

    def iteration():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad():
                fake = G(torch.randn(4, 120, device=CUDA))
            d_hinge_loss(*D(torch.cat([real, fake.float()])).float().split(4)).backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            g_hinge_loss(D(G(torch.randn(4, 120, device=CUDA))).float()).backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)

    iteration()  # allocations, Triton compilation, cuDNN's choices
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        iteration()
    finally:
        torch.cuda.set_sync_debug_mode("default")

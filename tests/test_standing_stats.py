"""Standing statistics: batch norms re-estimated from G's own samples, nothing else touched."""
import pytest
import torch
from torch import nn

from biggan_smyrf import accumulate_standing_stats
from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.inference import export_generator
from biggan_smyrf.inference.cli import main as sample_main
from biggan_smyrf.inference.sampling import latents, labels
from biggan_smyrf.models import Generator, GeneratorConfig


def small_generator() -> Generator:
    torch.manual_seed(0)
    config = GeneratorConfig(resolution=32, ch=4, n_classes=3, shared_dim=6, dim_z=16, attention_resolutions=[16],
                             attention=AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64))
    return Generator(config).eval()


def batch_norms(G):
    return [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]


def test_statistics_are_the_average_of_the_batches_and_nothing_else_changes():
    G = small_generator()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    seen = {norm: [] for norm in batch_norms(G)}
    hooks = [norm.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach().clone())) for norm in seen]
    accumulate_standing_stats(G, n_batches=3, batch_size=8, seed=5, truncation=0.5)
    for hook in hooks:
        hook.remove()
    for norm, inputs in seen.items():
        assert len(inputs) == 3 and norm.momentum == 0.1 and not norm.training
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
        variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in inputs]).mean(0)  # unbiased, as BN
        torch.testing.assert_close(norm.running_mean, means)
        torch.testing.assert_close(norm.running_var, variances)
    changed = {k for k, v in G.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert not G.training


def test_eval_mode_then_behaves_like_batch_statistics_at_that_truncation():
    """What they are for: with them, G in eval mode draws (nearly) what batch statistics would."""
    G = small_generator()
    z, y = latents(64, 16, seed=9, truncation=0.4), labels(64, 3, seed=9)

    def gap() -> float:
        with torch.no_grad():
            frozen = G(z, y)
            for norm in batch_norms(G):
                norm.train()
            try:
                batch = G(z, y)
            finally:
                for norm in batch_norms(G):
                    norm.eval()
        return (frozen - batch).abs().mean().item()

    untouched = gap()
    accumulate_standing_stats(G, n_batches=8, batch_size=32, seed=1, truncation=0.4)
    assert gap() < untouched / 5


def test_same_seed_same_statistics_and_truncation_matters():
    runs = [accumulate_standing_stats(small_generator(), 2, 8, seed=3, truncation=t) for t in (0.3, 0.3, None)]
    means = [torch.cat([n.running_mean for n in batch_norms(G)]) for G in runs]
    assert torch.equal(means[0], means[1]) and not torch.allclose(means[0], means[2])


def test_sample_py_standing_stats(tmp_path, capsys):
    ckpt = export_generator(small_generator(), tmp_path / "g.pt")
    sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--n", "4", "--batch-size", "4",
                 "--truncation", "0.5", "--standing-stats", "2"])
    assert "standing statistics from 2 x 4 samples" in capsys.readouterr().out
    assert (tmp_path / "s" / "grid.png").is_file()
    sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "u"), "--n", "4", "--truncation", "0.5"])
    assert "tip: truncated z no longer fits" in capsys.readouterr().out  # the option is suggested where it helps
    with pytest.raises(SystemExit, match="--batch-size >= 2"):
        sample_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "t"), "--batch-size", "1", "--standing-stats", "2"])

"""Importing BigGAN-PyTorch generators: the same images as BigGAN-PyTorch draws, SMYRF on them, bad files.

The reference files in tests/data/biggan_pytorch were written by BigGAN-PyTorch's own code
(`make_fixtures.py` there): two small generators, hierarchical z at 32 px and flat z at 64 px,
with what each draws in eval mode.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from biggan_smyrf.attention import AttentionChange
from biggan_smyrf.inference import load_generator
from biggan_smyrf.inference import biggan_pytorch
from biggan_smyrf.inference.biggan_pytorch import ForeignWeightsError, import_biggan_pytorch
from biggan_smyrf.inference.cli import main as sample_main

DATA = Path(__file__).resolve().parent / "data" / "biggan_pytorch"
CASES = {  # name: what the import must read from the shapes
    "g32_hier": dict(resolution=32, ch=4, n_classes=3, shared_dim=6, dim_z=16, hier=True, attention_resolutions=[16]),
    "g64_flat": dict(resolution=64, ch=2, n_classes=2, shared_dim=4, dim_z=8, hier=False, attention_resolutions=[32]),
}


def reference(name: str) -> dict:
    return torch.load(DATA / f"{name}_expected.pt", weights_only=True)


def draw(generator, ref: dict) -> torch.Tensor:
    with torch.no_grad():
        return generator(ref["z"], ref["y"])


@pytest.mark.parametrize("name", list(CASES))
def test_imported_generator_draws_what_biggan_pytorch_draws(name):
    generator = import_biggan_pytorch(DATA / f"{name}.pth")
    config = generator.config
    assert {key: getattr(config, key) for key in CASES[name]} == CASES[name]
    assert config.attention.kind == "dense" and not generator.training
    ref = reference(name)
    assert (draw(generator, ref) - ref["images"]).abs().max() < 1e-5


def test_the_power_iteration_from_u0_is_what_makes_them_equal(monkeypatch):
    """Control: keeping the weights but not BigGAN-PyTorch's u0 gives other images."""
    def weight_only(module, weight, u0, eps, name):
        module.parametrizations.weight.original.copy_(weight)

    monkeypatch.setattr(biggan_pytorch, "load_spectral", weight_only)
    ref = reference("g32_hier")
    assert (draw(import_biggan_pytorch(DATA / "g32_hier.pth"), ref) - ref["images"]).abs().max() > 1e-2


@pytest.mark.parametrize("prefix, stats", [("module.", ("stored_mean", "stored_var")),  # saved from DataParallel
                                           ("", ("bn.stored_mean", "bn.stored_var")),  # --mybn
                                           ("", ("bn.running_mean", "bn.running_var"))])  # --cross_replica
def test_other_ways_biggan_pytorch_saves_the_same_generator(tmp_path, prefix, stats):
    def rename(key: str) -> str:
        for old, new in zip(("stored_mean", "stored_var"), stats):
            key = key.replace(old, new)
        return prefix + key

    state = {rename(k): v for k, v in state_of("g32_hier").items()}
    state[prefix + "blocks.0.0.bn1.bn.accumulation_counter"] = torch.zeros(1)  # --mybn keeps one per layer
    torch.save(state, tmp_path / "G.pth")
    ref = reference("g32_hier")
    assert (draw(import_biggan_pytorch(tmp_path / "G.pth"), ref) - ref["images"]).abs().max() < 1e-5


def test_import_then_sample_dense_and_smyrf(tmp_path, capsys):
    out = tmp_path / "g32.pt"
    biggan_pytorch.main([str(DATA / "g32_hier.pth"), str(out)])
    assert "sample.py --ckpt" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        biggan_pytorch.main([str(DATA / "g32_hier.pth"), str(out)])

    ref = reference("g32_hier")
    assert (draw(load_generator(out), ref) - ref["images"]).abs().max() < 1e-5
    # SMYRF on the same weights (16x16 attention: 256 queries, 64 keys): one cluster is dense attention ...
    one_cluster = load_generator(out, attention=AttentionChange(kind="smyrf", n_hashes=1, q_cluster_size=256))
    assert (draw(one_cluster, ref) - ref["images"]).abs().max() < 1e-5
    # ... and the swap's starting point, 2 rounds of clusters of a quarter of the queries, changes the
    # images, but not by much.
    smyrf = load_generator(out, attention="smyrf")
    assert smyrf.blocks[1][1].config.describe().startswith("smyrf(2x64q/autok")
    assert 0 < (draw(smyrf, ref) - ref["images"]).abs().max() < 0.5

    sample_main(["--ckpt", str(out), "--out", str(tmp_path / "grid"), "--n", "6", "--class", "2", "--attention", "paper"])
    assert (tmp_path / "grid" / "grid.png").is_file()


def test_inception_score_alone_needs_no_real_images(tmp_path, monkeypatch, inception_weights):
    """The SMYRF paper's test of a pre-trained BigGAN: IS with dense vs SMYRF attention."""
    monkeypatch.chdir(tmp_path)
    weights = inception_weights
    ckpt = tmp_path / "g32.pt"
    biggan_pytorch.main([str(DATA / "g32_hier.pth"), str(ckpt)])
    sample_main(["--ckpt", str(ckpt), "--out", "eval", "--metrics", "--metric-names", "isc", "--n", "4",
                 "--batch-size", "4", "--weights-path", str(weights)])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report) >= {"is_mean", "is_std"} and "fid" not in report and report["n_real"] is None
    assert report["standing_stats"] == 0  # the report says how the samples were drawn
    assert not (tmp_path / "data").exists()  # no real-statistics cache was built


def state_of(name: str) -> dict:
    return torch.load(DATA / f"{name}.pth", weights_only=True)


def broken(tmp_path, change) -> Path:
    state = state_of("g32_hier")
    change(state)
    path = tmp_path / "G_ema.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"embed.weight": torch.zeros(3, 16)}), "discriminator"),
    (lambda s: s.update({"blocks.0.0.conv3.weight": torch.zeros(1)}), "BigGAN-deep"),
    (lambda s: s.pop("shared.weight"), "--G_shared"),
    (lambda s: s.update({"linear.u1": torch.zeros(1, 256)}), "num_G_SVs"),
    (lambda s: s.pop("blocks.1.1.gamma"), "lacks blocks.1.1.gamma"),
    (lambda s: s.pop("blocks.2.0.bn2.stored_var"), "lacks blocks.2.0.bn2.stored_var"),
    (lambda s: s.update({"blocks.1.0.extra": torch.zeros(1)}), "no place in the network"),
    (lambda s: s.update({"blocks.0.0.conv2.weight": torch.zeros(16, 16, 1, 1)}), r"is \(16, 16, 1, 1\) in the file"),
    (lambda s: s.update({"blocks.0.0.conv1.u0": torch.ones(1, 8)}), "u0 has 8 entries for 16 output features"),
    (lambda s: s.pop("blocks.2.0.conv1.weight"), "2 generator blocks match no BigGAN resolution"),
    (lambda s: s.update({"blocks.3.0.conv1.weight": torch.zeros(1)}), "lacks blocks.3.0.conv2.weight"),  # read as G64
])
def test_foreign_or_damaged_weights_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(ForeignWeightsError, match=message):
        import_biggan_pytorch(broken(tmp_path, change))


def test_training_state_and_non_checkpoints_are_refused(tmp_path):
    counters = tmp_path / "state_dict.pth"
    torch.save({"itr": 1000, "epoch": 3, "best_IS": 0.0}, counters)
    with pytest.raises(ForeignWeightsError, match="training state"):
        import_biggan_pytorch(counters)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(SystemExit, match="not a PyTorch checkpoint .*; pass BigGAN-PyTorch's G_ema.pth"):
        biggan_pytorch.main([str(text), str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


def test_imported_discriminator_scores_what_biggan_pytorch_scores():
    D = biggan_pytorch.import_biggan_pytorch_discriminator(DATA / "d64.pth")
    assert (D.config.resolution, D.config.ch, D.config.n_classes, D.config.attention_resolutions) == (64, 2, 2, [])
    ref = torch.load(DATA / "d64_expected.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(D(ref["x"], ref["y"]), ref["scores"].flatten(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ForeignWeightsError, match="not a discriminator"):
        biggan_pytorch.import_biggan_pytorch_discriminator(DATA / "g64_flat.pth")


def test_pretrained_is_benchmark_runs_the_papers_test(tmp_path, monkeypatch, inception_weights):
    """benchmarks/pretrained_is.py on the reference generator (random Inception weights: the code
    path, not a meaningful score): dense, then SMYRF at half of dense's query-key scores."""
    from benchmarks import common, pretrained_is

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    ckpt = tmp_path / "g32.pt"
    biggan_pytorch.main([str(DATA / "g32_hier.pth"), str(ckpt)])
    weights = inception_weights
    monkeypatch.setattr(sys, "argv", ["pretrained_is.py", "--ckpt", str(ckpt), "--weights-path", str(weights),
                                      "--n", "8", "--batch-size", "4", "--device", "cpu", "--settings", "paper 2x4"])
    pretrained_is.main()
    rows = json.loads((tmp_path / "pretrained_is-cpu.json").read_text())["rows"]
    assert [r["attention"] for r in rows] == ["dense", "paper 2x4"]
    assert [r["score_share"] for r in rows] == [1.0, 0.5] and rows[0]["is_share"] == 1.0
    assert all(r["is_mean"] > 0 for r in rows) and rows[1]["describe"].startswith("smyrf(2x64q")
    with pytest.raises(Exception, match="e.g. 'paper 2x4'"):
        pretrained_is.parse_setting("paper 2")

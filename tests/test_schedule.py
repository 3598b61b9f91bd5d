"""Attention settings as one table: partial changes, the per-phase schedule, the run's SMYRF settings."""
import dataclasses

import pytest
import torch

from biggan_smyrf.attention import PHASES, AttentionChange, AttentionConfig, AttentionSchedule, attend, smyrf_attention
from biggan_smyrf.attention.config import FIELD_HELP

from test_errors import fails_cleanly, train_args

SMYRF_2x256 = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=256)


def test_one_table_of_fields_and_help():
    names = [f.name for f in dataclasses.fields(AttentionConfig)]
    assert [f.name for f in dataclasses.fields(AttentionChange)] == names
    assert list(FIELD_HELP) == names and all(FIELD_HELP.values())
    assert all(f"{name}:" in AttentionConfig.__doc__ for name in names)  # LightningCLI's --help reads it


def test_smyrf_attention_defaults_are_the_librarys():
    """README: `smyrf_attention(q, k, v, n_hashes=4, q_cluster_size=...)` and `attend` with the
    same AttentionConfig compute the same thing (one set of defaults)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 256, 4, generator=g), torch.randn(1, 64, 4, generator=g), torch.randn(1, 64, 8, generator=g)
    a = smyrf_attention(q, k, v, n_hashes=2, q_cluster_size=64, scale=1.0, seed=0)
    b = attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64), scale=1.0,
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    paper = smyrf_attention(q, k, v, AttentionConfig.paper(), n_hashes=2, q_cluster_size=64, scale=1.0, seed=0)
    assert not torch.equal(a, paper)


def test_a_change_touches_only_what_it_sets():
    change = AttentionChange(n_hashes=8)
    assert change.changes() == {"n_hashes": 8}
    assert change.apply(SMYRF_2x256) == SMYRF_2x256.with_(n_hashes=8)
    assert AttentionChange(kind="dense").apply(SMYRF_2x256).q_cluster_size == 256  # SMYRF settings survive
    assert AttentionChange.paper().apply(SMYRF_2x256) == AttentionConfig.paper(n_hashes=2, q_cluster_size=256)
    with pytest.raises(ValueError, match="n_hashes must be >= 1"):
        AttentionChange(n_hashes=0)
    with pytest.raises(ValueError, match="hashing must be one of"):
        AttentionChange(hashing="lsh")


def test_key_cluster_size_follows_the_query_cluster_size():
    built = AttentionConfig(kind="smyrf", q_cluster_size=2048, k_cluster_size=512)
    assert built.with_(q_cluster_size=1024).resolve(16384, 4096).k_cluster_size == 256
    assert built.with_(q_cluster_size=1024, k_cluster_size=256).k_cluster_size == 256


def test_a_field_under_a_null_schedule_keeps_the_built_kind():
    """Regression: `--model.attention.train.q_cluster_size 3000` on the demo trained dense."""
    schedule = AttentionSchedule(train=AttentionChange(q_cluster_size=3000), eval=AttentionChange(kind="dense"))
    train = schedule.config("train", SMYRF_2x256)
    assert train.kind == "smyrf" and train.q_cluster_size == 3000
    with pytest.raises(ValueError, match="Sizes that fit .*256/64"):
        train.validate_for(1024, 256)


def test_phases_and_the_runs_smyrf_settings():
    demo = AttentionSchedule(eval=AttentionChange(kind="dense"))
    assert [demo.config(p, SMYRF_2x256).kind for p in PHASES] == ["smyrf", "dense", "smyrf"]
    assert demo.smyrf_settings(SMYRF_2x256) == SMYRF_2x256
    # Built dense, trained SMYRF 1024: evaluating with SMYRF (no sizes) uses the trained sizes.
    trained = AttentionSchedule(train=AttentionChange(kind="smyrf", q_cluster_size=1024), eval=AttentionChange(kind="smyrf"))
    dense = AttentionConfig(kind="dense")
    assert trained.config("train", dense).q_cluster_size == 1024
    assert trained.config("eval", dense) == trained.config("train", dense)
    assert AttentionSchedule().config("eval", dense) == dense  # null: as built
    # A full AttentionConfig entry (Python API) replaces the built settings.
    assert AttentionSchedule(eval=SMYRF_2x256).config("eval", dense) == SMYRF_2x256
    with pytest.raises(ValueError, match="phase must be one of"):
        demo.config("test", dense)


def test_a_scheduled_phase_applies_each_entry_from_its_g_iteration():
    """`train: [{from: 0, kind: dense}, {from: 10}, {from: 20, q_cluster_size: 128}]` on a SMYRF-built
    block: dense for iterations 0-9, as built from 10, smaller clusters from 20."""
    schedule = AttentionSchedule(train=[{"from": 0, "kind": "dense"}, {"from": 10}, {"from": 20, "q_cluster_size": 128}],
                                 eval={"kind": "dense"})
    assert schedule.switch_points() == [0, 10, 20]
    trained = [schedule.at(g).config("train", SMYRF_2x256) for g in (0, 9, 10, 19, 20, 10**6)]
    assert [c.kind for c in trained] == ["dense", "dense", "smyrf", "smyrf", "smyrf", "smyrf"]
    assert trained[2] == SMYRF_2x256 and trained[4] == SMYRF_2x256.with_(q_cluster_size=128)
    assert trained[0].q_cluster_size == 256  # a dense warm-up keeps the SMYRF sizes for the switch
    assert all(schedule.at(g).config("eval", SMYRF_2x256).kind == "dense" for g in (0, 15, 25))
    assert schedule.describe_stage("train", 15) == "model.attention.train entry 1 (from: 10): as built"
    # A schedule that starts later keeps the built attention until its first entry.
    late = AttentionSchedule(train=[{"from": 5, "kind": "dense"}])
    assert [late.at(g).config("train", SMYRF_2x256).kind for g in (0, 4, 5)] == ["smyrf", "smyrf", "dense"]


def test_a_dense_warm_up_of_a_dense_built_block_evaluates_smyrf_with_the_sizes_it_will_train():
    schedule = AttentionSchedule(train=[{"from": 0}, {"from": 100, "kind": "smyrf", "q_cluster_size": 128}],
                                 eval={"kind": "smyrf"})
    dense = AttentionConfig(kind="dense")
    assert schedule.at(0).config("train", dense).kind == "dense"
    assert schedule.at(0).config("eval", dense).q_cluster_size == 128
    assert schedule.at(200).config("eval", dense) == schedule.at(200).config("train", dense)


def test_a_one_entry_list_is_the_single_entry():
    single = AttentionSchedule(train={"q_cluster_size": 128}, eval={"kind": "dense"})
    listed = AttentionSchedule(train=[{"from": 0, "q_cluster_size": 128}], eval=[{"from": 0, "kind": "dense"}])
    for phase in ("train", "eval"):
        assert listed.at(50).config(phase, SMYRF_2x256) == single.config(phase, SMYRF_2x256)


@pytest.mark.parametrize("entries, message", [
    ([{"from": 10, "kind": "dense"}, {"from": 5}], "must increase, got \\[10, 5\\]"),
    ([{"kind": "dense"}], "entry 0: every entry needs `from"),
    ([{"from": 0}, {"from": 3, "n_hashes": 0}], "entry 1 \\(from: 3\\): n_hashes must be >= 1"),
    ([{"from": 0, "cluster": 8}], "entry 0 \\(from: 0\\): .*unexpected keyword argument 'cluster'"),
    ([], "an empty list"),
])
def test_bad_schedule_entries_are_refused_naming_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        AttentionSchedule(train=entries)


def record_attention(module) -> list:
    """(stage, network, G iterations done, attention config) of every attention forward."""
    seen = []
    for name, block in module.named_modules():
        if block.__class__.__name__ == "SelfAttention":
            block.register_forward_hook(lambda m, i, o, net=name.split(".")[0]: seen.append(
                (module.trainer.state.stage.value, net, module.g_iters, m.config)))
    return seen


def test_training_switches_attention_at_each_entrys_first_g_iteration(tmp_path):
    from test_training import fit, tiny_module
    from biggan_smyrf.training import LoopConfig

    schedule = AttentionSchedule(train=[{"from": 0, "kind": "dense"}, {"from": 1}, {"from": 2, "q_cluster_size": 128}],
                                 eval=[{"from": 0, "kind": "dense"}], diagnostics=False)
    module = tiny_module(attention=schedule, loop=LoopConfig(max_g_iters=3, log_every=1, sample_every=100,
                                                            ckpt_every=100, val_every=3, n_samples=4))
    seen = record_attention(module)
    fit(module, tmp_path)
    trained = {(g, c.kind, c.q_cluster_size) for stage, net, g, c in seen if stage == "train" and net == "G"}
    assert trained == {(0, "dense", 256), (1, "smyrf", 256), (2, "smyrf", 128)}
    assert {c.kind for stage, net, g, c in seen if stage == "validate"} == {"dense"}  # eval schedule
    assert module.trainer.callback_metrics["train/attention_stage"] == 2  # the stage of iteration 2


def test_a_schedule_entry_that_does_not_fit_stops_before_training_naming_it():
    from test_training import tiny_module

    schedule = AttentionSchedule(train=[{"from": 0}, {"from": 5000, "q_cluster_size": 300}])
    with pytest.raises(ValueError, match=r"model.attention.train entry 1 \(from: 5000\): q_cluster_size=300: .*1024 queries"):
        tiny_module(attention=schedule)
    with pytest.raises(ValueError, match="model.attention.eval: every entry must evaluate with the same kinds"):
        tiny_module(attention=AttentionSchedule(eval=[{"from": 0, "kind": "dense"}, {"from": 10, "kind": "smyrf"}]))


def test_the_warm_up_config_fits_a_g128():
    """configs/celebahq128_warmup.yaml built (narrower): G trains dense until G iteration 10000,
    then the paper's SMYRF, and evaluates SMYRF throughout."""
    import yaml
    from conftest import ROOT
    from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig
    from biggan_smyrf.training import BigGAN
    from biggan_smyrf.typed import coerce

    model = yaml.safe_load((ROOT / "configs" / "celebahq128_warmup.yaml").read_text())["model"]
    assert model["attention"]["train"] == [{"from": 0, "kind": "dense"}, {"from": 10000}]
    module = BigGAN(generator=coerce(GeneratorConfig, {**model["generator"], "ch": 8}),
                    discriminator=DiscriminatorConfig(resolution=128, ch=8, attention_resolutions=[]),
                    attention=coerce(AttentionSchedule, model["attention"]))
    module.g_iters = 9999
    assert {c.kind for c in module.phase_configs["train"].values()} == {"dense"}
    assert {c.kind for c in module.phase_configs["eval"].values()} == {"smyrf"}
    module.g_iters = 10000
    assert set(module.phase_configs["train"].values()) == {AttentionConfig.paper(q_cluster_size=2048, k_cluster_size=512)}


def test_train_py_refuses_a_schedule_entry_that_does_not_fit_in_one_line(run_dir, capsys):
    from biggan_smyrf import cli as train_cli

    fails_cleanly(train_cli.main, train_args("--model.attention.train=[{from: 0, kind: dense}, {from: 100, q_cluster_size: 300}]"),
                  capsys, "error: model.attention.train entry 1 (from: 100): q_cluster_size=300", "Sizes that fit")

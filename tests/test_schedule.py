"""Attention settings as one table: partial changes, the per-phase schedule, the run's SMYRF settings."""
import dataclasses

import pytest
import torch

from biggan_smyrf.attention import PHASES, AttentionChange, AttentionConfig, AttentionSchedule, attend, smyrf_attention
from biggan_smyrf.attention.config import FIELD_HELP

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
    """Issue #15: `--model.attention.train.q_cluster_size 3000` on the demo trained dense."""
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

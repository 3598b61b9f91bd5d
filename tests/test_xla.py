"""On an XLA device (PJRT's CPU device standing in for a TPU): the training iteration and sampling
run without host fallbacks, without recompiling after warm-up (across attention swaps too) and
without device->host transfers outside logging steps. Run by `make xla-check` in .venv-xla;
skipped where torch_xla is not installed (the main venv, CI)."""
from __future__ import annotations


import pytest

pytest.importorskip("torch_xla")
from benchmarks.checks import xla_check  # noqa: E402

pytestmark = pytest.mark.xla
# A tiny G32/D32 (ch 8) with attention at 16x16: 256 queries, 64 keys, SMYRF 2 x 64.
SMYRF = xla_check.SMYRF.with_(q_cluster_size=64)
PHASES = [xla_check.Phase("smyrf", SMYRF, 4), xla_check.Phase("dense", xla_check.DENSE, 8),
          xla_check.Phase("smyrf again", SMYRF, 10)]
LOG_EVERY = 3


@pytest.fixture(scope="module")
def trained():
    xla_check.expose_pjrt_cpu_to_lightning()
    module = xla_check.build_module(ch=8, resolution=32, attention_resolution=16, attention=SMYRF,
                                    max_g_iters=PHASES[-1].until, log_every=LOG_EVERY, n_samples=4)
    log = xla_check.StepLog(PHASES, LOG_EVERY)
    trainer = xla_check.fit(module, xla_check.demo_data(32, 4), "tpu", [log])
    assert type(trainer.strategy).__name__ == "SingleDeviceXLAStrategy"
    assert module.g_iters == PHASES[-1].until and {s["phase"] for s in log.steps} == {p.name for p in PHASES}
    return module, log.steps


def phase_steps(steps, name):
    return [s for s in steps if s["phase"] == name]


def test_training_steps_have_no_host_fallbacks(trained):
    _, steps = trained
    assert [s["aten"] for s in steps if s["aten"]] == []


def test_no_recompilation_after_two_g_iterations_of_each_kind_nor_after_swapping_back(trained):
    _, steps = trained
    first = 0
    for phase in PHASES[:-1]:  # the last phase repeats the first: none of its steps may compile
        late = [s for s in phase_steps(steps, phase.name) if s["g_iters_before"] >= first + xla_check.WARMUP_G_ITERS]
        assert late and [s["compilations"] for s in late] == [0] * len(late), phase.name
        first = phase.until
    assert sum(s["compilations"] for s in phase_steps(steps, "smyrf again")) == 0


def test_device_to_host_transfers_only_at_logging_steps(trained):
    _, steps = trained
    assert [s["step"] for s in steps if s["device_to_host"] and not s["log_step"]] == []
    assert any(s["device_to_host"] for s in steps if s["log_step"])  # the counter does count


def test_sampling_with_either_attention_has_no_fallbacks_transfers_or_new_graphs_the_second_time(trained):
    module = xla_check.back_on_xla(trained[0])
    renders = [xla_check.render(module, attention) for attention in (xla_check.DENSE, SMYRF, xla_check.DENSE)]
    assert all(r["device"] == "xla" and not r["aten"] and r["device_to_host"] == 0 for r in renders)
    assert renders[-1]["compilations"] == 0
    assert all(r["images"].isfinite().all() and r["images"].shape == (4, 3, 32, 32) for r in renders)

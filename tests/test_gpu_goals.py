"""benchmarks/checks/gpu_goals.py: the GPU goals' verdicts from GPU result files (synthetic ones here)."""
from __future__ import annotations

import json

import pytest


from benchmarks.checks import gpu_goals


def write(folder, stem, rows, **meta):
    (folder / f"{stem}-cuda.json").write_text(json.dumps({"meta": {"device": "NVIDIA H100 80GB HBM3", **meta}, "rows": rows}))


def step(variant, dtype, ms, batch=32):
    return {"variant": variant, "dtype": dtype, "batch": batch, "speed": "plain", "ms": ms}


def attention(n, dtype, method, ms, mb):
    return {"n": n, "batch": 32, "dtype": dtype, "method": method, "fwd_bwd_ms": ms, "peak_mb": mb}


@pytest.fixture
def results(tmp_path):
    write(tmp_path, "gpu_check", [{"step": "cuda tests", "rc": 0, "seconds": 200.0}, {"step": "train.py", "rc": 0, "seconds": 90.5}],
          passed=True, steps=2)
    write(tmp_path, "train_step", [
        step("dense@64", "fp32", 200.0), step("dense@64", "bf16", 130.0), step("dense@64", "fp32", 999.0, batch=16),
        step("dense@128 flash", "fp32", 270.0), step("dense@128 flash", "bf16", 150.0),
        step(gpu_goals.SMYRF_128, "fp32", 260.0), {"variant": gpu_goals.SMYRF_128, "dtype": "bf16", "batch": 32, "error": "CUDA out of memory"},
    ])
    write(tmp_path, "train_step_nhwc", [step("dense@64", "bf16", 110.0)])
    write(tmp_path, "attention", [
        attention(16384, "bfloat16", "dense SDPA", 4.5, 300), attention(16384, "bfloat16", "ours 4x2048", 5.4, 420),
        attention(65536, "bfloat16", "dense SDPA", 63.0, 1300), attention(65536, "bfloat16", "ours 4x4096", 25.2, 2600),
        attention(16384, "float32", "dense SDPA", 55.0, 600), attention(16384, "float32", "ours 4x2048", 33.0, 800),
    ])
    return tmp_path


def verdicts(folder):
    return {g.goal: (g.verdict, g.value) for g in gpu_goals.training_goals(folder) + gpu_goals.attention_goals(folder)}


def test_goals_are_read_off_the_result_rows(results):
    got = verdicts(results)
    assert got["make gpu-check: steps failed or not run (CUDA tests included)"] == ("met", 0.0)
    assert got["make gpu-check wall time"] == ("met", 290.5)  # a record without wall_s: the steps' sum
    write(results, "gpu_check", [{"step": "triton warm-up", "rc": 0, "seconds": 30.0}, {"step": "cuda tests", "rc": 0, "seconds": 200.0}],
          passed=True, steps=2, wall_s=205.0)
    assert verdicts(results)["make gpu-check wall time"] == ("met", 205.0)
    # bf16 through channels_last (110 ms) against the fp32 step at batch 32 (200 ms, not batch 16's).
    assert got["dense@64 step, batch 32: bf16-mixed (best of plain, channels_last) / fp32"] == ("met", 0.55)
    assert got["validation: 10,000 samples x 2 attention kinds"] == ("not measured", None)
    bf16_16k = "ours 4x2048 / dense SDPA at 16,384 tokens, batch 32, bfloat16"
    assert got[f"attention fwd+bwd time: {bf16_16k}"] == ("missed", pytest.approx(1.2))
    assert got[f"attention peak memory: {bf16_16k}"] == ("met", pytest.approx(1.4))
    bf16_65k = "ours 4x4096 / dense SDPA at 65,536 tokens, batch 32, bfloat16"
    assert got[f"attention fwd+bwd time: {bf16_65k}"] == ("met", pytest.approx(0.4))  # the limit itself
    assert got[f"attention peak memory: {bf16_65k}"] == ("missed", pytest.approx(2.0))
    assert got["attention fwd+bwd time: ours 4x4096 / dense SDPA at 65,536 tokens, batch 32, float32"][0] == "not measured"
    smyrf_step = f"step at 128 px, batch 32, {{}}: {gpu_goals.SMYRF_128} / dense@128 flash"
    assert got[smyrf_step.format("fp32")] == ("met", pytest.approx(260 / 270))
    assert got[smyrf_step.format("bf16")] == ("not measured", None)  # its row failed


def test_readme_numbers_and_files(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert gpu_goals.main(["--results", str(results), "--out", str(out)]) == 1  # goals missed or unmeasured
    numbers = {(r["variant"], r["dtype"]): r for r in json.loads((out / "gpu_goals.json").read_text())["readme"]}
    bf16 = numbers[("dense@64", "bf16")]
    assert bf16["layout"] == "NHWC" and bf16["step_ms"] == 110.0
    assert bf16["g_iters_per_s"] == pytest.approx(1000 / 110)
    assert bf16["real_images_per_s"] == pytest.approx(2 * 32 * 1000 / 110)  # two real batches per G iteration
    assert bf16["paper_run_hours"] == pytest.approx(200_000 * 0.110 / 3600)
    assert (gpu_goals.SMYRF_128, "bf16") not in numbers
    table = (out / "gpu_goals.md").read_text()
    assert table.startswith("Device: NVIDIA H100 80GB HBM3.") and "| attention |" in table and "6.1 h" in table


def test_a_gpu_check_cut_off_part_way_has_not_passed(results):
    write(results, "gpu_check", [{"step": "cuda tests", "rc": 0, "seconds": 200.0}, {"step": "attention", "rc": "timeout",
                                                                                       "seconds": 120.0}], steps=6)
    assert verdicts(results)["make gpu-check: steps failed or not run (CUDA tests included)"] == ("missed", 5.0)


def test_no_results_means_nothing_is_met(tmp_path):
    assert gpu_goals.main(["--results", str(tmp_path), "--out", str(tmp_path)]) == 1
    goals = json.loads((tmp_path / "gpu_goals.json").read_text())["goals"]
    assert goals and {g["verdict"] for g in goals} == {"not measured"}


def test_memory_goals_show_the_cpu_models_estimate_beside_the_measurement(results):
    (results / "memory_model-cpu.json").write_text(json.dumps({"meta": {}, "rows": [
        {"n": 16384, "dtype": "bfloat16", "vs_dense": 0.771}, {"n": 65536, "dtype": "float32", "vs_dense": None}]}))
    sources = {g.goal: g.source for g in gpu_goals.attention_goals(results)}
    assert sources["attention peak memory: ours 4x2048 / dense SDPA at 16,384 tokens, batch 32, bfloat16"] == \
        "attention (CPU model: 0.77x)"
    assert sources["attention fwd+bwd time: ours 4x2048 / dense SDPA at 16,384 tokens, batch 32, bfloat16"] == "attention"

"""`make gpu-check` / `make gpu-bench`, checked without a GPU: every benchmark command parses against
its script's arguments, and every step's planned rows are the documented ones (a missing row or a
typo would only show on the GPU)."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import pytest


from benchmarks import gpu_plan
from benchmarks.common import ROOT
from benchmarks.checks import gpu_check, gpu_goals


def all_steps(tmp_path: Path):
    return gpu_check.check_steps(tmp_path, tmp_path / "inception.pth", 60) + gpu_check.bench_steps()


def test_every_benchmark_command_parses(tmp_path):
    scripts = 0
    for name, command, limit in all_steps(tmp_path):
        assert limit > 0, name
        if command[1] != "-m" or not command[2].startswith("benchmarks."):
            continue
        parser = importlib.import_module(command[2]).build_parser()
        parser.allow_abbrev = False  # the commands spell every option out
        try:
            parser.parse_args(command[3:])
        except SystemExit:
            pytest.fail(f"gpu step {name!r}: {command[2]} rejects {command[3:]}")
        scripts += 1
    assert scripts >= 8


def plans(tmp_path: Path):
    """gpu-check's and gpu-bench's plans, {step name: StepPlan}: every step's rows as its script
    plans them (`plan_cases`, what its main runs), with nothing launched."""
    check = gpu_plan.plan_suite(gpu_check.check_steps(tmp_path, tmp_path / "inception.pth", 60))
    bench = gpu_plan.plan_suite(gpu_check.bench_steps())
    return {step.name: step for step in check}, {step.name: step for step in bench}


def cells(step, *keys):
    return {tuple(row[k] for k in keys) for row in step.rows}


def test_gpu_check_plans_every_documented_row(tmp_path):
    check, _ = plans(tmp_path)
    variants = {"dense@64", "dense@128 flash", "smyrf@128 paper 4x2048", "smyrf@128 ours 4x2048",
                "smyrf@128 ours 4x2048 chunked"}
    # fp32, bf16-mixed and 16-mixed rows of every variant at batch 32, nothing else.
    assert cells(check["step table"], "variant", "batch", "dtype") == {
        (v, 32, d) for v in variants for d in ("fp32", "bf16", "fp16")}
    assert {(v, 32, "bf16", "nhwc") for v in variants - {"smyrf@128 ours 4x2048 chunked"}} == cells(
        check["step table channels_last"], "variant", "batch", "dtype", "speed")
    methods = {"dense SDPA", "smyrf 4x2048", "ours 4x2048", "ours 4x4096"}
    attention = check["attention table"]
    assert cells(attention, "n", "batch", "dtype", "method") == {
        (n, b, d, m) for n in (16384, 65536) for b in (8, 32) for d in ("bfloat16", "float32") for m in methods}
    assert not any("skipped" in row for row in attention.rows)


def test_gpu_bench_plans_every_documented_row(tmp_path):
    _, bench = plans(tmp_path)
    assert cells(bench["step table compile"], "variant", "batch", "dtype", "speed") == {
        ("dense@64", 32, "bf16", "compile"), ("dense@64", 32, "bf16", "nhwc+compile")}
    assert cells(bench["step table no cudnn autotune"], "batch", "dtype") == {(32, "fp32"), (32, "bf16")}
    assert cells(bench["profile dense@64"], "dtype", "speed") == {
        (d, s) for d in ("fp32", "bf16") for s in ("plain", "nhwc", "sn per layer")}
    # bf16 and fp32 x (4 forward + 4 two-kernel backward + 4 one-pass backward candidates) at 16k tokens
    tuned = bench["tune permuted-round blocks"].rows
    assert len(tuned) == 24 + 8 and {row["pass"] for row in tuned} == {"forward", "backward", "one pass"}
    for name, step in bench.items():  # every benchmark step has rows; validation is a single run
        assert step.rows or name.startswith("validation"), name


def test_every_goal_has_its_planned_row(tmp_path):
    """Each of gpu_goals.py's goals reads a row that the plan makes."""
    check, _ = plans(tmp_path)
    steps = check["step table"].rows
    for variant in ("dense@64", "dense@128 flash", gpu_goals.SMYRF_128):
        for dtype in ("fp32", "bf16"):
            assert any(r["variant"] == variant and r["dtype"] == dtype and r["batch"] == gpu_goals.BATCH for r in steps)
    nhwc = check["step table channels_last"].rows
    assert any(r["variant"] == "dense@64" and r["batch"] == gpu_goals.BATCH for r in nhwc)
    for (dtype, n), (method, _) in gpu_goals.ATTENTION_TIME_GOALS.items():
        for m in (method, "dense SDPA"):
            assert any((r["n"], r["batch"], r["dtype"], r["method"]) == (n, gpu_goals.BATCH, dtype, m)
                       for r in check["attention table"].rows)


def test_the_warm_up_compiles_every_specialisation_and_each_step_fits_its_limit(tmp_path):
    check, bench = plans(tmp_path)
    warm_up = check["triton warm-up"]
    assert len(warm_up.triton) >= 30 and warm_up.parallel_compiles < len(warm_up.triton)
    for name, step in check.items():
        if name != "triton warm-up" and name not in gpu_plan.CUDA_TEST_STEPS:  # the tests' own shapes compile there
            assert step.triton == [], name  # compiled already, in the warm-up's processes
        assert step.seconds <= step.limit_s, (name, step.seconds)
    # A fp16 autocast step needs kernels of its own; the step table's fp16 rows are its calls.
    assert any(key[1] == "float16" for key in warm_up.triton)
    # The whole of gpu-check within 6 minutes on an H100, as estimated (steps side by side counted once).
    assert gpu_plan.wall_seconds(list(check.values())) <= 360


def test_plan_prints_the_estimate_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--plan", "--with-bench"])
    gpu_check.main()
    out = capsys.readouterr().out
    assert f"gpu_check: {6 + gpu_plan.CUDA_TEST_SHARDS} steps" in out and "gpu_bench: 6 steps" in out
    assert out.count("estimate on an H100:") == 2 and "variant=dense@64, batch=32, dtype=fp16" in out


def test_a_step_table_that_selects_nothing_says_so(monkeypatch, capsys):
    from benchmarks import models

    monkeypatch.setattr(sys, "argv", ["models.py", "--table", "step", "--device", "cuda", "--batches", "64",
                                      "--variants", "dense@64", "--dtypes", "bf16"])
    assert models.plan_cases(models.build_parser().parse_args(sys.argv[1:]))  # every CUDA batch has its bf16 rows
    monkeypatch.setattr(sys, "argv", ["models.py", "--table", "step", "--variants", "none"])
    with pytest.raises(SystemExit):
        models.main()
    assert "error: no rows" in capsys.readouterr().err


def fake_run(monkeypatch, tmp_path: Path, check, bench, argv):
    """gpu_check.main with cheap stand-in steps and results in tmp_path (no GPU needed): -> (exit code, records)."""
    import json

    results = tmp_path / "results"
    results.mkdir()

    def write_results(name, device, rows, table, meta):
        stem = results / f"{name}-{device.type}"
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}))
        stem.with_suffix(".md").write_text(table)
        return stem

    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "write_random_inception_weights", lambda path: path)
    monkeypatch.setattr(gpu_check, "write_results", write_results)
    monkeypatch.setattr(gpu_check, "RESULTS", results)
    monkeypatch.setattr(gpu_check, "check_steps", lambda work, weights, g_iters: check)
    monkeypatch.setattr(gpu_check, "bench_steps", lambda: bench)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    records = {p.stem: json.loads(p.read_text()) for p in results.glob("*.json")}
    return exit_info.value.code, records


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_with_bench_runs_both_suites_and_records_each(monkeypatch, tmp_path):
    check = [("ok", py("pass"), 30), ("fails", py("raise SystemExit(3)"), 30)]
    bench = [("measured", py("pass"), 30)]
    code, records = fake_run(monkeypatch, tmp_path, check, bench, ["--with-bench"])
    assert code == 1  # one failed step fails the run, without hiding the steps after it
    assert [r["rc"] for r in records["gpu_check-cuda"]["rows"]] == [0, 3]
    assert [r["rc"] for r in records["gpu_bench-cuda"]["rows"]] == [0]
    assert not records["gpu_check-cuda"]["meta"]["passed"] and records["gpu_bench-cuda"]["meta"]["passed"]


def test_budget_cuts_a_step_short_and_skips_what_no_longer_fits(monkeypatch, tmp_path):
    check = [("sleeps", py("import time; time.sleep(30)"), 100), ("after", py("pass"), 100)]
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.5)
    code, records = fake_run(monkeypatch, tmp_path, check, [], ["--budget", "2"])
    first, second = records["gpu_check-cuda"]["rows"]
    assert first["rc"] == "timeout" and first["seconds"] < 10  # given the 2 s left, not its own 100 s
    assert second == {"step": "after", "rc": "no time", "seconds": 0.0, "limit_s": 0}
    assert code == 1 and records["gpu_check-cuda"]["meta"]["budget_s"] == 2


def test_archive_brings_back_every_cuda_result_after_each_step(monkeypatch, tmp_path):
    import tarfile

    # The second step sees the archive written after the first: it holds the first step's record.
    peek = f"import tarfile; assert 'gpu_check-cuda.json' in tarfile.open({str(tmp_path / 'out.tgz')!r}).getnames()"
    check = [("first", py("pass"), 30), ("second", py(peek), 30)]
    code, records = fake_run(monkeypatch, tmp_path, check, [], ["--archive", str(tmp_path / "out.tgz")])
    assert code == 0 and records["gpu_check-cuda"]["rows"][1]["rc"] == 0
    (tmp_path / "results" / "attention-cpu.json").write_text("{}")  # a CPU result never travels
    gpu_check.archive_results(tmp_path / "again.tgz")
    assert sorted(tarfile.open(tmp_path / "again.tgz").getnames()) == ["gpu_check-cuda.json", "gpu_check-cuda.md"]


def test_the_warm_up_and_test_shards_run_side_by_side_and_are_recorded_in_order(monkeypatch, tmp_path):
    sleep = py("import time; time.sleep(2)")
    names = ["triton warm-up", *gpu_plan.CUDA_TEST_STEPS]
    check = [*((name, sleep, 30) for name in names), ("after", py("pass"), 30)]
    start = time.perf_counter()
    code, records = fake_run(monkeypatch, tmp_path, check, [], [])
    assert time.perf_counter() - start < 3.8  # side by side, not 10 s one after the other
    assert code == 0 and [r["step"] for r in records["gpu_check-cuda"]["rows"]] == [*names, "after"]
    assert records["gpu_check-cuda"]["meta"]["wall_s"] < 3.8  # the record's time is the wall's, not the steps' sum


@pytest.mark.slow
def test_shards_split_the_selected_tests_between_them(pytester):
    def collected(*args):  # pytest's own command line, run in this process (a new one would import torch again)
        result = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                                              "--collect-only", "-q", "-m", "not cuda",
                                              str(ROOT / "tests" / "test_gpu_goals.py"), *args)
        return [line for line in result.outlines if "::" in line]

    everything, shares = collected(), [collected("--shard", f"{i}/3") for i in (1, 2, 3)]
    assert len(everything) >= 3 and sorted(sum(shares, [])) == sorted(everything)
    assert all(shares) and shares[0] == everything[0::3]

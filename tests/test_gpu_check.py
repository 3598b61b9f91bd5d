"""`make gpu-check` / `make gpu-bench` are run where device time is scarce: every benchmark command
they launch must parse against its script's arguments here first (a typo would cost a GPU run)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest


from benchmarks.checks import gpu_check


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


def test_the_steps_fit_one_device_call_each(tmp_path):
    """Each target runs as one device call of at most 600 s (the device tool's limit)."""
    assert sum(limit for _, _, limit in gpu_check.check_steps(tmp_path, tmp_path / "w.pth", 60)) <= 600
    assert sum(limit for _, _, limit in gpu_check.bench_steps()) <= 600


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

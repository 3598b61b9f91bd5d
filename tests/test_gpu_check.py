"""`make gpu-check` / `make gpu-bench` are run where device time is scarce: every benchmark command
they launch must parse against its script's arguments here first (a typo would cost a GPU run)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def all_steps(tmp_path: Path):
    return gpu_check.check_steps(tmp_path, tmp_path / "inception.pth", 60) + gpu_check.bench_steps()


def test_every_benchmark_command_parses(tmp_path):
    scripts = 0
    for name, command, limit in all_steps(tmp_path):
        assert limit > 0, name
        script = Path(command[1])
        if script.parent != ROOT / "benchmarks":
            continue
        parser = importlib.import_module(script.stem).build_parser()
        parser.allow_abbrev = False  # the commands spell every option out
        try:
            parser.parse_args(command[2:])
        except SystemExit:
            pytest.fail(f"gpu step {name!r}: {script.name} rejects {command[2:]}")
        scripts += 1
    assert scripts >= 8


def test_the_steps_fit_one_device_call_each(tmp_path):
    """Each target runs as one device call of at most 600 s (the device tool's limit)."""
    assert sum(limit for _, _, limit in gpu_check.check_steps(tmp_path, tmp_path / "w.pth", 60)) <= 600
    assert sum(limit for _, _, limit in gpu_check.bench_steps()) <= 600

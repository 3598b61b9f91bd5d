"""The host cost of one SMYRF call on the CUDA route, counted at the dispatcher on meta tensors
(benchmarks/host_cost.py): few enough kernel launches that a GPU is not left waiting for the host,
and nothing that stops the call from being captured and replayed (no host->device copy, no sync)."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import host_cost  # noqa: E402


@pytest.mark.parametrize("recipe", host_cost.RECIPES)
@pytest.mark.parametrize("n", list(host_cost.Q_CLUSTER))
def test_launches_per_forward_backward_within_budget(n, recipe):
    counts = host_cost.count(n, host_cost.Q_CLUSTER[n], recipe)
    assert counts["launches"] <= host_cost.GOALS["launches"], (counts["launches"], counts["by_op"], counts["by_kernel"])


@pytest.mark.parametrize("recipe", host_cost.RECIPES)
def test_no_host_to_device_copy_or_sync(recipe):
    counts = host_cost.count(16384, 2048, recipe)
    assert counts["h2d_copies"] == 0 and counts["host_syncs"] == 0, counts

"""The host cost of one SMYRF call on the CUDA route, counted at the dispatcher on meta tensors
(benchmarks/host_cost.py): few enough kernel launches that a GPU is not left waiting for the host,
and nothing that stops the call from being captured and replayed (no host->device copy, no sync,
the same ops whatever the batch and token counts)."""
from __future__ import annotations


import pytest


from benchmarks import host_cost

# Launches per forward + backward at batch 32, as counted when the route was last changed: every
# recipe within the goal (host_cost.GOALS, 48), and each budget what it takes today so that it can
# only go down. The default recipe: hub selection 4 (randperm, two kernels, topk), k-d hashing
# 2 + 2 per level + 1, the route's layout, summary rows, 4 forward rounds, hub round, combination;
# backward: row dot, weighted hub gradient, one fill, hub round 3, all rounds 1, summary fold 2, cut 1.
BUDGET = {("paper", 16384): 16, ("paper", 65536): 16, ("default", 16384): 39, ("default", 65536): 41}


def test_budgets_within_the_goal():
    assert max(BUDGET.values()) <= host_cost.GOALS["launches"]


@pytest.mark.parametrize("recipe, n", list(BUDGET))
def test_launches_per_forward_backward_within_budget(recipe, n):
    counts = host_cost.count(n, host_cost.Q_CLUSTER[n], recipe)
    assert counts["launches"] <= BUDGET[recipe, n], (counts["launches"], counts["by_op"], counts["by_kernel"])
    assert counts["h2d_copies"] == 0 and counts["host_syncs"] == 0, counts


@pytest.mark.parametrize("recipe", host_cost.RECIPES)
def test_the_same_ops_at_any_size(recipe):
    """With the number of clusters fixed, batch and tokens change no op (no loop over chunks), so
    a small call counts the large one's launches and one captured call replays for any input."""
    large = host_cost.count(65536, 4096, recipe)
    small = host_cost.count(1024, 64, recipe, batch=2)
    assert (small["by_op"], small["by_kernel"]) == (large["by_op"], large["by_kernel"])

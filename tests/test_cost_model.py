"""benchmarks/cost_model.py: its counts against the clusters a real call makes, and its predicted
ratios against the formula they come from."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch


from benchmarks import cost_model

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402


@pytest.mark.parametrize("config", [
    AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64),  # hub keys and summaries on
    AttentionConfig.paper(n_hashes=3, q_cluster_size=32),
])
def test_scores_match_the_clusters_a_call_makes(config):
    """Every query's scores, enumerated from the clusters and hub keys smyrf_attention returns,
    plus the hub estimate's sampled queries against every key."""
    batch, n, m = 2, 256, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(batch, n, 12, generator=g), torch.randn(batch, m, 12, generator=g), torch.randn(batch, m, 48, generator=g)
    _, what = smyrf_attention(q, k, v, config, scale=1.0, seed=0, return_intermediates=True)
    summaries = config.resolve(n, m).n_summaries
    q_clusters, k_clusters = what.query_clusters(), what.key_clusters()
    enumerated = 0
    for b in range(batch):
        for r in range(config.n_hashes):
            for c in q_clusters[b, r].unique():
                enumerated += int((q_clusters[b, r] == c).sum()) * (int((k_clusters[b, r] == c).sum()) + summaries)
    hub = 0 if what.hub_keys is None else what.hub_keys.shape[1]
    enumerated += batch * n * hub + (batch * min(config.hub_sample, n) * m if hub else 0)
    counts = cost_model.smyrf_counts(config, n, batch, "bfloat16")
    assert counts.scores == enumerated
    assert counts.exps_forward == enumerated
    attended = enumerated - (batch * min(config.hub_sample, n) * m if hub else 0)
    # Today's backward recomputes P in both kernels; a one-pass backward once.
    assert counts.exps_backward == 2 * attended
    assert cost_model.smyrf_counts(config, n, batch, "bfloat16", backward_passes=1).exps_backward == attended


def test_dense_counts_one_exponential_per_score_each_way():
    dense = cost_model.dense_counts(1024, 3, "bfloat16")
    assert dense.scores == 3 * 1024 * 256 and dense.exps == 2 * dense.scores
    assert dense.flops == 2 * dense.scores * 7 * 48  # 2 dots forward, 5 backward, at the padded width


def test_predicted_ratios_come_from_the_counts():
    config = cost_model.METHODS["ours 4x2048"]
    smyrf = cost_model.smyrf_counts(config, 16384, 32, "bfloat16", launches=273)
    dense = cost_model.dense_counts(16384, 32, "bfloat16")
    # Only exponentials cost: the ratio is theirs.
    exp_only = cost_model.Device(exp_per_s=1e12, tensor_flops=(("bfloat16", 1e30),), hbm_bytes_per_s=1e30, launch_s=0.0)
    assert cost_model.predicted_ratio(smyrf, dense, "bfloat16", None, exp_only) == pytest.approx(smyrf.exps / dense.exps)
    # A measured dense time twice its bound: SMYRF's device time is scaled alike, the ratio is kept.
    dense_bound = dense.exps / 1e12
    assert cost_model.predicted_ratio(smyrf, dense, "bfloat16", 2 * dense_bound, exp_only) == pytest.approx(
        smyrf.exps / dense.exps)
    # Launch-bound: the host's time over dense's.
    launch_bound = replace(exp_only, launch_s=1.0)
    assert cost_model.predicted_ratio(smyrf, dense, "bfloat16", 10.0, launch_bound) == pytest.approx(273 / 10.0)
    # Tensor-core-bound.
    mma_only = cost_model.Device(exp_per_s=1e30, tensor_flops=(("bfloat16", 1e12),), hbm_bytes_per_s=1e30, launch_s=0.0)
    assert cost_model.predicted_ratio(smyrf, dense, "bfloat16", None, mma_only) == pytest.approx(smyrf.flops / dense.flops)
    # The default at 16,384 tokens: 4 rounds x (512 + 32 summaries) + 128 hub keys + 64 of the hub estimate.
    assert smyrf.scores == 32 * 16384 * (4 * 544 + 128 + 64)


def test_results_put_the_measured_ratio_and_the_goal_beside_the_prediction(tmp_path, monkeypatch):
    rows = [{"n": 16384, "batch": 32, "dtype": "bfloat16", "method": m, "fwd_bwd_ms": ms, "peak_mb": 1.0}
            for m, ms in (("dense SDPA", 4.0), ("ours 4x2048", 3.0))]
    (tmp_path / "attention-cuda.json").write_text(json.dumps({"meta": {}, "rows": rows}))
    monkeypatch.setattr(cost_model, "write_results", lambda name, device, rows, table, meta: tmp_path / name)
    captured = {}
    monkeypatch.setattr(cost_model, "markdown_table", lambda rows, columns: captured.setdefault("rows", rows) and "")
    cost_model.main(["--sizes", "16384", "--dtypes", "bfloat16", "--results", str(tmp_path),
                     "--launches", "ours 4x4096@16384=100", "--recorded-launches"])
    by_method = {r["method"]: r for r in captured["rows"]}
    ours = by_method["ours 4x2048"]
    assert ours["measured"] == pytest.approx(0.75) and ours["goal"] == 1.0
    assert (ours["launches"], ours["launches_from"]) == (cost_model.LAUNCHES[("ours 4x2048", 16384)], "recorded")
    assert by_method["ours 4x4096"]["launches"] == 100 and by_method["ours 4x4096"]["launches_from"] == "given"
    assert ours["predicted_one_pass_48"] < ours["predicted_48"] <= ours["predicted"]


def test_launches_are_counted_from_the_code_path():
    """On meta tensors: views and allocations launch nothing, each aten kernel and each Triton
    launch (through the attention kernels' one door) counts once, the backward's kernels included."""
    import triton
    from benchmarks.host_cost import count_call
    from biggan_smyrf.attention.triton.launches import launch

    @triton.jit
    def touch(x_ptr):
        pass

    def naive(q, k, v):
        launch(touch, (1,))(q)
        return (q @ k.transpose(1, 2)).softmax(-1) @ v

    counted = count_call(naive, 64, 2, dtype=torch.float32)
    # 2 bmm forward, 4 backward (dP, dV, dQ, dK); the softmax and its backward; and the copy autograd's
    # engine makes of k's gradient, which dK's bmm gives transposed, to k's own layout.
    assert counted["by_op"] == {"bmm": 6, "_softmax": 1, "_softmax_backward_data": 1, "copy_": 1}, counted["by_op"]
    assert counted["triton_launches"] == 1
    config = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=64, kernel="triton")
    smyrf = count_call(lambda q, k, v: smyrf_attention(q, k, v, config), 256, 2)
    assert smyrf["triton_launches"] > 0 and smyrf["aten_launches"] > 0  # the CUDA route ran, on no GPU
